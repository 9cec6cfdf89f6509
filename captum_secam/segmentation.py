"""Superpixels shared by every explainer: one segmentation, Captum-ready.

Every function returns or accepts a *feature mask* in Captum's layout: a ``torch.long`` tensor
shaped N×1×H×W whose ids are contiguous ``0..K_i−1`` in each image ``i``. That is what Captum's
``Lime``/``KernelShap``/``FeatureAblation`` expect (gaps become dead features, SPEC §4) and what
:class:`captum_secam.SeCam` averages over.

Example:
    >>> x = torch.rand(2, 3, 64, 64)
    >>> mask = segment(x, "slic", n_segments=20)      # long, 2×1×64×64
    >>> scores = segment_means(x, mask)                # 2×K per-segment means
    >>> piecewise = scores_to_mask(scores, mask, n_channels=3)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "METHODS",
    "relabel_sequential",
    "scores_to_mask",
    "segment",
    "segment_counts",
    "segment_means",
    "validate_feature_mask",
]

METHODS = ("slic", "quickshift", "felzenszwalb", "watershed", "grid")
# Methods that take a target number of segments; the others size segments by scale.
_COUNTED_METHODS = ("slic", "watershed", "grid")
_DEFAULT_N_SEGMENTS = 50


# --------------------------------------------------------------------------------------------
# Image conversion
# --------------------------------------------------------------------------------------------


def _to_hwc_batch(images: Any) -> list[np.ndarray]:
    """Convert images to a list of float H×W×C arrays in [0, 1] (C = 1 or 3).

    Tensors must be N×C×H×W (model inputs, possibly normalised): each image is min–max
    rescaled, since segmenters assume [0, 1]. Numpy arrays are photos: H×W, H×W×C or
    N×H×W×C; uint8 is divided by 255, floats are rescaled like tensors when outside [0, 1].
    """
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(
                f"image tensors must be N×C×H×W, got shape {tuple(images.shape)}; "
                "add a batch dimension with x.unsqueeze(0)"
            )
        if images.shape[1] not in (1, 3) and images.shape[3] in (1, 3):
            raise ValueError(
                f"tensor of shape {tuple(images.shape)} looks channels-last; "
                "use x.permute(0, 3, 1, 2) to make it N×C×H×W"
            )
        if images.shape[1] not in (1, 3):
            raise ValueError(
                f"segmentation needs 1 (grayscale) or 3 (RGB) channels, got {images.shape[1]}; "
                "pass the photo explicitly with photo=..."
            )
        array = images.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()
        return [_rescale(img) for img in array]
    if isinstance(images, np.ndarray):
        if images.ndim == 2:
            batch = images[None, :, :, None]
        elif images.ndim == 3:
            if images.shape[0] in (1, 3) and images.shape[2] not in (1, 3, 4):
                raise ValueError(
                    f"numpy photo of shape {images.shape} looks channels-first (C×H×W); "
                    "numpy photos must be H×W×C: use np.moveaxis(img, 0, -1)"
                )
            batch = images[None]
        elif images.ndim == 4:
            batch = images
        else:
            raise ValueError(
                f"numpy photos must be H×W, H×W×C or N×H×W×C, got shape {images.shape}"
            )
        if batch.shape[-1] == 4:  # drop alpha
            batch = batch[..., :3]
        if batch.shape[-1] not in (1, 3):
            raise ValueError(
                f"photos must have 1 or 3 channels in the last axis, got shape {images.shape}"
            )
        if batch.dtype == np.uint8:
            return [img.astype(np.float64) / 255.0 for img in batch]
        if not np.issubdtype(batch.dtype, np.number):
            raise TypeError(f"photos must be numeric arrays, got dtype {batch.dtype}")
        return [_rescale(img.astype(np.float64)) for img in batch]
    raise TypeError(
        f"images must be a torch.Tensor (N×C×H×W) or a numpy photo (H×W×C), "
        f"got {type(images).__name__}"
    )


def _rescale(img: np.ndarray) -> np.ndarray:
    if not np.isfinite(img).all():
        raise ValueError("images contain NaN or Inf; clean them before segmenting")
    lo, hi = float(img.min()), float(img.max())
    if lo >= 0.0 and hi <= 1.0:
        return img
    if hi - lo < 1e-12:
        return np.zeros_like(img)
    return (img - lo) / (hi - lo)


# --------------------------------------------------------------------------------------------
# Segmenters: each takes an H×W×C float image in [0, 1] and returns an H×W int label map
# --------------------------------------------------------------------------------------------


def _slic(img: np.ndarray, n_segments: int, compactness: float | None, **kw: Any) -> np.ndarray:
    from skimage.segmentation import slic

    rgb = img.shape[2] == 3
    # Lab values span ~0..100 for RGB; grayscale intensities span 0..1, so scale compactness.
    default_compactness = 10.0 if rgb else 0.1
    return np.asarray(
        slic(
            img if rgb else img[..., 0],
            n_segments=n_segments,
            compactness=default_compactness if compactness is None else compactness,
            start_label=0,
            channel_axis=-1 if rgb else None,
            **kw,
        )
    )


def _quickshift(img: np.ndarray, **kw: Any) -> np.ndarray:
    from skimage.segmentation import quickshift

    rgb = img if img.shape[2] == 3 else np.repeat(img, 3, axis=2)
    params = {"kernel_size": 3, "max_dist": 6, "ratio": 0.5, **kw}
    return np.asarray(quickshift(rgb, **params))


def _felzenszwalb(img: np.ndarray, **kw: Any) -> np.ndarray:
    from skimage.segmentation import felzenszwalb

    params = {"scale": 100.0, "sigma": 0.5, "min_size": 50, **kw}
    if img.shape[2] == 3:
        return np.asarray(felzenszwalb(img, channel_axis=-1, **params))
    return np.asarray(felzenszwalb(img[..., 0], channel_axis=None, **params))


def _watershed(
    img: np.ndarray, n_segments: int, compactness: float | None, **kw: Any
) -> np.ndarray:
    from skimage.color import rgb2gray
    from skimage.filters import sobel
    from skimage.segmentation import watershed

    gray = rgb2gray(img) if img.shape[2] == 3 else img[..., 0]
    return np.asarray(
        watershed(
            sobel(gray),
            markers=n_segments,
            compactness=1e-3 if compactness is None else compactness,
            **kw,
        )
    )


def _grid(img: np.ndarray, n_segments: int) -> np.ndarray:
    height, width = img.shape[:2]
    rows = max(1, min(height, round(np.sqrt(n_segments * height / width))))
    cols = max(1, min(width, round(n_segments / rows)))
    row_ids = np.arange(height) * rows // height
    col_ids = np.arange(width) * cols // width
    return np.asarray(row_ids[:, None] * cols + col_ids[None, :])


_SEGMENTERS: dict[str, Callable[..., np.ndarray]] = {
    "slic": _slic,
    "quickshift": _quickshift,
    "felzenszwalb": _felzenszwalb,
    "watershed": _watershed,
    "grid": _grid,
}


def _segment_one(
    img: np.ndarray,
    method: str,
    n_segments: int | None,
    compactness: float | None,
    working_size: int | None,
    kwargs: dict[str, Any],
) -> np.ndarray:
    height, width = img.shape[:2]
    small = img
    if working_size is not None and max(height, width) > working_size:
        scale = working_size / max(height, width)
        shape = (max(1, round(height * scale)), max(1, round(width * scale)))
        # Area averaging is an anti-aliased box filter: ~10× cheaper than skimage's resize.
        chw = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
        small = F.interpolate(chw, size=shape, mode="area")[0].permute(1, 2, 0).numpy()
    if method in _COUNTED_METHODS:
        count = _DEFAULT_N_SEGMENTS if n_segments is None else n_segments
        if method == "grid":
            labels = _SEGMENTERS[method](small, count, **kwargs)
        else:
            labels = _SEGMENTERS[method](small, count, compactness, **kwargs)
    else:
        labels = _SEGMENTERS[method](small, **kwargs)
    if labels.shape != (height, width):
        rows = np.arange(height) * labels.shape[0] // height
        cols = np.arange(width) * labels.shape[1] // width
        labels = labels[rows[:, None], cols[None, :]]
    return labels


def segment(
    images: Any,
    method: str = "slic",
    *,
    n_segments: int | None = None,
    compactness: float | None = None,
    photo: Any = None,
    working_size: int | None = None,
    **kwargs: Any,
) -> Tensor:
    """Compute superpixels for each image and return a Captum ``feature_mask``.

    Args:
        images: Either the model input, an N×C×H×W tensor (1 or 3 channels; each image is
            min–max rescaled to [0, 1] first, so normalised inputs segment like the photo), or
            a numpy photo: H×W, H×W×C or N×H×W×C, uint8 in 0..255 or float.
        method: ``"slic"`` (default), ``"quickshift"``, ``"felzenszwalb"``, ``"watershed"``
            or ``"grid"`` (a regular grid of about ``n_segments`` cells).
        n_segments: Approximate number of segments for slic, watershed and grid (default 50).
            Quickshift and felzenszwalb size segments by scale instead, so passing it to them
            is an error: use their own ``kwargs`` (``max_dist``, ``scale``...).
        compactness: Shape regularity for slic (default 10 for RGB, 0.1 for grayscale) and
            watershed (default 0.001).
        photo: The unnormalised photo to segment instead of ``images`` (same spatial size),
            e.g. the uint8 image before normalisation. ``images`` then only fixes the size.
        working_size: If set, segment a copy resized so its longer side is at most this many
            pixels and upsample the labels (nearest). Faster, with slightly blockier edges.
        **kwargs: Passed to the scikit-image segmenter.

    Returns:
        ``torch.long`` tensor shaped N×1×H×W with contiguous ids ``0..K_i−1`` per image, on
        the device of ``images`` when it is a tensor.

    Example:
        >>> mask = segment(torch.rand(1, 3, 224, 224), n_segments=50)
        >>> int(mask.max()) + 1 <= 60
        True
    """
    if method not in _SEGMENTERS:
        raise ValueError(f"unknown segmentation method {method!r}; choose one of {METHODS}")
    if n_segments is not None:
        if method not in _COUNTED_METHODS:
            raise ValueError(
                f"{method} does not take n_segments (it sizes segments by scale); pass its own "
                "parameters instead, e.g. max_dist for quickshift or scale for felzenszwalb"
            )
        if n_segments < 1:
            raise ValueError(f"n_segments must be >= 1, got {n_segments}")
    if working_size is not None and working_size < 8:
        raise ValueError(f"working_size must be at least 8 pixels, got {working_size}")
    source = images if photo is None else photo
    arrays = _to_hwc_batch(source)
    if photo is not None:
        target_shape = _spatial_shape(images)
        for arr in arrays:
            if arr.shape[:2] != target_shape:
                raise ValueError(
                    f"photo is {arr.shape[0]}×{arr.shape[1]} but the model input is "
                    f"{target_shape[0]}×{target_shape[1]}; resize the photo to the input size"
                )
        if isinstance(images, Tensor) and len(arrays) not in (1, images.shape[0]):
            raise ValueError(
                f"got {len(arrays)} photos for {images.shape[0]} images; pass one photo per "
                "image or a single photo for all"
            )
    labels = [
        _segment_one(arr, method, n_segments, compactness, working_size, kwargs) for arr in arrays
    ]
    for index, (arr, label_map) in enumerate(zip(arrays, labels, strict=True)):
        _warn_if_single_segment(arr, label_map, method, n_segments, index)
    mask = torch.from_numpy(np.stack(labels).astype(np.int64)).unsqueeze(1)
    mask = relabel_sequential(mask)
    if photo is not None and isinstance(images, Tensor) and mask.shape[0] != images.shape[0]:
        mask = mask.expand(images.shape[0], -1, -1, -1).contiguous()
    device = images.device if isinstance(images, Tensor) else torch.device("cpu")
    return mask.to(device)


def _warn_if_single_segment(
    img: np.ndarray, labels: np.ndarray, method: str, n_segments: int | None, index: int
) -> None:
    """Warn when a non-constant image comes back as one segment (every score would be equal)."""
    if n_segments == 1 or float(img.max() - img.min()) < 1e-12:
        return  # one segment was asked for, or there is nothing to separate
    if np.unique(labels).size > 1:
        return
    warnings.warn(
        f"{method} returned a single segment for image {index}, which is not constant, so "
        "every per-segment score will be the same value. Ask for more segments "
        "(n_segments=...), lower the compactness (e.g. compactness=0.1), use method='grid', "
        "or segment a real photo (photo=...): uniform noise such as torch.rand has no regions "
        "for SLIC to find.",
        UserWarning,
        stacklevel=3,
    )


def _spatial_shape(images: Any) -> tuple[int, int]:
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must be N×C×H×W, got shape {tuple(images.shape)}")
        return int(images.shape[2]), int(images.shape[3])
    arrays = np.asarray(images)
    return (
        (int(arrays.shape[0]), int(arrays.shape[1]))
        if arrays.ndim in (2, 3)
        else (int(arrays.shape[1]), int(arrays.shape[2]))
    )


# --------------------------------------------------------------------------------------------
# Mask utilities
# --------------------------------------------------------------------------------------------


def relabel_sequential(mask: Tensor | np.ndarray) -> Tensor:
    """Renumber the ids of each image to ``0..K_i−1``, keeping their order.

    Args:
        mask: Integer labels shaped H×W, N×H×W or N×1×H×W (tensor or array).

    Returns:
        A ``torch.long`` tensor of the same shape.
    """
    tensor = torch.as_tensor(mask)
    if tensor.is_floating_point() or tensor.dtype == torch.bool:
        raise TypeError(f"segment ids must be integers, got {tensor.dtype}")
    tensor = tensor.long()
    if tensor.dim() == 2:
        return torch.unique(tensor, return_inverse=True)[1]
    flat = tensor.reshape(tensor.shape[0], -1)
    relabelled = torch.empty_like(flat)
    for i, row in enumerate(flat):
        relabelled[i] = torch.unique(row, return_inverse=True)[1]
    return relabelled.reshape(tensor.shape)


def validate_feature_mask(feature_mask: Any, inputs: Tensor) -> Tensor:
    """Check a segment mask against the input and return it as long N×1×H×W.

    Accepts H×W, 1×H×W, 1×1×H×W (shared by the batch) or N×1×H×W masks, as tensors or
    numpy arrays, with integer ids that are contiguous ``0..K_i−1`` in each image.

    Raises:
        TypeError: The mask is not integer-valued.
        ValueError: Wrong shape or size, negative ids, or gaps in the ids (fix those with
            :func:`relabel_sequential`).
    """
    if not isinstance(feature_mask, (Tensor, np.ndarray)):
        raise TypeError(
            f"feature_mask must be an integer tensor shaped N×1×H×W, got "
            f"{type(feature_mask).__name__}"
        )
    mask = torch.as_tensor(feature_mask)
    if mask.is_floating_point() or mask.dtype == torch.bool or mask.is_complex():
        raise TypeError(
            f"feature_mask must hold integer segment ids, got {mask.dtype}; use mask.long()"
        )
    n, _, height, width = inputs.shape
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3 and mask.shape[0] == 1:
        mask = mask[None]
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, n):
        raise ValueError(
            f"feature_mask must be H×W, 1×1×H×W or N×1×H×W (N={n}), got shape "
            f"{tuple(torch.as_tensor(feature_mask).shape)}; one mask per image, with a "
            "channel dimension of 1"
        )
    if tuple(mask.shape[2:]) != (height, width):
        raise ValueError(
            f"feature_mask is {mask.shape[2]}×{mask.shape[3]} but the input is "
            f"{height}×{width}; segment the image at the input size (or resize the mask with "
            "nearest-neighbour interpolation)"
        )
    mask = mask.to(device=inputs.device, dtype=torch.long)
    if int(mask.min()) < 0:
        raise ValueError(
            "feature_mask has negative ids; segment ids must be 0..K-1 "
            "(use captum_secam.segmentation.relabel_sequential)"
        )
    counts = _segment_pixel_counts(mask)
    n_ids = mask.reshape(mask.shape[0], -1).amax(dim=1) + 1
    present = counts > 0
    expected = torch.arange(counts.shape[1], device=mask.device)[None, :] < n_ids[:, None]
    if not bool((present == expected).all()):
        raise ValueError(
            "feature_mask ids are not contiguous 0..K-1 in every image (gaps become dead "
            "features); renumber with captum_secam.segmentation.relabel_sequential(mask)"
        )
    if mask.shape[0] != n:
        mask = mask.expand(n, -1, -1, -1)
    return mask


def segment_counts(feature_mask: Tensor) -> Tensor:
    """Number of segments in each image of an N×1×H×W contiguous mask (LongTensor N)."""
    return feature_mask.reshape(feature_mask.shape[0], -1).amax(dim=1) + 1


def _segment_pixel_counts(feature_mask: Tensor) -> Tensor:
    """N×K matrix of pixel counts per segment, K = max id + 1 over the batch."""
    n = feature_mask.shape[0]
    flat = feature_mask.reshape(n, -1)
    n_segments = int(flat.max()) + 1
    offsets = torch.arange(n, device=flat.device)[:, None] * n_segments
    return torch.bincount((flat + offsets).reshape(-1), minlength=n * n_segments).reshape(
        n, n_segments
    )


def segment_means(values: Tensor, feature_mask: Tensor) -> Tensor:
    """Average ``values`` over the pixels (and channels) of each segment.

    Args:
        values: N×C×H×W (or N×1×H×W) map.
        feature_mask: Contiguous long mask N×1×H×W (or 1×1×H×W, shared).

    Returns:
        N×K tensor, K = the largest segment count in the batch. Entries past an image's own
        segment count are 0 (as Captum pads per-feature outputs).
    """
    if values.dim() != 4:
        raise ValueError(f"values must be N×C×H×W, got shape {tuple(values.shape)}")
    n = values.shape[0]
    mask = feature_mask.expand(n, -1, -1, -1) if feature_mask.shape[0] == 1 else feature_mask
    if mask.shape[0] != n or mask.shape[2:] != values.shape[2:]:
        raise ValueError(
            f"feature_mask of shape {tuple(feature_mask.shape)} does not match values of "
            f"shape {tuple(values.shape)}"
        )
    per_pixel = values.mean(dim=1).reshape(n, -1)
    flat = mask.reshape(n, -1)
    n_segments = int(flat.max()) + 1
    index = flat + torch.arange(n, device=flat.device)[:, None] * n_segments
    sums = torch.zeros(n * n_segments, dtype=per_pixel.dtype, device=per_pixel.device)
    sums.index_add_(0, index.reshape(-1), per_pixel.reshape(-1))
    counts = torch.bincount(index.reshape(-1), minlength=n * n_segments).to(per_pixel.dtype)
    return (sums / counts.clamp_min(1)).reshape(n, n_segments)


def scores_to_mask(scores: Tensor, feature_mask: Tensor, n_channels: int = 1) -> Tensor:
    """Paint per-segment scores back onto the image grid.

    Args:
        scores: N×K per-segment scores (K at least the largest id + 1).
        feature_mask: Long mask N×1×H×W or 1×1×H×W.
        n_channels: Channels of the output (the score is broadcast over them).

    Returns:
        N×n_channels×H×W tensor, constant on each segment.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be N×K, got shape {tuple(scores.shape)}")
    n = scores.shape[0]
    mask = feature_mask.expand(n, -1, -1, -1) if feature_mask.shape[0] == 1 else feature_mask
    if mask.shape[0] != n:
        raise ValueError(f"{n} score rows but feature_mask has {feature_mask.shape[0]} images")
    if int(mask.max()) >= scores.shape[1]:
        raise ValueError(
            f"feature_mask has id {int(mask.max())} but scores have only {scores.shape[1]} "
            "columns; pass one score per segment"
        )
    painted = torch.gather(scores, 1, mask.reshape(n, -1)).reshape(n, 1, *mask.shape[2:])
    return painted.expand(-1, n_channels, -1, -1)
