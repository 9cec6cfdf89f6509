"""captum-secam: region-level (SeCam) and counterfactual (CAE) explanations for Captum."""

from captum_secam._validation import TargetError
from captum_secam.regions import select_threshold, select_top_k
from captum_secam.secam import SeCam
from captum_secam.segmentation import (
    relabel_sequential,
    scores_to_mask,
    segment,
    segment_means,
    validate_feature_mask,
)
from captum_secam.transforms import TokensToGrid, vit_reshape_transform

__version__ = "0.1.0"

__all__ = [
    "SeCam",
    "TargetError",
    "TokensToGrid",
    "__version__",
    "relabel_sequential",
    "scores_to_mask",
    "segment",
    "segment_means",
    "select_threshold",
    "select_top_k",
    "validate_feature_mask",
    "vit_reshape_transform",
]
