"""Localisation: does the explanation point at the object?

The pointing game (:func:`pointing_game`, Zhang et al., 2016), its energy-based variant
(:func:`energy_pointing_game`, Score-CAM, Wang et al., 2020) and :func:`iou` of a selected
region, against ground truth given as boolean masks or as boxes (:func:`box_to_mask`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["box_to_mask", "energy_pointing_game", "iou", "pointing_game"]


def _as_bool_masks(mask: Any, n: int | None, name: str) -> Tensor:
    """Return a bool N×H×W tensor from H×W, N×H×W or N×1×H×W (H×W and 1×… broadcast)."""
    if not isinstance(mask, Tensor):
        try:
            mask = torch.as_tensor(mask)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be a boolean tensor or array") from err
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{name} must be boolean (True inside the region), got {mask.dtype}; use "
            "mask.bool() or mask > 0.5"
        )
    if mask.dim() == 4:
        if mask.shape[1] != 1:
            raise ValueError(f"{name} must have one channel (N×1×H×W), got {tuple(mask.shape)}")
        mask = mask[:, 0]
    elif mask.dim() == 2:
        mask = mask[None]
    elif mask.dim() != 3:
        raise ValueError(f"{name} must be H×W, N×H×W or N×1×H×W, got shape {tuple(mask.shape)}")
    if n is not None and mask.shape[0] not in (1, n):
        raise ValueError(
            f"{name} has {mask.shape[0]} masks for {n} images; pass one per image or one for all"
        )
    if n is not None and mask.shape[0] != n:
        mask = mask.expand(n, -1, -1)
    return mask


def _attribution_maps(attributions: Any) -> Tensor:
    """N×H×W float maps from N×C×H×W (channel sum), N×1×H×W or N×H×W attributions."""
    if not isinstance(attributions, Tensor):
        raise TypeError(f"attributions must be a torch.Tensor, got {type(attributions).__name__}")
    if attributions.dim() == 4:
        maps = attributions.detach().sum(dim=1)
    elif attributions.dim() == 3:
        maps = attributions.detach()
    else:
        raise ValueError(
            f"attributions must be N×C×H×W, N×1×H×W or N×H×W maps, got shape "
            f"{tuple(attributions.shape)}; paint segment scores with scores_to_mask first"
        )
    if not maps.is_floating_point():
        maps = maps.float()
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("attributions contain NaN or Inf; clean them with torch.nan_to_num")
    return maps


def _check_same_grid(maps: Tensor, gt: Tensor, gt_name: str) -> None:
    if maps.shape[1:] != gt.shape[1:]:
        raise ValueError(
            f"{gt_name} is {gt.shape[1]}×{gt.shape[2]} but the attributions are "
            f"{maps.shape[1]}×{maps.shape[2]}; resize one to the other (nearest for masks)"
        )


def _check_not_empty(gt: Tensor) -> None:
    empty = (~gt.reshape(gt.shape[0], -1).any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"the ground truth of images {empty} is empty (a box outside the image or with "
            "x1 == x0?); such images cannot be scored, leave them out"
        )


def box_to_mask(boxes: Any, height: int, width: int) -> Tensor:
    """Rasterise boxes ``(x0, y0, x1, y1)`` to boolean masks.

    Coordinates are pixel indices with exclusive ends, like slicing: the box covers rows
    ``y0 .. y1−1`` and columns ``x0 .. x1−1`` (``mask[..., y0:y1, x0:x1]``). Boxes are clipped
    to the image.

    Args:
        boxes: One box (a 4-sequence or a tensor of 4) or an N×4 tensor.
        height: Image height H.
        width: Image width W.

    Returns:
        Boolean N×1×H×W tensor (N = 1 for a single box).

    Example:
        >>> box_to_mask((1, 0, 3, 2), 4, 4)[0, 0].int()
        tensor([[0, 1, 1, 0],
                [0, 1, 1, 0],
                [0, 0, 0, 0],
                [0, 0, 0, 0]], dtype=torch.int32)
    """
    tensor = torch.as_tensor(boxes)
    if tensor.is_floating_point():
        if not bool((tensor == tensor.round()).all()):
            raise ValueError(
                f"box coordinates must be whole pixels, got {tensor.tolist()}; round them "
                "(floor x0/y0, ceil x1/y1) before rasterising"
            )
        tensor = tensor.long()
    if tensor.dim() == 1:
        tensor = tensor[None]
    if tensor.dim() != 2 or tensor.shape[1] != 4:
        raise ValueError(f"boxes must be (x0, y0, x1, y1) or N×4, got shape {tuple(tensor.shape)}")
    if bool(((tensor[:, 2] < tensor[:, 0]) | (tensor[:, 3] < tensor[:, 1])).any()):
        raise ValueError(
            f"boxes must satisfy x0 <= x1 and y0 <= y1 (format x0, y0, x1, y1), got "
            f"{tensor.tolist()}"
        )
    rows = torch.arange(height, device=tensor.device)
    cols = torch.arange(width, device=tensor.device)
    inside_rows = (rows[None] >= tensor[:, 1:2]) & (rows[None] < tensor[:, 3:4])
    inside_cols = (cols[None] >= tensor[:, 0:1]) & (cols[None] < tensor[:, 2:3])
    return (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]


def _gt_masks(gt: Any, n: int, height: int, width: int, name: str) -> Tensor:
    """A ground truth given as boolean mask(s) or box(es), as a bool N×H×W tensor."""
    is_box = isinstance(gt, (tuple, list)) or (
        isinstance(gt, Tensor)
        and gt.dtype != torch.bool
        and gt.dim() in (1, 2)
        and gt.shape[-1] == 4
    )
    if is_box:
        masks = box_to_mask(gt, height, width)[:, 0]
        if masks.shape[0] not in (1, n):
            raise ValueError(f"got {masks.shape[0]} boxes for {n} images; pass one per image")
        return masks.expand(n, -1, -1)
    return _as_bool_masks(gt, n, name)


def pointing_game(
    attributions: Tensor,
    gt: Any,
    tolerance: float = 0,
    ties: Literal["all", "any"] = "all",
) -> Tensor:
    """Pointing game (Zhang et al., 2016): does the attribution's maximum hit the object?

    Args:
        attributions: N×C×H×W (summed over channels), N×1×H×W or N×H×W maps.
        gt: Ground truth: boolean mask (H×W, N×H×W or N×1×H×W) or box(es) ``(x0, y0, x1,
            y1)`` as in :func:`box_to_mask`.
        tolerance: A maximum within this Euclidean distance (pixels) of the ground truth still
            counts as a hit (Zhang et al. used 15 px).
        ties: Piecewise-constant maps (SeCam) have many maximal pixels. ``"all"`` (default,
            strict): a hit only when every maximal pixel is within tolerance; ``"any"``: one
            is enough.

    Returns:
        Boolean tensor of N hits; ``hits.float().mean()`` is the accuracy.

    Raises:
        ValueError: Ground truth that does not match the maps or is empty for some image,
            a negative tolerance, or an unknown ``ties`` rule.
    """
    maps = _attribution_maps(attributions)
    n, height, width = maps.shape
    masks = _gt_masks(gt, n, height, width, "gt").to(maps.device)
    _check_same_grid(maps, masks, "gt")
    _check_not_empty(masks)
    if ties not in ("all", "any"):
        raise ValueError(f"ties must be 'all' or 'any', got {ties!r}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    if tolerance > 0:
        masks = _dilate(masks, tolerance)
    flat = maps.reshape(n, -1)
    is_max = flat == flat.amax(dim=1, keepdim=True)
    inside = masks.reshape(n, -1)
    if ties == "all":
        return (~is_max | inside).all(dim=1)
    return (is_max & inside).any(dim=1)


def _dilate(masks: Tensor, radius: float) -> Tensor:
    """Pixels within Euclidean distance ``radius`` of a True pixel."""
    r = math.floor(radius)
    offsets = torch.arange(-r, r + 1, device=masks.device, dtype=torch.float32)
    disc = (offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius**2
    kernel = disc.to(torch.float32)[None, None]
    grown = nn.functional.conv2d(masks[:, None].float(), kernel, padding=r)
    return grown[:, 0] > 0.5


def energy_pointing_game(attributions: Tensor, gt: Any) -> Tensor:
    r"""Energy-based pointing game (Score-CAM): share of positive attribution inside the object.

    .. math::
        \text{Proportion} = \frac{\sum_{p \in \text{gt}} \max(a_p, 0)}{\sum_{p} \max(a_p, 0)}

    Args:
        attributions: N×C×H×W (summed over channels), N×1×H×W or N×H×W maps.
        gt: Boolean mask(s) or box(es) ``(x0, y0, x1, y1)`` as in :func:`pointing_game`.

    Returns:
        Tensor of N proportions in [0, 1]; NaN (with a warning) for a map with no positive
        value.
    """
    maps = _attribution_maps(attributions)
    n, height, width = maps.shape
    masks = _gt_masks(gt, n, height, width, "gt").to(maps.device)
    _check_same_grid(maps, masks, "gt")
    _check_not_empty(masks)
    energy = maps.clamp_min(0).reshape(n, -1)
    total = energy.sum(dim=1)
    inside = (energy * masks.reshape(n, -1)).sum(dim=1)
    if bool((total == 0).any()):
        warnings.warn(
            "some attribution maps have no positive value; their energy proportion is NaN",
            stacklevel=2,
        )
    return torch.where(
        total > 0,
        inside / total.clamp_min(torch.finfo(maps.dtype).tiny),
        torch.full_like(total, float("nan")),
    )


def iou(region_mask: Any, gt: Any) -> Tensor:
    r"""Intersection over union of a selected region and a ground-truth mask or box.

    .. math::
        \text{IoU} = \frac{|R \cap G|}{|R \cup G|}

    Args:
        region_mask: Boolean H×W, N×H×W or N×1×H×W, e.g. from :func:`~captum_secam.select_top_k`.
        gt: Boolean mask(s) of the same size, or box(es) ``(x0, y0, x1, y1)`` (see
            :func:`box_to_mask`).

    Returns:
        Tensor of N IoUs in [0, 1]; NaN (with a warning) when both are empty.
    """
    region = _as_bool_masks(region_mask, None, "region_mask")
    n, height, width = region.shape
    masks = _gt_masks(gt, n, height, width, "gt").to(region.device)
    if masks.shape[0] != n:
        region = region.expand(masks.shape[0], -1, -1)
    _check_same_grid(region, masks, "gt")
    inter = (region & masks).reshape(region.shape[0], -1).sum(dim=1).double()
    union = (region | masks).reshape(region.shape[0], -1).sum(dim=1).double()
    if bool((union == 0).any()):
        warnings.warn("region and ground truth are both empty; their IoU is NaN", stacklevel=2)
    ratio = torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, float("nan")))
    return ratio.to(torch.get_default_dtype())
