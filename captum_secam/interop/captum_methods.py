"""Captum's perturbation methods on one shared segmentation, with defaults that work on images.

Captum's ``Lime``, ``KernelShap``, ``FeatureAblation`` and ``ShapleyValueSampling`` all accept a
``feature_mask`` of superpixels, but their defaults trip over images (SPEC §4): ``Lime``'s Lasso
surrogate (α=0.01) often returns all zeros, masks must be ``torch.long`` N×1×H×W with contiguous
ids, and one model call per perturbation is slow. :func:`captum_attribute` runs each method with:

* the mask validated by :func:`captum_secam.segmentation.validate_feature_mask`;
* for ``"lime"``: the ``lime`` package's recipe — a closed-form weighted ridge surrogate
  (α=1, unpenalised intercept) and the exponential kernel on the cosine distance between the
  perturbation's binary vector and the all-ones vector (width 0.25);
* ``perturbations_per_eval`` batching, a seed (the global RNG is left untouched), and
* one image at a time, so each image has exactly its own ``K_i`` features (no dead features),
  padded with zeros to N×K like :class:`captum_secam.SeCam`.

Example:
    >>> mask = segment(x, n_segments=50)
    >>> scores = captum_attribute("lime", model, x, mask, target=281, n_samples=500)  # N×K
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from captum._utils.models.model import Model
from torch import Tensor
from torch.utils.data import DataLoader

from captum_secam._validation import check_classifier_output, check_images, resolve_targets
from captum_secam.segmentation import (
    scores_to_mask,
    segment_counts,
    segment_means,
    validate_feature_mask,
)

__all__ = [
    "CAPTUM_METHODS",
    "DEFAULT_N_SAMPLES",
    "WeightedRidge",
    "attribution_to_segment_scores",
    "captum_attribute",
    "lime_cosine_kernel",
]

CaptumMethod = Literal["lime", "kernelshap", "feature_ablation", "shapley_sampling"]
CAPTUM_METHODS: tuple[str, ...] = ("lime", "kernelshap", "feature_ablation", "shapley_sampling")
# Samples per image: perturbations for lime/kernelshap, permutations for shapley_sampling
# (each permutation costs K+1 model calls). feature_ablation always makes K+1 calls.
DEFAULT_N_SAMPLES: dict[str, int] = {"lime": 500, "kernelshap": 500, "shapley_sampling": 10}


class WeightedRidge(Model):
    r"""Closed-form weighted ridge regression, a Captum interpretable model.

    Fits :math:`\min_{\beta, b} \sum_i w_i (y_i - x_i^\top\beta - b)^2 + \alpha\|\beta\|^2`
    (intercept not penalised) by solving the normal equations in float64, so it is exact,
    deterministic and needs no scikit-learn. ``alpha=0`` is weighted least squares (solved
    with ``lstsq``, which also handles rank-deficient designs).

    Args:
        alpha: Ridge penalty, ``>= 0``. The ``lime`` package uses 1.0.

    Example:
        >>> import captum.attr
        >>> lime = captum.attr.Lime(model, interpretable_model=WeightedRidge(alpha=1.0))
    """

    def __init__(self, alpha: float = 1.0) -> None:
        if not alpha >= 0.0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self.coef: Tensor | None = None
        self.intercept: Tensor | None = None

    def fit(self, train_data: DataLoader, **kwargs: object) -> dict[str, float]:
        """Fit on (x, y) or (x, y, weight) batches (all of them, concatenated)."""
        xs, ys, ws = [], [], []
        for batch in train_data:
            x, y = batch[0], batch[1]
            w = batch[2] if len(batch) > 2 else torch.ones(x.shape[0])
            xs.append(x.reshape(x.shape[0], -1))
            ys.append(y.reshape(-1))
            ws.append(w.reshape(-1))
        x = torch.cat(xs).double()
        y = torch.cat(ys).double()
        w = torch.cat(ws).double().to(x.device)
        if x.shape[0] != y.shape[0] or y.shape[0] != w.shape[0]:
            raise ValueError(
                f"got {x.shape[0]} samples, {y.shape[0]} targets and {w.shape[0]} weights; "
                "the surrogate needs one scalar model output per perturbation"
            )
        total = w.sum().clamp_min(1e-300)
        x_mean = (w[:, None] * x).sum(0) / total
        y_mean = (w * y).sum() / total
        xc, yc = x - x_mean, y - y_mean
        if self.alpha > 0.0:
            gram = xc.T @ (w[:, None] * xc)
            gram += self.alpha * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
            coef = torch.linalg.solve(gram, xc.T @ (w * yc))
        else:
            root = w.sqrt()
            coef = torch.linalg.lstsq(
                root[:, None] * xc, (root * yc)[:, None], driver="gelsd" if x.is_cpu else None
            ).solution[:, 0]
        self.coef = coef
        self.intercept = y_mean - x_mean @ coef
        residual = y - (x @ coef + self.intercept)
        return {"weighted_mse": float((w * residual**2).sum() / total)}

    def representation(self) -> Tensor:
        """The coefficients, shaped 1×K (float32), as Captum's linear models return them."""
        if self.coef is None:
            raise RuntimeError("call fit() before representation()")
        return self.coef.float()[None, :]

    def __call__(self, x: Any) -> Any:
        if self.coef is None or self.intercept is None:
            raise RuntimeError("call fit() before predicting")
        flat = x.reshape(x.shape[0], -1).double()
        return (flat @ self.coef + self.intercept).to(x.dtype)


def lime_cosine_kernel(kernel_width: float = 0.25) -> Callable[..., Tensor]:
    r"""The ``lime`` package's sample weights, as a Captum ``similarity_func``.

    The distance is the cosine distance :math:`d` between the perturbation's binary vector
    :math:`z` and the all-ones vector (the unperturbed image), i.e.
    :math:`d = 1 - |z|_1/\sqrt{K |z|_1}`, and the weight is :math:`\sqrt{\exp(-d^2/w^2)}`.
    An all-zero :math:`z` gets :math:`d = 1`.
    """
    if not kernel_width > 0.0:
        raise ValueError(f"kernel_width must be > 0, got {kernel_width}")

    def similarity(_original: Any, _perturbed: Any, interpretable: Tensor, **_: Any) -> Tensor:
        z = interpretable.reshape(interpretable.shape[0], -1).double()
        n_on = z.sum(dim=1)
        n_features = z.shape[1]
        cosine = torch.where(
            n_on > 0, n_on / torch.sqrt(n_on * n_features).clamp_min(1e-12), torch.zeros_like(n_on)
        )
        distance = 1.0 - cosine
        return torch.sqrt(torch.exp(-(distance**2) / kernel_width**2)).float()

    return similarity


def _make_attributor(method: str, forward_func: Callable[..., Any], **options: Any) -> Any:
    from captum.attr import FeatureAblation, KernelShap, Lime, ShapleyValueSampling

    if method == "lime":
        return Lime(
            forward_func,
            interpretable_model=WeightedRidge(alpha=options["alpha"]),
            similarity_func=lime_cosine_kernel(options["kernel_width"]),
        )
    if method == "kernelshap":
        attributor = KernelShap(forward_func)
        # Captum's default surrogate is scikit-learn's LinearRegression; the same weighted least
        # squares in closed form needs no scikit-learn and is deterministic.
        attributor.interpretable_model = WeightedRidge(alpha=0.0)
        return attributor
    if method == "feature_ablation":
        return FeatureAblation(forward_func)
    return ShapleyValueSampling(forward_func)


def _baseline_for(baselines: Any, index: int, inputs: Tensor) -> Any:
    if baselines is None:
        return 0.0
    if isinstance(baselines, (int, float)) and not isinstance(baselines, bool):
        return float(baselines)
    if isinstance(baselines, Tensor):
        if baselines.dim() == 0:
            return float(baselines)
        one = inputs.shape[1:]
        if baselines.dim() == 3 and tuple(baselines.shape) == tuple(one):
            return baselines[None].to(inputs.device, inputs.dtype)
        if baselines.dim() == 4 and tuple(baselines.shape[1:]) == tuple(one):
            if baselines.shape[0] == 1:
                return baselines.to(inputs.device, inputs.dtype)
            if baselines.shape[0] == inputs.shape[0]:
                return baselines[index : index + 1].to(inputs.device, inputs.dtype)
        raise ValueError(
            f"baselines of shape {tuple(baselines.shape)} do not fit inputs of shape "
            f"{tuple(inputs.shape)}; pass a number, a C×H×W / 1×C×H×W tensor shared by all "
            "images, or one N×C×H×W tensor"
        )
    raise TypeError(f"baselines must be None, a number or a tensor, got {type(baselines).__name__}")


def captum_attribute(
    method: CaptumMethod,
    forward_func: Callable[..., Any],
    inputs: Tensor,
    feature_mask: Tensor,
    target: Any = None,
    *,
    n_samples: int | None = None,
    baselines: Any = None,
    perturbations_per_eval: int = 16,
    additional_forward_args: Any = None,
    return_input_shape: bool = False,
    seed: int | None = 0,
    alpha: float = 1.0,
    kernel_width: float = 0.25,
    show_progress: bool = False,
) -> Tensor:
    """Run a Captum perturbation method over superpixels with image-friendly defaults.

    Each image is explained on its own (Captum fits one surrogate per image anyway), with
    exactly its ``K_i`` segments as features. Model calls run under ``torch.no_grad()``.

    Args:
        method: ``"lime"``, ``"kernelshap"``, ``"feature_ablation"`` or
            ``"shapley_sampling"``.
        forward_func: The model, returning N×classes scores.
        inputs: N×C×H×W images as the model takes them.
        feature_mask: Segment ids, ``torch.long`` H×W, 1×1×H×W or N×1×H×W, contiguous
            ``0..K_i−1`` per image (e.g. from :func:`captum_secam.segment`).
        target: Class index for all images, one per image, or ``None`` for each image's
            predicted class.
        n_samples: Perturbations per image (lime, kernelshap) or permutations
            (shapley_sampling, each costing ``K_i + 1`` model calls); ignored by
            feature_ablation. Default :data:`DEFAULT_N_SAMPLES`.
        baselines: Value of a switched-off segment: ``None`` (0, the mean colour for inputs
            normalised to zero mean), a number, or a tensor shaped like one image or the batch.
        perturbations_per_eval: Perturbed images per model call (speed vs. memory).
        additional_forward_args: Passed to ``forward_func`` after the inputs.
        return_input_shape: ``False``: per-segment scores N×K (K = the largest segment count,
            padded with 0). ``True``: the scores broadcast onto each segment, N×C×H×W.
        seed: Seed for the sampling methods (``None``: use the current global RNG state).
            The global RNG state is restored afterwards.
        alpha: Ridge penalty of Lime's surrogate.
        kernel_width: Width of Lime's cosine-distance kernel.
        show_progress: Show Captum's progress bars.

    Returns:
        Detached float tensor on the inputs' device.

    Raises:
        ValueError: Unknown method, bad sample counts, a mask that does not fit the inputs.
        TypeError: A non-integer mask or non-tensor inputs.

    Example:
        >>> scores = captum_attribute("kernelshap", model, x, mask, target=281, n_samples=300)
        >>> top = select_top_k(scores, mask, k=4)
    """
    if method not in CAPTUM_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {CAPTUM_METHODS}")
    check_images(inputs)
    mask = validate_feature_mask(feature_mask, inputs)
    if n_samples is None:
        n_samples = DEFAULT_N_SAMPLES.get(method, 0)
    elif method != "feature_ablation" and n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if perturbations_per_eval < 1:
        raise ValueError(f"perturbations_per_eval must be >= 1, got {perturbations_per_eval}")
    n = inputs.shape[0]
    extra = additional_forward_args

    devices = [inputs.device.index or 0] if inputs.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        # One forward pass checks the output and resolves (and range-checks) the targets.
        args = extra if isinstance(extra, tuple) else (() if extra is None else (extra,))
        scores = check_classifier_output(forward_func(inputs, *args), n)
        targets = resolve_targets(target, n, scores.shape[1], scores).tolist()
        attributor = _make_attributor(method, forward_func, alpha=alpha, kernel_width=kernel_width)
        counts = segment_counts(mask)
        width = int(counts.max())
        rows = []
        for i in range(n):
            x_i = inputs[i : i + 1]
            mask_i = mask[i : i + 1]
            extra_i = _slice_extra(extra, i, n)
            kwargs: dict[str, Any] = {
                "baselines": _baseline_for(baselines, i, inputs),
                "target": int(targets[i]),
                "additional_forward_args": extra_i,
                "feature_mask": mask_i,
                "perturbations_per_eval": perturbations_per_eval,
                "show_progress": show_progress,
            }
            if method in ("lime", "kernelshap"):
                out = attributor.attribute(
                    x_i, n_samples=n_samples, return_input_shape=False, **kwargs
                )
                row = out.reshape(-1)
            else:
                if method == "shapley_sampling":
                    kwargs["n_samples"] = n_samples
                out = attributor.attribute(x_i, **kwargs)
                row = attribution_to_segment_scores(out, mask_i, check_constant=True)[0]
            padded = torch.zeros(width, dtype=torch.float32, device=inputs.device)
            padded[: row.numel()] = row.detach().float().to(inputs.device)
            rows.append(padded)
    result = torch.stack(rows)
    if return_input_shape:
        return scores_to_mask(result, mask, n_channels=inputs.shape[1]).contiguous()
    return result


def _slice_extra(extra: Any, index: int, n: int) -> Any:
    """Per-image additional forward args: tensors with a batch dimension of N are sliced."""
    if extra is None:
        return None
    items = extra if isinstance(extra, tuple) else (extra,)
    sliced = tuple(
        item[index : index + 1]
        if isinstance(item, Tensor) and item.dim() > 0 and (item.shape[0] == n)
        else item
        for item in items
    )
    return sliced if isinstance(extra, tuple) else sliced[0]


def attribution_to_segment_scores(
    attributions: Tensor,
    feature_mask: Tensor,
    check_constant: bool = False,
    rtol: float = 1e-4,
) -> Tensor:
    """Per-segment scores N×K from an input-shaped attribution (e.g. Captum's default output).

    A thin wrapper around :func:`captum_secam.segmentation.segment_means` (mean over each
    segment's pixels and the channels).

    Args:
        attributions: N×C×H×W attribution.
        feature_mask: The segmentation it was computed on (H×W, 1×1×H×W or N×1×H×W long).
        check_constant: Verify the attribution is constant on each segment (as Lime,
            KernelShap, FeatureAblation and SeCam outputs with this mask are); a map that is
            not was computed per pixel or on another mask, and a ValueError says so.
        rtol: Tolerance for the check, relative to the largest absolute attribution.

    Returns:
        N×K tensor, padded with 0 past an image's own segment count.
    """
    if not isinstance(attributions, Tensor) or attributions.dim() != 4:
        raise ValueError(
            "attributions must be an N×C×H×W tensor, got "
            f"{getattr(attributions, 'shape', type(attributions).__name__)}"
        )
    values = attributions.detach()
    mask = validate_feature_mask(feature_mask, values)
    scores = segment_means(values, mask)
    if check_constant:
        painted = scores_to_mask(scores, mask, n_channels=values.shape[1])
        scale = float(values.abs().max()) if values.numel() else 0.0
        tolerance = rtol * max(scale, 1e-12)
        worst = float((values - painted).abs().max()) if values.numel() else 0.0
        if worst > tolerance or math.isnan(worst):
            raise ValueError(
                f"the attribution is not constant on the segments of feature_mask (largest "
                f"deviation {worst:.3g} vs tolerance {tolerance:.3g}); it was computed per "
                "pixel or with another mask — pass the mask it was computed with, or use "
                "check_constant=False to average it anyway"
            )
    return scores
