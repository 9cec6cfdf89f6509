"""Faithfulness, localisation and sanity metrics for image attributions (torch-native, batched).

Faithfulness (does removing what the explanation ranks first hurt the model?):

* :func:`deletion_curve` / :func:`insertion_curve` and their areas :func:`deletion_auc` /
  :func:`insertion_auc` (Petsiuk et al., RISE, 2018), and :func:`aopc` (Samek et al., 2017).
  They work on pixels or, with a ``feature_mask``, on whole segments.

Localisation (does the explanation point at the object?):

* :func:`pointing_game` (Zhang et al., 2016), :func:`energy_pointing_game` (Score-CAM, Wang
  et al., 2020), :func:`iou` with :func:`box_to_mask`.

Sanity (does the explanation depend on the model at all?):

* :func:`parameter_randomisation`, the cascading model-parameter randomisation test of Adebayo
  et al. (2018), run on a deep copy of the model.

The code lives in one module per question: :mod:`~captum_secam.metrics.faithfulness`,
:mod:`~captum_secam.metrics.localisation`, :mod:`~captum_secam.metrics.randomisation` and
:mod:`~captum_secam.metrics.agreement` (:func:`rank_correlation`); import everything from
``captum_secam.metrics``.

Every function is deterministic: orderings break ties by pixel or segment index and the
randomisation test draws from its own seeded generator.

Example:
    >>> secam = SeCam(model, model._bn1)
    >>> mask = segment(x, n_segments=50)
    >>> attr = secam.attribute(x, target=3, feature_mask=mask)
    >>> deletion_auc(model, x, attr, target=3, feature_mask=mask)   # lower is better
    >>> insertion_auc(model, x, attr, target=3, feature_mask=mask)  # higher is better
"""

# ``Fill`` and ``Similarity`` (the argument types) stay importable from here but are not in
# __all__, as before the split into modules; ``import X as X`` marks them as re-exports.
from captum_secam.metrics.agreement import Similarity as Similarity
from captum_secam.metrics.agreement import rank_correlation
from captum_secam.metrics.faithfulness import (
    FILLS,
    PerturbationCurve,
    aopc,
    area_under_curve,
    deletion_auc,
    deletion_curve,
    insertion_auc,
    insertion_curve,
)
from captum_secam.metrics.faithfulness import Fill as Fill
from captum_secam.metrics.localisation import box_to_mask, energy_pointing_game, iou, pointing_game
from captum_secam.metrics.randomisation import parameter_randomisation

__all__ = [
    "FILLS",
    "PerturbationCurve",
    "aopc",
    "area_under_curve",
    "box_to_mask",
    "deletion_auc",
    "deletion_curve",
    "energy_pointing_game",
    "insertion_auc",
    "insertion_curve",
    "iou",
    "parameter_randomisation",
    "pointing_game",
    "rank_correlation",
]
