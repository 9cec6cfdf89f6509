"""Faithfulness: does removing what the explanation ranks first hurt the model?

Deletion and insertion curves (:func:`deletion_curve`, :func:`insertion_curve`) with their areas
(:func:`deletion_auc`, :func:`insertion_auc`, :func:`area_under_curve`) after Petsiuk et al.
(RISE, 2018), and :func:`aopc` (Samek et al., 2017), on pixels or, with a ``feature_mask``, on
whole segments; plus the fills that replace the removed pixels (:data:`FILLS`).
"""

from __future__ import annotations

import math
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
    "deletion_auc",
    "deletion_curve",
    "insertion_auc",
    "insertion_curve",
]

FILLS = ("constant", "blur", "mean")
Fill = Literal["constant", "blur", "mean"]
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
