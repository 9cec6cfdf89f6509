"""Figures for segment explanations, on top of ``captum.attr.visualization``.

Every function takes our tensors as they are — N×C×H×W (N = 1, or pick one with ``index``),
C×H×W or H×W tensors, requires-grad or on a GPU — and converts them to the H×W×C numpy arrays
that :func:`captum.attr.visualization.visualize_image_attr` needs (a C×H×W array is drawn wrong
there without an error, SPEC §4). Figures are created with :class:`matplotlib.figure.Figure`
(no pyplot, no global backend change), so they work headless; pass ``ax`` to draw into your
own axes.

Example:
    >>> from captum_secam.interop import captum_attribute
    >>> secam_attr = SeCam(model, model._bn1).attribute(x, target=281, feature_mask=mask)
    >>> lime_attr = captum_attribute(
    ...     "lime", model, x, mask, target=281, n_samples=50, return_input_shape=True
    ... )
    >>> fig = plot_method_grid(photo, mask, {"SeCam": secam_attr, "Lime": lime_attr},
    ...                        regions={"SeCam": select_top_k(secam_attr, mask, 4)})
    >>> fig.savefig("explanations.png")
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

__all__ = [
    "VISUALIZATION_METHODS",
    "VISUALIZATION_SIGNS",
    "plot_method_grid",
    "show_attribution",
    "show_superpixels",
    "show_top_segments",
    "to_hw_map",
    "to_hwc_image",
]

VISUALIZATION_METHODS = (
    "heat_map",
    "blended_heat_map",
    "original_image",
    "masked_image",
    "alpha_scaling",
)
VISUALIZATION_SIGNS = ("all", "positive", "negative", "absolute_value")
_ZERO_NOTE = "all-zero attribution"


# --------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------


def _as_numpy(array: Any, name: str, index: int) -> np.ndarray:
    """Return a numpy array with a batch dimension removed, remembering if it was a tensor."""
    if isinstance(array, Tensor):
        tensor = array.detach().to("cpu")
        if tensor.dim() == 4:
            if not 0 <= index < tensor.shape[0]:
                raise IndexError(
                    f"index {index} is out of range for {name} of batch size {tensor.shape[0]}"
                )
            tensor = tensor[index]
        if tensor.dim() == 3 and tensor.shape[0] in (1, 3, 4):
            tensor = tensor.permute(1, 2, 0)  # C×H×W -> H×W×C
        if tensor.dtype == torch.bool:
            return tensor.numpy()
        return tensor.to(torch.float64 if tensor.is_floating_point() else tensor.dtype).numpy()
    if isinstance(array, np.ndarray):
        out = array
        if out.ndim == 4:
            if not 0 <= index < out.shape[0]:
                raise IndexError(
                    f"index {index} is out of range for {name} of batch size {out.shape[0]}"
                )
            out = out[index]
        if out.ndim == 3 and out.shape[0] in (1, 3, 4) and out.shape[2] not in (1, 3, 4):
            out = np.moveaxis(out, 0, -1)  # C×H×W -> H×W×C
        return out
    raise TypeError(f"{name} must be a torch.Tensor or a numpy array, got {type(array).__name__}")


def to_hwc_image(photo: Any, index: int = 0) -> np.ndarray:
    """Convert a photo or model input to an H×W×3 float array in [0, 1] for display.

    Args:
        photo: uint8 or float numpy photo (H×W, H×W×C, C×H×W, N×H×W×C) or a tensor
            (N×C×H×W, C×H×W, H×W). Float values outside [0, 1] (normalised model inputs) are
            min–max rescaled; grayscale is repeated to RGB and alpha dropped.
        index: Which image of a batch.

    Returns:
        H×W×3 float64 array in [0, 1].
    """
    image = _as_numpy(photo, "photo", index)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"photo must be an RGB or grayscale image (H×W×C or C×H×W), got shape "
            f"{tuple(np.shape(photo))}"
        )
    image = image[:, :, :3]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    image = image.astype(np.float64)
    if not np.isfinite(image).all():
        raise ValueError("photo contains NaN or Inf values")
    lo, hi = float(image.min()), float(image.max())
    if lo < 0.0 or hi > 1.0:
        if hi > 1.0 and lo >= 0.0 and hi <= 255.0 and np.allclose(image, np.round(image)):
            return image / 255.0  # integer-valued 0..255 stored as float
        image = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    return image


def to_hw_map(attributions: Any, index: int = 0) -> np.ndarray:
    """Convert an attribution (N×C×H×W, C×H×W, H×W tensor or H×W×C array) to an H×W map.

    Channels are averaged (our maps are broadcast over channels, so this is the segment score).
    """
    values = _as_numpy(attributions, "attributions", index)
    if values.ndim == 3:
        values = values.mean(axis=2)
    if values.ndim != 2:
        raise ValueError(
            f"attributions must be N×C×H×W, C×H×W or H×W, got shape {tuple(np.shape(attributions))}"
        )
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("attributions contain NaN or Inf values; nothing sensible to draw")
    return values


def _labels_2d(feature_mask: Any, index: int) -> np.ndarray:
    labels = _as_numpy(feature_mask, "feature_mask", index)
    if labels.ndim == 3 and labels.shape[2] == 1:
        labels = labels[:, :, 0]
    if labels.ndim != 2:
        raise ValueError(
            f"feature_mask must be N×1×H×W, 1×H×W or H×W, got shape {tuple(np.shape(feature_mask))}"
        )
    if labels.dtype.kind not in "iub":
        raise TypeError(f"feature_mask must hold integer ids, got {labels.dtype}")
    return labels.astype(np.int64)


def _new_axes(ax: Axes | None, size: tuple[float, float] = (4.0, 4.0)) -> Axes:
    if ax is not None:
        return ax
    return Figure(figsize=size).subplots()


def _clean(ax: Axes, title: str | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)


def _check_same_size(shape_a: tuple[int, ...], shape_b: tuple[int, ...], what: str) -> None:
    if tuple(shape_a[:2]) != tuple(shape_b[:2]):
        raise ValueError(
            f"{what} is {shape_b[0]}×{shape_b[1]} but the photo is {shape_a[0]}×{shape_a[1]}; "
            "show the photo at the model's input size (e.g. demo_model.resize_photo)"
        )


# --------------------------------------------------------------------------------------------
# Panels
# --------------------------------------------------------------------------------------------


def show_superpixels(
    photo: Any,
    feature_mask: Any,
    ax: Axes | None = None,
    title: str | None = None,
    color: tuple[float, float, float] = (1.0, 1.0, 0.0),
    index: int = 0,
) -> Axes:
    """Draw the photo with the segment boundaries of ``feature_mask`` on top.

    Args:
        photo: The photo (see :func:`to_hwc_image`).
        feature_mask: Segment ids, N×1×H×W / 1×H×W / H×W, at the photo's size.
        ax: Axes to draw into (a new figure's axes if None).
        title: Panel title; defaults to the number of segments.
        color: Boundary colour (RGB in [0, 1]).
        index: Which image of a batch.

    Returns:
        The axes.
    """
    from skimage.segmentation import mark_boundaries

    image = to_hwc_image(photo, index)
    labels = _labels_2d(feature_mask, index)
    _check_same_size(image.shape, labels.shape, "feature_mask")
    ax = _new_axes(ax)
    ax.imshow(mark_boundaries(image, labels, color=color, mode="thick"))
    n_segments = len(np.unique(labels))
    _clean(ax, title if title is not None else f"{n_segments} superpixels")
    return ax


def show_attribution(
    attr: Any,
    photo: Any = None,
    ax: Axes | None = None,
    method: str = "blended_heat_map",
    sign: str = "all",
    title: str | None = None,
    outlier_perc: float = 2,
    alpha_overlay: float = 0.6,
    show_colorbar: bool = False,
    cmap: Any = None,
    index: int = 0,
) -> Axes:
    """Draw an attribution with :func:`captum.attr.visualization.visualize_image_attr`.

    An attribution with nothing to show for ``sign`` (all zero, or e.g. no positive value with
    ``sign="positive"``) is drawn blank with a note in the title, instead of Captum's
    "Cannot normalize by scale factor = 0" assertion.

    Args:
        attr: Attribution tensor/array (N×C×H×W, C×H×W, H×W or H×W×C); channels averaged.
        photo: The photo, needed by every method except ``"heat_map"``.
        ax: Axes to draw into (a new figure's axes if None).
        method: One of :data:`VISUALIZATION_METHODS`.
        sign: One of :data:`VISUALIZATION_SIGNS`. ``"masked_image"`` and ``"alpha_scaling"``
            show one sign only, so they need ``"positive"``, ``"negative"`` or
            ``"absolute_value"``.
        title: Panel title.
        outlier_perc, alpha_overlay, show_colorbar, cmap: As in ``visualize_image_attr``.
        index: Which image of a batch.

    Returns:
        The axes.
    """
    from captum.attr import visualization as captum_visualization

    if method not in VISUALIZATION_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {VISUALIZATION_METHODS}")
    if sign not in VISUALIZATION_SIGNS:
        raise ValueError(f"unknown sign {sign!r}; choose one of {VISUALIZATION_SIGNS}")
    if sign == "all" and method in ("masked_image", "alpha_scaling"):
        raise ValueError(
            f"method {method!r} shows one sign only; pass sign='positive', 'negative' or "
            "'absolute_value'"
        )
    values = to_hw_map(attr, index)
    image = None
    if photo is not None:
        image = to_hwc_image(photo, index)
        _check_same_size(image.shape, values.shape, "the attribution")
    elif method != "heat_map":
        raise ValueError(f"method {method!r} draws on the photo; pass photo=...")
    ax = _new_axes(ax)
    fig = ax.get_figure()

    if sign == "positive":
        selected = np.maximum(values, 0.0)
    elif sign == "negative":
        selected = np.minimum(values, 0.0)
    else:
        selected = values
    if not np.any(selected != 0.0):
        _draw_blank(ax, image, method)
        note = _ZERO_NOTE if not np.any(values != 0.0) else f"no {sign} attribution"
        _clean(ax, f"{title} ({note})" if title else note)
        return ax

    captum_visualization.visualize_image_attr(
        values[:, :, None],
        original_image=image,
        method=method,
        sign=sign,
        plt_fig_axis=(fig, ax),
        outlier_perc=outlier_perc,
        cmap=cmap,
        alpha_overlay=alpha_overlay,
        show_colorbar=show_colorbar,
        title=None,
        use_pyplot=False,
    )
    _clean(ax, title)
    return ax


def _draw_blank(ax: Axes, image: np.ndarray | None, method: str) -> None:
    """What visualize_image_attr would show for a zero map."""
    if method == "heat_map" or image is None:
        shape = image.shape[:2] if image is not None else (1, 1)
        ax.imshow(np.ones((*shape, 3)))
    elif method == "blended_heat_map":
        ax.imshow(image.mean(axis=2), cmap="gray", vmin=0.0, vmax=1.0)
    elif method == "masked_image":
        ax.imshow(np.zeros_like(image))
    elif method == "alpha_scaling":
        ax.imshow(np.concatenate([image, np.zeros((*image.shape[:2], 1))], axis=2))
    else:  # original_image
        ax.imshow(image)


def show_top_segments(
    photo: Any,
    region_mask: Any,
    ax: Axes | None = None,
    title: str | None = None,
    grey: float = 0.85,
    index: int = 0,
) -> Axes:
    """LIME-style view: the selected segments in colour, the rest greyed out.

    Args:
        photo: The photo (see :func:`to_hwc_image`).
        region_mask: Boolean (or 0/1) N×1×H×W / H×W mask, e.g. from
            :func:`captum_secam.select_top_k` or :func:`captum_secam.select_threshold`.
        ax: Axes to draw into (a new figure's axes if None).
        title: Panel title.
        grey: Lightness of the greyed-out area (0 black … 1 white).
        index: Which image of a batch.

    Returns:
        The axes.
    """
    from skimage.segmentation import find_boundaries

    image = to_hwc_image(photo, index)
    keep = _as_numpy(region_mask, "region_mask", index)
    if keep.ndim == 3 and keep.shape[2] == 1:
        keep = keep[:, :, 0]
    if keep.ndim != 2:
        raise ValueError(
            f"region_mask must be N×1×H×W or H×W, got shape {tuple(np.shape(region_mask))}"
        )
    _check_same_size(image.shape, keep.shape, "region_mask")
    keep = keep.astype(bool)
    faded = 0.25 * image.mean(axis=2, keepdims=True) + 0.75 * grey
    shown = np.where(keep[:, :, None], image, np.repeat(faded, 3, axis=2))
    edges = find_boundaries(keep.astype(np.int64), mode="inner") & keep
    shown[edges] = (1.0, 0.85, 0.0)
    ax = _new_axes(ax)
    ax.imshow(np.clip(shown, 0.0, 1.0))
    if not keep.any():
        title = f"{title} (nothing selected)" if title else "nothing selected"
    _clean(ax, title)
    return ax


def plot_method_grid(
    photo: Any,
    feature_mask: Any,
    attributions: Mapping[str, Any],
    titles: Mapping[str, str] | None = None,
    timings: Mapping[str, float | str] | None = None,
    regions: Mapping[str, Any] | None = None,
    region_label: str = "top segments",
    method: str = "blended_heat_map",
    sign: str = "all",
    suptitle: str | None = None,
    ncols: int | None = None,
    panel_size: float = 3.2,
    out: str | None = None,
    index: int = 0,
) -> Figure:
    """One figure comparing explanations: photo, superpixels, then one panel per method.

    Args:
        photo: The photo (see :func:`to_hwc_image`).
        feature_mask: The superpixels the methods share.
        attributions: Method name → attribution (tensor or array), in panel order.
        titles: Optional panel titles per method name (default: the name).
        timings: Optional wall time in seconds (or a ready-made string) per method name,
            added under its title.
        regions: Optional method name → region mask (e.g. its top-k segments), drawn with
            :func:`show_top_segments` right after that method's panel.
        region_label: Title suffix of the region panels ("<name>: <region_label>").
        method, sign: Passed to :func:`show_attribution` for every attribution panel.
        suptitle: Figure title (e.g. the predicted class).
        ncols: Panels per row (default: about the square root of the panel count).
        panel_size: Inches per panel.
        out: If given, save the figure there (PNG, 120 dpi).
        index: Which image of a batch.

    Returns:
        The matplotlib Figure (not attached to pyplot).
    """
    titles = dict(titles or {})
    timings = dict(timings or {})
    regions = dict(regions or {})
    unknown = set(regions) - set(attributions)
    if unknown:
        raise ValueError(f"regions for {sorted(unknown)} have no attribution with that name")
    panels: list[tuple[str, str, Any]] = [("photo", "photo", None), ("superpixels", "", None)]
    for name, attr in attributions.items():
        label = titles.get(name, name)
        if name in timings:
            timing = timings[name]
            label += "\n" + (timing if isinstance(timing, str) else _format_seconds(timing))
        panels.append(("attr", label, attr))
        if name in regions:
            panels.append(("region", f"{name}: {region_label}", regions[name]))
    n_panels = len(panels)
    cols = ncols if ncols is not None else max(1, math.ceil(math.sqrt(n_panels)))
    if cols < 1:
        raise ValueError(f"ncols must be >= 1, got {cols}")
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(panel_size * cols, panel_size * rows + (0.5 if suptitle else 0.0)))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (kind, label, value) in zip(axes, panels, strict=False):
        if kind == "photo":
            ax.imshow(to_hwc_image(photo, index))
            _clean(ax, "input")
        elif kind == "superpixels":
            show_superpixels(photo, feature_mask, ax=ax, index=index)
        elif kind == "attr":
            show_attribution(
                value, photo, ax=ax, method=method, sign=sign, title=label, index=index
            )
        else:
            show_top_segments(photo, value, ax=ax, title=label, index=index)
    for ax in axes[n_panels:]:
        ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle, fontsize=13)
    fig.tight_layout()
    if out is not None:
        fig.savefig(out, dpi=120)
    return fig


def _format_seconds(seconds: float) -> str:
    if seconds < 1.0:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s"
