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

Every function is deterministic: orderings break ties by pixel or segment index and the
randomisation test draws from its own seeded generator.

Example:
    >>> secam = SeCam(model, model._bn1)
    >>> mask = segment(x, n_segments=50)
    >>> attr = secam.attribute(x, target=3, feature_mask=mask)
    >>> deletion_auc(model, x, attr, target=3, feature_mask=mask)   # lower is better
    >>> insertion_auc(model, x, attr, target=3, feature_mask=mask)  # higher is better
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from captum_secam._validation import check_classifier_output, check_images, resolve_targets
from captum_secam.segmentation import segment_counts, segment_means, validate_feature_mask

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

FILLS = ("constant", "blur", "mean")
Fill = Literal["constant", "blur", "mean"]
Similarity = Literal["spearman", "pearson"]
_DEFAULT_PIXEL_STEPS = 20


class PerturbationCurve(NamedTuple):
    """A deletion or insertion curve, one row per image.

    Attributes:
        fractions: N×(S+1) fraction of the image area removed (deletion) or inserted
            (insertion) at each step, from 0 to 1.
        scores: N×(S+1) target score (probability when ``probabilities=True``) at each step.
    """

    fractions: Tensor
    scores: Tensor


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _check_attributions(attributions: Any, inputs: Tensor, segment_level: bool) -> Tensor:
    """Return attributions as N×1×H×W (pixel maps) or N×K (segment scores)."""
    if not isinstance(attributions, Tensor):
        raise TypeError(
            f"attributions must be a torch.Tensor, got {type(attributions).__name__}; "
            "convert numpy maps with torch.from_numpy"
        )
    n, _, height, width = inputs.shape
    if attributions.shape[0] != n:
        raise ValueError(
            f"attributions have {attributions.shape[0]} rows but inputs have {n} images; "
            "pass one attribution per image (same batch order)"
        )
    if not attributions.is_floating_point():
        attributions = attributions.float()
    if not bool(torch.isfinite(attributions).all()):
        raise ValueError(
            "attributions contain NaN or Inf; fix the explainer (see Troubleshooting) or "
            "clean them with torch.nan_to_num before scoring"
        )
    if attributions.dim() == 2:
        if not segment_level:
            raise ValueError(
                f"attributions of shape {tuple(attributions.shape)} are per-segment scores; "
                "pass the feature_mask they refer to"
            )
        return attributions.detach()
    if attributions.dim() == 3:
        attributions = attributions[:, None]
    if attributions.dim() != 4 or tuple(attributions.shape[2:]) != (height, width):
        raise ValueError(
            f"attributions must be N×C×H×W, N×1×H×W or N×H×W matching the inputs "
            f"({n}×C×{height}×{width}), got shape {tuple(attributions.shape)}; upsample layer "
            "maps to the input size first (LayerAttribution.interpolate)"
        )
    return attributions.detach().sum(dim=1, keepdim=True)


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _fill_image(
    inputs: Tensor, fill: str | Tensor, fill_value: float | Sequence[float], blur_sigma: float
) -> Tensor:
    """The fully perturbed image (what removed pixels are replaced with), shaped like inputs."""
    if isinstance(fill, Tensor):
        try:
            return torch.broadcast_to(fill.to(inputs), inputs.shape)
        except RuntimeError as err:
            raise ValueError(
                f"a fill tensor must broadcast to the inputs {tuple(inputs.shape)}, got "
                f"{tuple(fill.shape)}; pass e.g. a 1×C×1×1 colour or an N×C×H×W image"
            ) from err
    if fill == "constant":
        value = torch.as_tensor(fill_value, dtype=inputs.dtype, device=inputs.device)
        if value.dim() == 1:
            if value.numel() != inputs.shape[1]:
                raise ValueError(
                    f"fill_value has {value.numel()} entries but the inputs have "
                    f"{inputs.shape[1]} channels; pass one float or one value per channel"
                )
            value = value[None, :, None, None]
        elif value.dim() != 0:
            raise ValueError("fill_value must be a float or a sequence with one value per channel")
        return torch.broadcast_to(value, inputs.shape)
    if fill == "mean":
        return torch.broadcast_to(inputs.mean(dim=(2, 3), keepdim=True), inputs.shape)
    if fill == "blur":
        if not blur_sigma > 0:
            raise ValueError(f"blur_sigma must be > 0 pixels, got {blur_sigma}")
        return _gaussian_blur(inputs, blur_sigma)
    raise ValueError(
        f"unknown fill {fill!r}; choose one of {FILLS} or pass a tensor that broadcasts to the "
        "inputs"
    )


def _gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with edge replication (kernel radius ceil(3σ))."""
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = nn.functional.pad(images, (radius, radius, 0, 0), mode="replicate")
    out = nn.functional.conv2d(
        padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels
    )
    padded = nn.functional.pad(out, (0, 0, radius, radius), mode="replicate")
    return nn.functional.conv2d(
        padded, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels
    )


def _index_args(args: tuple[Any, ...], index: Tensor, batch_size: int) -> tuple[Any, ...]:
    """Pick the rows ``index`` of every batch-shaped tensor in additional_forward_args."""
    return tuple(
        a[index.to(a.device)]
        if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == batch_size
        else a
        for a in args
    )


# --------------------------------------------------------------------------------------------
# Deletion / insertion
# --------------------------------------------------------------------------------------------


def _orders(
    attributions: Tensor, inputs: Tensor, feature_mask: Any, n_steps: int | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pixel rank keys (N×H×W), counts to perturb per step (N×(S+1)) and area fractions.

    A pixel is perturbed at step k when its key is < counts[:, k]. At pixel granularity the key
    is the pixel's position in the descending attribution order; with a feature mask it is the
    position of the pixel's segment in the descending order of segment scores.
    """
    n, _, height, width = inputs.shape
    n_pixels = height * width
    if feature_mask is None:
        steps = _DEFAULT_PIXEL_STEPS if n_steps is None else n_steps
        flat = attributions.reshape(n, n_pixels)
        order = torch.sort(flat, dim=1, descending=True, stable=True).indices
        keys = torch.empty_like(order)
        keys.scatter_(1, order, torch.arange(n_pixels, device=order.device).expand(n, -1))
        k = torch.arange(steps + 1, device=inputs.device)
        counts = (k * n_pixels // steps).expand(n, -1)
        fractions = counts.to(inputs.dtype) / n_pixels
        return keys.reshape(n, height, width), counts, fractions

    mask = validate_feature_mask(feature_mask, inputs)
    n_segments = segment_counts(mask)
    if attributions.dim() == 2:
        if attributions.shape[1] < int(n_segments.max()):
            raise ValueError(
                f"attributions have {attributions.shape[1]} segment scores but the "
                f"feature_mask has up to {int(n_segments.max())} segments; pass one score per "
                "segment (return_input_shape=False output with the same mask)"
            )
        scores = attributions[:, : int(n_segments.max())]
    else:
        scores = segment_means(attributions, mask)
    valid = torch.arange(scores.shape[1], device=scores.device)[None, :] < n_segments[:, None]
    ranked = scores.masked_fill(~valid, float("-inf"))
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
    segment_rank = torch.empty_like(order)
    segment_rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand(n, -1))
    keys = torch.gather(segment_rank, 1, mask.reshape(n, -1)).reshape(n, height, width)
    steps = int(n_segments.max()) if n_steps is None else n_steps
    k = torch.arange(steps + 1, device=inputs.device)
    counts = k[None, :] * n_segments[:, None] // steps
    # Area fraction: pixels whose segment rank is below the count.
    areas = torch.bincount(
        (
            keys.reshape(n, -1) + torch.arange(n, device=keys.device)[:, None] * order.shape[1]
        ).reshape(-1),
        minlength=n * order.shape[1],
    ).reshape(n, order.shape[1])
    cumulative = torch.cat([torch.zeros_like(areas[:, :1]), areas.cumsum(dim=1)], dim=1)
    fractions = torch.gather(cumulative, 1, counts).to(inputs.dtype) / n_pixels
    return keys, counts, fractions


def _perturbation_curve(
    mode: Literal["deletion", "insertion"],
    forward_func: Callable[..., Any],
    inputs: Tensor,
    attributions: Tensor,
    target: Any,
    additional_forward_args: Any,
    feature_mask: Any,
    n_steps: int | None,
    fill: str | Tensor,
    fill_value: float | Sequence[float],
    blur_sigma: float,
    batch_size: int,
    probabilities: bool,
) -> PerturbationCurve:
    check_images(inputs)
    if not isinstance(fill, Tensor) and fill not in FILLS:
        raise ValueError(
            f"unknown fill {fill!r}; choose one of {FILLS} or pass a tensor that broadcasts to "
            "the inputs"
        )
    if n_steps is not None:
        _check_positive_int(n_steps, "n_steps")
    _check_positive_int(batch_size, "batch_size")
    attributions = _check_attributions(attributions, inputs, feature_mask is not None)
    attributions = attributions.to(inputs.device)
    n = inputs.shape[0]
    extra = additional_forward_args
    if extra is not None and not isinstance(extra, tuple):
        extra = (extra,)
    extra = extra or ()

    inputs = inputs.detach()
    keys, counts, fractions = _orders(attributions, inputs, feature_mask, n_steps)
    filled = _fill_image(inputs, fill, fill_value, blur_sigma)
    n_points = counts.shape[1]

    def scores_of(batch: Tensor, index: Tensor) -> Tensor:
        output = forward_func(batch, *_index_args(extra, index, n))
        output = check_classifier_output(output, batch.shape[0])
        if probabilities:
            output = torch.softmax(output, dim=1)
        return output

    with torch.no_grad():
        original = check_classifier_output(
            forward_func(inputs, *extra) if extra else forward_func(inputs), n
        )
        targets = resolve_targets(target, n, original.shape[1], original).to(inputs.device)
        image_index = torch.arange(n, device=inputs.device).repeat_interleave(n_points)
        step_index = torch.arange(n_points, device=inputs.device).repeat(n)
        out = torch.empty(n * n_points, dtype=torch.float64, device=inputs.device)
        for start in range(0, n * n_points, batch_size):
            images = image_index[start : start + batch_size]
            steps = step_index[start : start + batch_size]
            perturbed = keys[images] < counts[images, steps][:, None, None]
            if mode == "insertion":
                perturbed = ~perturbed
            batch = torch.where(perturbed[:, None], filled[images], inputs[images])
            scores = scores_of(batch, images)
            out[start : start + batch_size] = (
                scores.gather(1, targets[images][:, None].to(scores.device)).squeeze(1).double()
            )
    return PerturbationCurve(fractions, out.reshape(n, n_points).to(inputs.dtype))


def deletion_curve(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    attributions: Tensor,
    target: Any = None,
    *,
    additional_forward_args: Any = None,
    feature_mask: Tensor | None = None,
    n_steps: int | None = None,
    fill: Fill | Tensor = "constant",
    fill_value: float | Sequence[float] = 0.0,
    blur_sigma: float = 5.0,
    batch_size: int = 64,
    probabilities: bool = True,
) -> PerturbationCurve:
    """Target score as the most relevant pixels or segments are removed first.

    Step ``k`` replaces the ``k``-th fraction of the image, in decreasing attribution order
    (ties broken by pixel or segment index), with the fill. A faithful explanation makes the
    score fall fast, so a low area under the curve (:func:`deletion_auc`) is good.

    Args:
        forward_func: The model (or any function) returning N×classes scores. It is only
            called under ``torch.no_grad()`` and its train/eval mode is left as it is (use
            ``model.eval()`` so dropout does not make the curve random).
        inputs: N×C×H×W images, as the model takes them.
        attributions: One explanation per image: N×C×H×W, N×1×H×W or N×H×W (summed over
            channels to rank pixels), or per-segment scores N×K together with
            ``feature_mask``.
        target: Class to score: an int, one int per image, or ``None`` for the class the model
            predicts on the unperturbed image.
        additional_forward_args: Extra arguments for ``forward_func``; tensors whose first
            dimension is N are indexed along with the images.
        feature_mask: Segment ids (N×1×H×W or 1×1×H×W, contiguous ``0..K_i−1``). When given,
            whole segments are perturbed in decreasing order of their mean attribution
            (segment granularity); otherwise single pixel locations (all channels).
        n_steps: Number of perturbation steps S. Default 20 for pixels and one step per segment
            with a feature mask (the largest segment count in the batch; images with fewer
            segments advance proportionally). Step k perturbs the first ``k·P // S`` pixels or
            ``k·K_i // S`` segments.
        fill: What perturbed pixels become: ``"constant"`` (``fill_value``), ``"blur"`` (a
            Gaussian blur of the image, ``blur_sigma`` pixels), ``"mean"`` (the image's
            per-channel mean), or a tensor broadcastable to the inputs.
        fill_value: Constant for ``fill="constant"``: a float or one value per channel (in
            the model's input space, e.g. 0.0 is the dataset mean for standardised inputs).
        blur_sigma: Standard deviation of the Gaussian for ``fill="blur"``, in pixels.
        batch_size: Perturbed images per forward pass.
        probabilities: Score the softmax probability of the target (``True``, so curves lie
            in [0, 1]) or the raw output.

    Returns:
        :class:`PerturbationCurve` ``(fractions, scores)``, both N×(S+1); step 0 is the
        unperturbed image and the last step the fully filled image.

    Raises:
        ValueError: Shapes that do not match the inputs, NaN attributions, an unknown fill,
            non-positive ``n_steps``/``batch_size``, a bad feature mask or targets.

    Example:
        >>> attr = SeCam(model, model._bn1).attribute(x, target=3)
        >>> curve = deletion_curve(model, x, attr, target=3, n_steps=10)
        >>> curve.scores.shape
        torch.Size([1, 11])
    """
    return _perturbation_curve(
        "deletion",
        forward_func,
        inputs,
        attributions,
        target,
        additional_forward_args,
        feature_mask,
        n_steps,
        fill,
        fill_value,
        blur_sigma,
        batch_size,
        probabilities,
    )


def insertion_curve(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    attributions: Tensor,
    target: Any = None,
    *,
    additional_forward_args: Any = None,
    feature_mask: Tensor | None = None,
    n_steps: int | None = None,
    fill: Fill | Tensor = "blur",
    fill_value: float | Sequence[float] = 0.0,
    blur_sigma: float = 5.0,
    batch_size: int = 64,
    probabilities: bool = True,
) -> PerturbationCurve:
    """Target score as the most relevant pixels or segments are inserted into the fill image.

    Starts from the fully filled image (blurred by default, as in RISE) and restores the
    original pixels in decreasing attribution order. A faithful explanation makes the score
    rise fast, so a high area under the curve (:func:`insertion_auc`) is good.

    Args:
        forward_func: The model (or any function) returning N×classes scores. It is only
            called under ``torch.no_grad()`` and its train/eval mode is left as it is (use
            ``model.eval()`` so dropout does not make the curve random).
        inputs: N×C×H×W images, as the model takes them.
        attributions: One explanation per image: N×C×H×W, N×1×H×W or N×H×W (summed over
            channels to rank pixels), or per-segment scores N×K together with
            ``feature_mask``.
        target: Class to score: an int, one int per image, or ``None`` for the class the model
            predicts on the unperturbed image.
        additional_forward_args: Extra arguments for ``forward_func``; tensors whose first
            dimension is N are indexed along with the images.
        feature_mask: Segment ids (N×1×H×W or 1×1×H×W, contiguous ``0..K_i−1``). When given,
            whole segments are perturbed in decreasing order of their mean attribution
            (segment granularity); otherwise single pixel locations (all channels).
        n_steps: Number of perturbation steps S. Default 20 for pixels and one step per segment
            with a feature mask (the largest segment count in the batch; images with fewer
            segments advance proportionally). Step k perturbs the first ``k·P // S`` pixels or
            ``k·K_i // S`` segments.
        fill: What perturbed pixels become: ``"constant"`` (``fill_value``), ``"blur"`` (a
            Gaussian blur of the image, ``blur_sigma`` pixels), ``"mean"`` (the image's
            per-channel mean), or a tensor broadcastable to the inputs.
        fill_value: Constant for ``fill="constant"``: a float or one value per channel (in
            the model's input space, e.g. 0.0 is the dataset mean for standardised inputs).
        blur_sigma: Standard deviation of the Gaussian for ``fill="blur"``, in pixels.
        batch_size: Perturbed images per forward pass.
        probabilities: Score the softmax probability of the target (``True``, so curves lie
            in [0, 1]) or the raw output.

    Returns:
        :class:`PerturbationCurve` ``(fractions, scores)``, both N×(S+1); step 0 is the fill
        image and the last step the original image.

    Raises:
        ValueError: As for :func:`deletion_curve`.
    """
    return _perturbation_curve(
        "insertion",
        forward_func,
        inputs,
        attributions,
        target,
        additional_forward_args,
        feature_mask,
        n_steps,
        fill,
        fill_value,
        blur_sigma,
        batch_size,
        probabilities,
    )


def area_under_curve(fractions: Tensor, scores: Tensor) -> Tensor:
    r"""Trapezoidal area under each row of a curve over the fraction axis [0, 1].

    .. math::
        \text{AUC} = \sum_{k=1}^{S} \tfrac12 (f_k - f_{k-1})(s_k + s_{k-1})

    Args:
        fractions: N×(S+1) non-decreasing x values (or a 1-D tensor shared by all rows).
        scores: N×(S+1) y values.

    Returns:
        Tensor of N areas.
    """
    if fractions.dim() == 1:
        fractions = fractions.expand_as(scores)
    if fractions.shape != scores.shape or scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(
            f"fractions {tuple(fractions.shape)} and scores {tuple(scores.shape)} must both be "
            "N×(S+1) with at least two points"
        )
    widths = fractions[:, 1:] - fractions[:, :-1]
    if bool((widths < 0).any()):
        raise ValueError("fractions must be non-decreasing along each row")
    return (widths * (scores[:, 1:] + scores[:, :-1]) / 2).sum(dim=1)


def deletion_auc(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    attributions: Tensor,
    target: Any = None,
    **kwargs: Any,
) -> Tensor:
    """Area under the deletion curve (lower is better), one value per image.

    Takes the arguments of :func:`deletion_curve`. With ``probabilities=True`` the area lies
    in [0, 1].

    Example:
        >>> mask = segment(x, n_segments=50)
        >>> attr = SeCam(model, model._bn1).attribute(x, target=3, feature_mask=mask)
        >>> deletion_auc(model, x, attr, target=3, feature_mask=mask, fill="mean")
    """
    curve = deletion_curve(forward_func, inputs, attributions, target, **kwargs)
    return area_under_curve(curve.fractions, curve.scores)


def insertion_auc(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    attributions: Tensor,
    target: Any = None,
    **kwargs: Any,
) -> Tensor:
    """Area under the insertion curve (higher is better), one value per image.

    Takes the arguments of :func:`insertion_curve` (default fill: blur).
    """
    curve = insertion_curve(forward_func, inputs, attributions, target, **kwargs)
    return area_under_curve(curve.fractions, curve.scores)


def aopc(
    forward_func: Callable[..., Any],
    inputs: Tensor,
    attributions: Tensor,
    target: Any = None,
    **kwargs: Any,
) -> Tensor:
    r"""Area over the perturbation curve (Samek et al., 2017), one value per image.

    With :math:`x^{(k)}` the image after ``k`` deletion steps (most relevant first),

    .. math::
        \text{AOPC} = \frac{1}{S+1} \sum_{k=0}^{S} \big(f(x^{(0)}) - f(x^{(k)})\big).

    Higher is better. Averaging over a data set gives the paper's expectation. Takes the
    arguments of :func:`deletion_curve`.
    """
    curve = deletion_curve(forward_func, inputs, attributions, target, **kwargs)
    return (curve.scores[:, :1] - curve.scores).mean(dim=1)


# --------------------------------------------------------------------------------------------
# Localisation
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Model-parameter randomisation
# --------------------------------------------------------------------------------------------


def _ranks(values: Tensor) -> Tensor:
    """Average ranks (1-based, ties share their mean rank) of a 1-D tensor."""
    sorted_values, order = torch.sort(values, stable=True)
    _, inverse, counts = torch.unique_consecutive(
        sorted_values, return_inverse=True, return_counts=True
    )
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(mean_rank[inverse])
    ranks[order] = mean_rank[inverse]
    return ranks


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    denom = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(
        denom > 0,
        (a * b).sum(dim=1) / denom.clamp_min(1e-300),
        torch.full_like(denom, float("nan")),
    )


def rank_correlation(a: Tensor, b: Tensor, method: Similarity = "spearman") -> Tensor:
    """Per-row correlation between two batches of explanations (flattened per image).

    Args:
        a: N×… explanations.
        b: Same shape as ``a``.
        method: ``"spearman"`` (Pearson on average ranks, tie-aware like
            ``scipy.stats.spearmanr``) or ``"pearson"``.

    Returns:
        Float64 tensor of N correlations in [-1, 1]; NaN where a row is constant.
    """
    if a.shape != b.shape or a.dim() < 1:
        raise ValueError(
            f"explanations must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if method not in ("spearman", "pearson"):
        raise ValueError(f"similarity must be 'spearman', 'pearson' or a callable, got {method!r}")
    flat_a = a.detach().reshape(a.shape[0], -1).double()
    flat_b = b.detach().reshape(b.shape[0], -1).double()
    if method == "spearman":
        flat_a = torch.stack([_ranks(row) for row in flat_a])
        flat_b = torch.stack([_ranks(row) for row in flat_b])
    return _pearson(flat_a, flat_b)


def _randomise_module(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise the module's own parameters (not its children's)."""
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        # reset_parameters draws from the global RNG: seed it from our generator, in a fork.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        devices = [p.device for p in module.parameters(recurse=False) if p.device.type == "cuda"]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            reset()
        return
    with torch.no_grad():
        for param in module.parameters(recurse=False):
            std = float(param.std()) if param.numel() > 1 else 1.0
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            param.copy_((float(param.mean()) + (std or 1.0) * noise).to(param.device))


def parameter_randomisation(
    attribute_fn: Callable[[nn.Module, Tensor, Any], Tensor],
    model: nn.Module,
    inputs: Tensor,
    target: Any = None,
    layers: Sequence[str] | None = None,
    similarity: Similarity | Callable[[Tensor, Tensor], Tensor] = "spearman",
    absolute: bool = False,
    seed: int = 0,
) -> list[tuple[str, Tensor]]:
    """Cascading model-parameter randomisation test (Adebayo et al., 2018).

    The layers are re-initialised one after another from the output towards the input (each
    step keeps the earlier randomisations), and after each step the explanation is recomputed
    and compared with the explanation of the trained model. An explanation that stays similar
    does not depend on what the model learned. The user's model is never modified: the test
    runs on a ``copy.deepcopy``; the global RNG state is left untouched.

    Args:
        attribute_fn: ``attribute_fn(model, inputs, target) -> attributions``; it must build its
            explainer on the model it receives (the copy), e.g.
            ``lambda m, x, t: SeCam(m, m._bn1).attribute(x, target=t, feature_mask=mask)``.
        model: The trained model.
        inputs: N×C×H×W images.
        target: Passed to ``attribute_fn`` unchanged (int, list, tensor or ``None``).
        layers: Names (as in ``model.named_modules()``) of the modules to randomise, in the
            order to randomise them; a block (e.g. ``"layer4"``) is randomised with everything
            inside it. Default: every module with parameters of its own that runs while
            explaining, in reverse order of execution (output to input).
        similarity: ``"spearman"`` (default), ``"pearson"`` or a callable ``(a, b) -> N``
            similarities.
        absolute: Compare absolute values of the explanations (Adebayo et al. report both).
        seed: Seed of the randomisation (results are deterministic for a seed).

    Returns:
        ``[(layer_name, similarity)]`` in randomisation order, each similarity a tensor of N
        values (one per image).

    Raises:
        ValueError: Unknown or parameter-less layer names, an unknown similarity, an
            ``attribute_fn`` that never runs the model it receives (it would explain the
            original model instead of the randomised copy), or an attribution whose shape
            changes between calls.

    Example:
        >>> results = parameter_randomisation(
        ...     lambda m, x, t: SeCam(m, m._bn1).attribute(x, target=t, feature_mask=mask),
        ...     model, x, target=3)
        >>> [(name, float(s.mean())) for name, s in results]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be an nn.Module (it is deep-copied), got {type(model).__name__}"
        )
    if not callable(attribute_fn):
        raise TypeError("attribute_fn must be callable as attribute_fn(model, inputs, target)")
    if isinstance(similarity, str) and similarity not in ("spearman", "pearson"):
        raise ValueError(
            f"similarity must be 'spearman', 'pearson' or a callable, got {similarity!r}"
        )
    check_images(inputs)
    if layers is not None and isinstance(layers, str):
        raise TypeError("layers must be a sequence of module names, e.g. ['fc', 'layer4']")
    work = copy.deepcopy(model)
    modules = dict(work.named_modules())
    with_params = [name for name, m in work.named_modules() if _own_parameters(m)]
    if not with_params:
        raise ValueError("the model has no parameters to randomise")
    if layers is not None:
        names = list(layers)
        if not names:
            raise ValueError("layers is empty; pass at least one module name (or None for all)")
        for name in names:
            if name not in modules:
                raise ValueError(
                    f"no module named {name!r} in the model; use names from "
                    f"model.named_modules(), e.g. {with_params[-3:]}"
                )
            if not any(True for _ in modules[name].parameters()):
                raise ValueError(
                    f"module {name!r} has no parameters to randomise; pick one of "
                    f"{with_params[-5:]} or a block that contains some"
                )
        if len(set(names)) != len(names):
            raise ValueError("layers contains duplicates; list each module once")

    def explain() -> Tensor:
        result = attribute_fn(work, inputs, target)
        if isinstance(result, tuple):
            result = result[0]
        if not isinstance(result, Tensor):
            raise TypeError(f"attribute_fn must return a tensor, got {type(result).__name__}")
        result = result.detach()
        if absolute:
            result = result.abs()
        return result

    def compare(a: Tensor, b: Tensor) -> Tensor:
        if a.shape != b.shape:
            raise ValueError(
                f"attribute_fn returned shape {tuple(b.shape)} after randomisation but "
                f"{tuple(a.shape)} before; it must return the same shape every call"
            )
        if callable(similarity):
            return torch.as_tensor(similarity(a, b))
        values = rank_correlation(a, b, similarity)
        if bool(torch.isnan(values).any()):
            warnings.warn(
                "an explanation is constant, so its correlation is undefined (NaN)", stacklevel=3
            )
        return values

    # The reference run records the order in which parametrised modules execute: it gives the
    # output-to-input order, and proves that attribute_fn uses the model it is given.
    called: list[str] = []
    handles = [
        modules[name].register_forward_hook(
            lambda _m, _i, _o, name=name: called.append(name) if name not in called else None
        )
        for name in with_params
    ]
    try:
        reference = explain()
    finally:
        for handle in handles:
            handle.remove()
    if not called:
        raise ValueError(
            "attribute_fn never ran the model it received, so randomising that copy cannot "
            "change its output; build the explainer on the model argument, e.g. "
            "lambda m, x, t: SeCam(m, m.layer4).attribute(x, target=t)"
        )
    if layers is None:
        names = list(reversed(called))

    generator = torch.Generator().manual_seed(seed)
    results: list[tuple[str, Tensor]] = []
    for name in names:
        for sub in modules[name].modules():
            if _own_parameters(sub):
                _randomise_module(sub, generator)
        results.append((name, compare(reference, explain())))
    return results


def _own_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))
