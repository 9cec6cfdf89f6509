"""Class Association Embedding (CAE) counterfactual explanations (arXiv 2406.07961).

* :class:`ClassAssociationEmbedding` -- class/individual encoders, AdaIN decoder, discriminator;
  ``save`` / ``load`` with safetensors + JSON.
* :func:`train_cae` -- pairing / code-swap training for K classes.
* :class:`CaeCounterfactual` -- a Captum ``GradientAttribution`` returning
  ``|counterfactual - reconstruction|``.
* :func:`plot_class_code_manifold` -- 2-D view of the class codes with an explanation path.
* :mod:`captum_secam.cae.fashion_mnist` -- the shipped Fashion-MNIST classifier and CAE.
"""

from captum_secam.cae.attribution import CaeCounterfactual, CaeExplanation
from captum_secam.cae.manifold import plot_class_code_manifold, project_class_codes
from captum_secam.cae.model import CaeConfig, ClassAssociationEmbedding
from captum_secam.cae.training import DEFAULT_LOSS_WEIGHTS, TrainingHistory, train_cae

__all__ = [
    "DEFAULT_LOSS_WEIGHTS",
    "CaeConfig",
    "CaeCounterfactual",
    "CaeExplanation",
    "ClassAssociationEmbedding",
    "TrainingHistory",
    "plot_class_code_manifold",
    "project_class_codes",
    "train_cae",
]
