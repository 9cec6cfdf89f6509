"""One segmentation for SeCam, Captum, ``lime`` and ``shap``: adapters and comparison.

The optional libraries are imported only when an adapter runs; a missing one raises an
ImportError naming the extra to install (``pip install "captum-secam[lime]"`` / ``[shap]``).
"""

from captum_secam.interop.captum_methods import (
    CAPTUM_METHODS,
    attribution_to_segment_scores,
    captum_attribute,
)
from captum_secam.interop.compare import (
    DEFAULT_METHODS,
    METHODS,
    ComparisonResult,
    compare_methods,
    spearman,
    top_k_overlap,
)
from captum_secam.interop.guided import SeCamLime, fit_prior_ridge, guided_masks
from captum_secam.interop.lime import (
    lime_classifier_fn,
    lime_explanation_to_scores,
    lime_image_from_input,
    lime_segment_scores,
    lime_segmentation_fn,
)
from captum_secam.interop.shap import (
    SegmentMasker,
    attribution_to_shap_explanation,
    fill_image,
    scores_to_shap_explanation,
    segment_presence_fn,
    shap_explainer_explain,
    shap_explanation_to_attribution,
    shap_explanation_to_scores,
    shap_kernel_explain,
)

__all__ = [
    "CAPTUM_METHODS",
    "DEFAULT_METHODS",
    "METHODS",
    "ComparisonResult",
    "SeCamLime",
    "SegmentMasker",
    "attribution_to_segment_scores",
    "attribution_to_shap_explanation",
    "captum_attribute",
    "compare_methods",
    "fill_image",
    "fit_prior_ridge",
    "guided_masks",
    "lime_classifier_fn",
    "lime_explanation_to_scores",
    "lime_image_from_input",
    "lime_segment_scores",
    "lime_segmentation_fn",
    "scores_to_shap_explanation",
    "segment_presence_fn",
    "shap_explainer_explain",
    "shap_explanation_to_attribution",
    "shap_explanation_to_scores",
    "shap_kernel_explain",
    "spearman",
    "top_k_overlap",
]
