"""Adapters between captum_secam segmentations and ``shap``.

Two ways to get Shapley values of superpixels:

* :func:`shap_kernel_explain` — ``shap.KernelExplainer`` on the *segment-presence game*: the
  features are the K on/off switches of the segments, the background is "all off" (every
  segment replaced by the baseline), and the explained point is "all on". The value of a
  coalition ``z`` is the target score of the image with the switched-off segments filled.
  ``l1_reg=False`` is passed: shap's default keeps only 10 features (SPEC.md §4).
* :func:`shap_explainer_explain` — ``shap.Explainer`` (permutation or exact algorithm) with
  :class:`SegmentMasker`, a masker that hides whole superpixels of a *fixed* segmentation.
  shap's own ``maskers.Image`` partitions the pixel grid instead and ignores superpixels.

Both return a ``shap.Explanation`` with one value per segment (``values`` N×K); convert with
:func:`shap_explanation_to_scores`, :func:`shap_explanation_to_attribution` (Captum-shaped
tensor, constant on segments) and back with :func:`scores_to_shap_explanation` /
:func:`attribution_to_shap_explanation`.

Example:
    >>> mask = segment(x, n_segments=50)
    >>> expl = shap_kernel_explain(model, x, mask, target=281, n_samples=1000)
    >>> scores = shap_explanation_to_scores(expl)          # 1×K numpy
    >>> attr = shap_explanation_to_attribution(expl, mask, n_channels=3)   # 1×3×H×W
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from captum_secam._validation import check_classifier_output, check_images, resolve_targets
from captum_secam.segmentation import (
    scores_to_mask,
    segment_counts,
    segment_means,
    validate_feature_mask,
)

__all__ = [
    "SegmentMasker",
    "attribution_to_shap_explanation",
    "fill_image",
    "scores_to_shap_explanation",
    "segment_presence_fn",
    "shap_explainer_explain",
    "shap_explanation_to_attribution",
    "shap_explanation_to_scores",
    "shap_kernel_explain",
]

_SHAP_HINT = 'the shap adapters need the "shap" extra: pip install "captum-secam[shap]"'


def _import_shap() -> Any:
    """Import ``shap`` or raise an ImportError naming the extra to install."""
    try:
        return importlib.import_module("shap")
    except ImportError as err:
        raise ImportError(f"the shap package is missing; {_SHAP_HINT}") from err


# --------------------------------------------------------------------------------------------
# The segment-presence game (shared by shap, the comparison and the tests)
# --------------------------------------------------------------------------------------------


def fill_image(image: Tensor, feature_mask: Tensor, baseline: Any = 0.0) -> Tensor:
    """The image that replaces switched-off segments, shaped like ``image`` (C×H×W).

    Args:
        image: One model input, C×H×W.
        feature_mask: Its segmentation, H×W long ids 0..K−1.
        baseline: A number (fill value in model-input units, e.g. 0 = the normalised mean),
            per-channel values (sequence or tensor of C), ``"mean"`` (the image's per-channel
            mean), ``"segment_mean"`` (each segment filled with its own mean colour, lime's
            ``hide_color=None``), or a baseline image C×H×W / 1×C×H×W.

    Returns:
        C×H×W tensor on ``image``'s device and dtype.
    """
    c, h, w = image.shape
    if isinstance(baseline, str):
        if baseline == "mean":
            return image.mean(dim=(1, 2), keepdim=True).expand(c, h, w).clone()
        if baseline == "segment_mean":
            out = torch.empty_like(image)
            for ch in range(c):
                means = segment_means(image[None, ch : ch + 1], feature_mask[None, None])
                out[ch] = scores_to_mask(means, feature_mask[None, None])[0, 0]
            return out
        raise ValueError(
            f"unknown baseline {baseline!r}; use a number, per-channel values, 'mean', "
            "'segment_mean' or a baseline image"
        )
    fill = torch.as_tensor(
        baseline.detach() if isinstance(baseline, Tensor) else np.asarray(baseline, dtype=float),
        dtype=image.dtype,
        device=image.device,
    )
    if fill.dim() == 0:
        return torch.full_like(image, float(fill))
    if fill.dim() == 1 and fill.numel() == c:
        return fill[:, None, None].expand(c, h, w).clone()
    if fill.dim() == 4 and fill.shape[0] == 1:
        fill = fill[0]
    if fill.dim() == 3:
        try:
            return fill.expand(c, h, w).clone()
        except RuntimeError:
            pass
    raise ValueError(
        f"baseline of shape {tuple(fill.shape)} does not fit an image of shape {(c, h, w)}; "
        "pass a number, C per-channel values or a C×H×W image"
    )


def segment_presence_fn(
    model: Callable[..., Any],
    image: Tensor,
    feature_mask: Tensor,
    target: int,
    baseline: Any = 0.0,
    batch_size: int = 50,
) -> Callable[[np.ndarray], np.ndarray]:
    """The segment-presence game of one image: ``z`` (M×K 0/1) → M target scores.

    Row ``z`` keeps segment ``j`` where ``z[j] = 1`` and fills it from
    :func:`fill_image` where ``z[j] = 0``; the model's output for ``target`` is returned.

    Args:
        model: Classifier taking N×C×H×W.
        image: One model input, C×H×W (or 1×C×H×W).
        feature_mask: H×W (or 1×1×H×W) ids 0..K−1.
        target: Class index.
        baseline: Fill, see :func:`fill_image`.
        batch_size: Composited images per forward pass.
    """
    if image.dim() == 4:
        image = image[0]
    mask = validate_feature_mask(feature_mask, image[None])[0, 0]
    n_segments = int(mask.max()) + 1
    filled = fill_image(image, mask, baseline)
    flat_ids = mask.reshape(-1)

    def game(z: np.ndarray) -> np.ndarray:
        z = np.asarray(z)
        if z.ndim == 1:
            z = z[None]
        if z.ndim != 2 or z.shape[1] != n_segments:
            raise ValueError(
                f"segment-presence vectors must be M×{n_segments}, got shape {z.shape}"
            )
        keep_all = torch.as_tensor(z != 0, device=image.device)
        outputs = []
        with torch.no_grad():
            for start in range(0, len(z), batch_size):
                keep = keep_all[start : start + batch_size][:, flat_ids]
                keep = keep.reshape(-1, 1, *image.shape[1:])
                batch = torch.where(keep, image[None], filled[None])
                scores = check_classifier_output(model(batch), batch.shape[0])
                outputs.append(scores[:, target].detach().to("cpu", torch.float64).numpy())
        return np.concatenate(outputs) if outputs else np.zeros(0)

    return game


# --------------------------------------------------------------------------------------------
# shap.Explainer with a fixed segmentation
# --------------------------------------------------------------------------------------------


class SegmentMasker:
    """A shap masker that hides whole superpixels of one fixed segmentation.

    shap calls ``masker(mask, x)`` with a boolean vector of K entries (True = keep) and one
    C×H×W image ``x``; the masker returns that image with the hidden segments filled from
    ``baseline``. ``shape`` and :meth:`mask_shapes` tell shap there are K features, so the
    resulting ``Explanation.values`` hold one value per segment, in segment-id order.

    Args:
        feature_mask: H×W (or 1×1×H×W) ids 0..K−1.
        baseline: Fill, see :func:`fill_image` (``"mean"`` and ``"segment_mean"`` are computed
            from each explained image).

    Example:
        >>> import shap
        >>> def f(images):  # N×C×H×W numpy -> N×classes probabilities
        ...     with torch.no_grad():
        ...         return model(torch.as_tensor(images)).softmax(-1).numpy()
        >>> masker = SegmentMasker(mask, baseline=0.0)
        >>> explainer = shap.Explainer(f, masker, algorithm="permutation")
        >>> explanation = explainer(x.numpy(), max_evals=100)   # values: N×K
    """

    def __init__(self, feature_mask: Any, baseline: Any = 0.0) -> None:
        mask = torch.as_tensor(
            feature_mask if isinstance(feature_mask, Tensor) else np.asarray(feature_mask)
        )
        while mask.dim() > 2 and mask.shape[0] == 1:
            mask = mask[0]
        if mask.dim() != 2:
            raise ValueError(
                f"SegmentMasker takes one segmentation shaped H×W, got {tuple(mask.shape)}"
            )
        self._mask = validate_feature_mask(mask, torch.empty(1, 1, *mask.shape))[0, 0].cpu()
        self.n_segments = int(self._mask.max()) + 1
        self.baseline = baseline
        self.shape = (1, self.n_segments)
        self.feature_names = [f"segment {j}" for j in range(self.n_segments)]

    @property
    def segmentation(self) -> np.ndarray:
        """The H×W int64 segment ids."""
        return self._mask.numpy().copy()

    def mask_shapes(self, *args: Any) -> list[tuple[int, ...]]:
        """One mask of K entries per explained image."""
        return [(self.n_segments,)]

    def __call__(self, mask: Any, x: Any) -> np.ndarray:
        """Return ``x`` (C×H×W) with the segments whose mask entry is False filled, as 1×C×H×W."""
        image = torch.as_tensor(np.asarray(x))
        if image.dim() != 3 or tuple(image.shape[1:]) != tuple(self._mask.shape):
            raise ValueError(
                f"SegmentMasker expects C×H×W images with H×W = {tuple(self._mask.shape)}, got "
                f"{tuple(image.shape)}; pass model inputs (N×C×H×W numpy) to the explainer"
            )
        if mask is True or mask is False:
            mask = np.full(self.n_segments, bool(mask))
        keep = torch.as_tensor(np.asarray(mask, dtype=bool))
        if keep.shape != (self.n_segments,):
            raise ValueError(f"expected a mask of {self.n_segments} entries, got {keep.shape}")
        filled = fill_image(image, self._mask, self.baseline)
        out = torch.where(keep[self._mask][None], image, filled)
        return out[None].numpy()


def _model_target_fn(
    model: Callable[..., Any],
    targets: Tensor,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int,
) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy → numpy function giving the target scores (N×1) for shap.Explainer.

    shap.Explainer evaluates masked copies of one image at a time, so all rows share the
    target of the image being explained; it is tracked through ``current``.
    """
    state = {"target": int(targets[0])}

    def f(batch: np.ndarray) -> np.ndarray:
        outputs = []
        with torch.no_grad():
            for start in range(0, len(batch), batch_size):
                chunk = torch.as_tensor(np.asarray(batch[start : start + batch_size]))
                scores = check_classifier_output(
                    model(chunk.to(device=device, dtype=dtype)), chunk.shape[0]
                )
                outputs.append(scores[:, state["target"]].to("cpu", torch.float64).numpy())
        return np.concatenate(outputs)

    f.state = state  # type: ignore[attr-defined]
    return f


def _resolve(
    model: Callable[..., Any], inputs: Tensor, feature_mask: Any, target: Any
) -> tuple[Tensor, Tensor, int]:
    check_images(inputs)
    n = inputs.shape[0]
    masks = validate_feature_mask(feature_mask, inputs)
    with torch.no_grad():
        outputs = check_classifier_output(model(inputs), n)
    targets = resolve_targets(target, n, outputs.shape[1], outputs)
    return masks, targets, int(segment_counts(masks).max())


class _GlobalNumpySeed:
    """Seed numpy's global RNG (used by shap's samplers) and restore it afterwards."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self.state: Any = None

    def __enter__(self) -> None:
        if self.seed is not None:
            self.state = np.random.get_state()  # noqa: NPY002 (shap samples from it)
            np.random.seed(self.seed)  # noqa: NPY002

    def __exit__(self, *exc: Any) -> None:
        if self.state is not None:
            np.random.set_state(self.state)  # noqa: NPY002


def shap_kernel_explain(
    model: Callable[..., Any],
    inputs: Tensor,
    feature_mask: Any,
    target: int | Sequence[int] | Tensor | None = None,
    *,
    n_samples: int = 1000,
    baseline: Any = 0.0,
    l1_reg: Any = False,
    seed: int | None = 0,
    batch_size: int = 50,
) -> Any:
    """Kernel SHAP over segment presence: Shapley values of the superpixels.

    For each image, ``shap.KernelExplainer`` explains the all-on vector against the all-off
    background of the game from :func:`segment_presence_fn`, so
    ``sum_j values[j] = f(image) − f(all segments filled)`` (shap's efficiency constraint).

    Args:
        model: Classifier taking N×C×H×W.
        inputs: N×C×H×W model input.
        feature_mask: Segment ids 0..K−1, H×W, 1×1×H×W or N×1×H×W.
        target: Class per image, or ``None`` for the predicted class.
        n_samples: shap's ``nsamples`` (model evaluations per image).
        baseline: Fill of switched-off segments, see :func:`fill_image`.
        l1_reg: shap's feature selection; ``False`` (default here) keeps all K segments.
            shap's own default ``"num_features(10)"`` zeroes all but 10.
        seed: Seed for shap's sampler (numpy's global RNG, restored afterwards); ``None``
            leaves the RNG alone.
        batch_size: Images per forward pass.

    Returns:
        ``shap.Explanation`` with ``values`` N×K (segment ``j`` in column ``j``; zero-padded
        past an image's own count), ``base_values`` N (score with everything filled) and
        ``data`` N×K (all ones: every segment present).

    Raises:
        ImportError: shap is not installed (``pip install "captum-secam[shap]"``).
    """
    shap = _import_shap()
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}")
    masks, targets, k_max = _resolve(model, inputs, feature_mask, target)
    n = inputs.shape[0]
    values = np.zeros((n, k_max))
    base_values = np.zeros(n)
    for i in range(n):
        k = int(masks[i].max()) + 1
        game = segment_presence_fn(
            model, inputs[i], masks[i, 0], int(targets[i]), baseline, batch_size
        )
        explainer = shap.KernelExplainer(game, np.zeros((1, k)))
        with _GlobalNumpySeed(None if seed is None else seed + i):
            phi = explainer.shap_values(
                np.ones((1, k)), nsamples=n_samples, l1_reg=l1_reg, silent=True
            )
        phi = np.asarray(phi, dtype=np.float64).reshape(-1)
        if phi.shape[0] != k:  # shap changed its output layout: fail loudly, never misplace
            raise RuntimeError(
                f"shap.KernelExplainer returned {phi.shape[0]} values for {k} segments; this "
                "shap version's output layout is not supported"
            )
        values[i, :k] = phi
        base_values[i] = float(np.asarray(explainer.expected_value).reshape(-1)[0])
    return shap.Explanation(
        values=values,
        base_values=base_values,
        data=np.ones((n, k_max)),
        feature_names=[f"segment {j}" for j in range(k_max)],
    )


def shap_explainer_explain(
    model: Callable[..., Any],
    inputs: Tensor,
    feature_mask: Any,
    target: int | Sequence[int] | Tensor | None = None,
    *,
    max_evals: int = 1000,
    baseline: Any = 0.0,
    algorithm: str = "permutation",
    seed: int | None = 0,
    batch_size: int = 50,
) -> Any:
    """``shap.Explainer`` with a :class:`SegmentMasker`: Shapley values of the superpixels.

    Args:
        model: Classifier taking N×C×H×W.
        inputs: N×C×H×W model input.
        feature_mask: Segment ids 0..K−1, H×W or 1×1×H×W (one segmentation for the batch) or
            N×1×H×W (each image explained with its own masker).
        target: Class per image, or ``None`` for the predicted class.
        max_evals: Model evaluations per image (permutation needs at least 2K+1; exact needs
            2^K).
        baseline: Fill of hidden segments, see :func:`fill_image`.
        algorithm: ``"permutation"`` (default, antithetic permutation sampling) or
            ``"exact"`` (small K only).
        seed: Seed for the permutation sampler.
        batch_size: Images per forward pass.

    Returns:
        ``shap.Explanation`` with ``values`` N×K, ``base_values`` N and ``data`` the images
        (N×C×H×W).
    """
    shap = _import_shap()
    if algorithm not in ("permutation", "exact"):
        raise ValueError(
            f"algorithm must be 'permutation' or 'exact', got {algorithm!r} (shap's partition "
            "algorithm needs a pixel clustering, not a fixed segmentation)"
        )
    masks, targets, k_max = _resolve(model, inputs, feature_mask, target)
    n = inputs.shape[0]
    if algorithm == "permutation" and max_evals < 2 * k_max + 1:
        raise ValueError(
            f"max_evals={max_evals} is too low for {k_max} segments with the permutation "
            f"algorithm; pass at least {2 * k_max + 1}"
        )
    values = np.zeros((n, k_max))
    base_values = np.zeros(n)
    data = inputs.detach().cpu().numpy()
    f = _model_target_fn(model, targets, inputs.device, inputs.dtype, batch_size)
    for i in range(n):
        k = int(masks[i].max()) + 1
        masker = SegmentMasker(masks[i, 0], baseline)
        kwargs = {"seed": seed} if algorithm == "permutation" else {}
        explainer = shap.Explainer(
            f, masker, algorithm=algorithm, feature_names=masker.feature_names, **kwargs
        )
        f.state["target"] = int(targets[i])  # type: ignore[attr-defined]
        explanation = explainer(
            data[i : i + 1], max_evals=max_evals, batch_size=batch_size, silent=True
        )
        row = np.asarray(explanation.values, dtype=np.float64).reshape(-1)
        if row.shape[0] != k:
            raise RuntimeError(
                f"shap.Explainer returned {row.shape[0]} values for {k} segments; this shap "
                "version's output layout is not supported"
            )
        values[i, :k] = row
        base_values[i] = float(np.asarray(explanation.base_values).reshape(-1)[0])
    return shap.Explanation(
        values=values,
        base_values=base_values,
        data=data,
        feature_names=[f"segment {j}" for j in range(k_max)],
    )


# --------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------


def shap_explanation_to_scores(explanation: Any) -> np.ndarray:
    """``shap.Explanation`` (values N×K or K) → N×K float64 per-segment scores."""
    values = np.asarray(getattr(explanation, "values", explanation), dtype=np.float64)
    if values.ndim == 1:
        values = values[None]
    if values.ndim != 2:
        raise ValueError(
            f"expected per-segment values shaped N×K, got {values.shape}; explain one output "
            "(the target class) with the segment adapters of this module"
        )
    return values.copy()


def scores_to_shap_explanation(scores: Any, base_values: Any = None, data: Any = None) -> Any:
    """Per-segment scores (N×K or K) → ``shap.Explanation`` named ``segment 0..K−1``."""
    shap = _import_shap()
    values = np.asarray(
        scores.detach().cpu().numpy() if isinstance(scores, Tensor) else scores, dtype=np.float64
    )
    if values.ndim == 1:
        values = values[None]
    if values.ndim != 2:
        raise ValueError(f"scores must be N×K or K, got shape {values.shape}")
    n, k = values.shape
    base = np.zeros(n) if base_values is None else np.asarray(base_values, dtype=np.float64)
    return shap.Explanation(
        values=values.copy(),
        base_values=base,
        data=np.ones((n, k)) if data is None else data,
        feature_names=[f"segment {j}" for j in range(k)],
    )


def shap_explanation_to_attribution(
    explanation: Any, feature_mask: Any, n_channels: int = 1
) -> Tensor:
    """``shap.Explanation`` → Captum-shaped N×n_channels×H×W tensor, constant on segments."""
    scores = torch.from_numpy(shap_explanation_to_scores(explanation))
    mask = torch.as_tensor(
        feature_mask if isinstance(feature_mask, Tensor) else np.asarray(feature_mask)
    )
    if mask.dim() == 2:
        mask = mask[None, None]
    mask = validate_feature_mask(mask, torch.empty(scores.shape[0], 1, *mask.shape[-2:]))
    if int(segment_counts(mask).max()) != scores.shape[1]:
        raise ValueError(
            f"the explanation has {scores.shape[1]} segment values but feature_mask has "
            f"{int(segment_counts(mask).max())} segments; use the segmentation it explains"
        )
    return scores_to_mask(scores.to(mask.device), mask, n_channels=n_channels)


def attribution_to_shap_explanation(attribution: Tensor, feature_mask: Any) -> Any:
    """Captum-shaped attribution (constant on segments) → ``shap.Explanation`` (N×K values).

    Raises:
        ValueError: The attribution is not constant on the segments (it is not a per-segment
            explanation of this segmentation).
    """
    if attribution.dim() != 4:
        raise ValueError(f"attribution must be N×C×H×W, got shape {tuple(attribution.shape)}")
    mask = validate_feature_mask(feature_mask, attribution)
    scores = segment_means(attribution.detach(), mask)
    repainted = scores_to_mask(scores, mask, n_channels=attribution.shape[1])
    tol = 1e-5 * max(1.0, float(attribution.abs().max()))
    if float((repainted - attribution.detach()).abs().max()) > tol:
        raise ValueError(
            "the attribution is not constant on the segments of feature_mask; pass the "
            "per-segment output of a method run with this feature_mask"
        )
    return scores_to_shap_explanation(scores)
