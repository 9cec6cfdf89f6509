"""Region selection from the SeCam paper: keep the top-k segments or those near the maximum.

Both functions take either per-segment scores (N×K) or an input-shaped, piecewise-constant
attribution (N×C×H×W) together with the feature mask, and return a boolean N×1×H×W mask that
``captum.attr.visualization`` (``method="masked_image"``) or a plain overlay can show.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from captum_secam.segmentation import segment_counts, segment_means, validate_feature_mask

__all__ = ["select_threshold", "select_top_k"]


def _scores_and_mask(attributions: Tensor, feature_mask: Tensor) -> tuple[Tensor, Tensor]:
    if attributions.dim() == 2:
        n = attributions.shape[0]
        mask = torch.as_tensor(feature_mask)
        if mask.dim() == 2:
            mask = mask[None, None]
        if mask.dim() != 4:
            raise ValueError(f"feature_mask must be N×1×H×W, got shape {tuple(mask.shape)}")
        template = torch.empty(n, 1, *mask.shape[2:], device=attributions.device)
        mask = validate_feature_mask(mask, template)
        if int(mask.max()) >= attributions.shape[1]:
            raise ValueError(
                f"feature_mask has {int(mask.max()) + 1} segments but scores have "
                f"{attributions.shape[1]} columns"
            )
        return attributions.detach(), mask
    if attributions.dim() == 4:
        mask = validate_feature_mask(feature_mask, attributions)
        return segment_means(attributions.detach(), mask), mask
    raise ValueError(
        "attributions must be per-segment scores N×K or an input-shaped N×C×H×W map, got "
        f"shape {tuple(attributions.shape)}"
    )


def _paint(selected: Tensor, mask: Tensor) -> Tensor:
    n = selected.shape[0]
    return torch.gather(selected, 1, mask.reshape(n, -1)).reshape(n, 1, *mask.shape[2:])


def select_top_k(attributions: Tensor, feature_mask: Tensor, k: int) -> Tensor:
    """Keep the ``k`` highest-scoring segments of each image (the paper's "k segments").

    Args:
        attributions: Per-segment scores N×K or a piecewise-constant N×C×H×W attribution.
        feature_mask: The segmentation the scores refer to (N×1×H×W, contiguous ids).
        k: Number of segments to keep, at least 1 and at most the smallest segment count.

    Returns:
        Boolean N×1×H×W mask, True on the selected segments.

    Example:
        >>> m = segment(x, n_segments=50)
        >>> region = select_top_k(secam.attribute(x, target=281, feature_mask=m), m, k=4)
    """
    scores, mask = _scores_and_mask(attributions, feature_mask)
    counts = segment_counts(mask)
    if k < 1 or k > int(counts.min()):
        raise ValueError(
            f"k={k} but the images have {counts.tolist()} segments; choose 1 <= k <= "
            f"{int(counts.min())} or segment into more superpixels"
        )
    # Padding columns (ids past an image's own count) must never be chosen.
    valid = torch.arange(scores.shape[1], device=scores.device)[None, :] < counts[:, None]
    ranked = scores.masked_fill(~valid, float("-inf"))
    top = ranked.topk(k, dim=1).indices
    selected = torch.zeros_like(valid).scatter_(1, top, True)
    return _paint(selected, mask)


def select_threshold(attributions: Tensor, feature_mask: Tensor, fraction: float = 0.8) -> Tensor:
    """Keep the segments scoring at least ``fraction`` of the image's maximum score.

    The paper's "80 % threshold" is ``fraction=0.8``. An image whose best segment is not
    positive has no supporting region: nothing is selected and a warning says so.

    Args:
        attributions: Per-segment scores N×K or a piecewise-constant N×C×H×W attribution.
        feature_mask: The segmentation the scores refer to (N×1×H×W, contiguous ids).
        fraction: In (0, 1].

    Returns:
        Boolean N×1×H×W mask.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction} (0.8 means 80 %)")
    scores, mask = _scores_and_mask(attributions, feature_mask)
    counts = segment_counts(mask)
    valid = torch.arange(scores.shape[1], device=scores.device)[None, :] < counts[:, None]
    best = scores.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True)
    if bool((best <= 0).any()):
        warnings.warn(
            "some images have no positively scored segment; their selection is empty",
            stacklevel=2,
        )
    selected = valid & (scores >= fraction * best) & (best > 0)
    return _paint(selected, mask)
