"""Class Association Embedding (CAE) counterfactual explanations (arXiv 2406.07961).

* :class:`ClassAssociationEmbedding` -- class/individual encoders, AdaIN decoder, discriminator;
  ``save`` / ``load`` with safetensors + JSON.
* :func:`train_cae` -- pairing / code-swap training for K classes; :class:`TrainingMonitor`
  logs it, validates it and can stop it early.
* :mod:`captum_secam.cae.data` -- image conversion, augmentation, the class-pairing sampler,
  ImageFolder; :mod:`captum_secam.cae.distributed` -- ``torchrun`` data-parallel training;
  :class:`CaePreset` / :func:`get_preset` -- the ``small`` and ``paper`` recipes.
* :func:`evaluate_cae` -- the disentanglement report (swap success, identity kept, cycle,
  counterfactual clarity, localisation).
* :class:`CaeCounterfactual` -- a Captum ``GradientAttribution`` returning
  ``|counterfactual - reconstruction|``.
* :mod:`captum_secam.cae.figures` -- swap grids and counterfactual figures;
  :func:`plot_class_code_manifold` -- 2-D view of the class codes with an explanation path.
* :mod:`captum_secam.cae.tasks` -- the binary tasks of the shipped models;
  :mod:`captum_secam.cae.fashion_mnist` -- the shipped classifiers and CAEs.
"""

from captum_secam.cae.attribution import CaeCounterfactual, CaeExplanation
from captum_secam.cae.evaluation import CaeReport, evaluate_cae
from captum_secam.cae.figures import plot_counterfactual, plot_counterfactual_grid, plot_swap_grid
from captum_secam.cae.manifold import plot_class_code_manifold, project_class_codes
from captum_secam.cae.model import CaeConfig, ClassAssociationEmbedding
from captum_secam.cae.monitor import TrainingMonitor, disentanglement_score
from captum_secam.cae.presets import CaePreset, get_preset
from captum_secam.cae.training import DEFAULT_LOSS_WEIGHTS, TrainingHistory, train_cae

__all__ = [
    "DEFAULT_LOSS_WEIGHTS",
    "CaeConfig",
    "CaeCounterfactual",
    "CaeExplanation",
    "CaePreset",
    "CaeReport",
    "ClassAssociationEmbedding",
    "TrainingHistory",
    "TrainingMonitor",
    "disentanglement_score",
    "evaluate_cae",
    "get_preset",
    "plot_class_code_manifold",
    "plot_counterfactual",
    "plot_counterfactual_grid",
    "plot_swap_grid",
    "project_class_codes",
    "train_cae",
]
