"""Run several explainers on the same image, segmentation and target, and compare them.

:func:`compare_methods` feeds one segmentation to SeCam, Captum's perturbation methods, the
``lime`` package and ``shap``, with the same fill for hidden segments everywhere, and returns a
:class:`ComparisonResult`: per-segment scores, Spearman rank correlations, top-k overlaps, wall
times, a Markdown table and a figure.

Example:
    >>> from captum_secam.demo_model import (
    ...     load_efficientnet_lite0, load_photo, preprocess_photo, resize_photo
    ... )
    >>> model = load_efficientnet_lite0()
    >>> photo = resize_photo(load_photo("chelsea"))
    >>> x = preprocess_photo(photo)
    >>> mask = segment(x, photo=photo, n_segments=50)
    >>> result = compare_methods(model, x, feature_mask=mask, layer=model._bn1, photo=photo,
    ...                          methods=("secam", "captum_lime", "lime", "shap_kernel"),
    ...                          n_samples=100)
    >>> print(result.to_markdown())
    >>> result.plot(out="comparison.png")
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from captum_secam._validation import check_classifier_output, check_images, resolve_targets
from captum_secam.segmentation import (
    scores_to_mask,
    segment,
    segment_counts,
    validate_feature_mask,
)

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "ComparisonResult",
    "compare_methods",
    "spearman",
    "top_k_overlap",
]

METHODS: tuple[str, ...] = (
    "secam",
    "captum_lime",
    "captum_kernelshap",
    "captum_feature_ablation",
    "captum_shapley_sampling",
    "lime",
    "shap_kernel",
    "shap_permutation",
)
DEFAULT_METHODS: tuple[str, ...] = (
    "secam",
    "captum_lime",
    "captum_kernelshap",
    "lime",
    "shap_kernel",
)

_LABELS = {
    "secam": "SeCam",
    "captum_lime": "Captum Lime",
    "captum_kernelshap": "Captum KernelShap",
    "captum_feature_ablation": "Captum FeatureAblation",
    "captum_shapley_sampling": "Captum ShapleyValueSampling",
    "lime": "lime",
    "shap_kernel": "shap Kernel",
    "shap_permutation": "shap Permutation",
}
_SHORT = {
    "secam": "SeCam",
    "captum_lime": "C.Lime",
    "captum_kernelshap": "C.KShap",
    "captum_feature_ablation": "C.Ablation",
    "captum_shapley_sampling": "C.Shapley",
    "lime": "lime",
    "shap_kernel": "shap K",
    "shap_permutation": "shap P",
}


# --------------------------------------------------------------------------------------------
# Agreement measures
# --------------------------------------------------------------------------------------------


def _ranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return np.asarray(rankdata(values), dtype=np.float64)


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation of two score vectors (ties get average ranks).

    Returns ``nan`` when either vector is constant (the correlation is undefined).
    """
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"score vectors differ in length: {x.size} vs {y.size}")
    if x.size < 2:
        raise ValueError("Spearman correlation needs at least 2 segments")
    rx, ry = _ranks(x) - 0.0, _ranks(y) - 0.0
    rx -= rx.mean()
    ry -= ry.mean()
    denom = float(np.sqrt((rx**2).sum() * (ry**2).sum()))
    return float("nan") if denom == 0.0 else float((rx * ry).sum() / denom)


def _top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    # Stable sort on the negated scores: ties go to the lower segment id, deterministically.
    return np.argsort(-scores, kind="stable")[:k]


def top_k_overlap(a: Any, b: Any, k: int) -> float:
    """Fraction of the ``k`` highest-scoring segments that two score vectors share (0..1)."""
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"score vectors differ in length: {x.size} vs {y.size}")
    if not 1 <= k <= x.size:
        raise ValueError(f"k must be in 1..{x.size} (the number of segments), got {k}")
    return len(set(_top_indices(x, k).tolist()) & set(_top_indices(y, k).tolist())) / k


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------


@dataclass
class ComparisonResult:
    """Per-segment scores of several explainers on one image and one segmentation.

    Attributes:
        scores: Method name → float64 vector of K per-segment scores (segment ``j`` at
            index ``j``), in the order the methods ran.
        times: Method name → wall time in seconds.
        target: The explained class.
        feature_mask: The segmentation, long 1×1×H×W with ids 0..K−1.
        image: H×W×3 (or H×W) float image in [0, 1] used for display.
        top_k: ``k`` of :attr:`top_k_overlap`.
        settings: The settings every method shared (samples, fill, kernel width, seed...).
    """

    scores: dict[str, np.ndarray]
    times: dict[str, float]
    target: int
    feature_mask: Tensor
    image: np.ndarray
    top_k: int = 5
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> tuple[str, ...]:
        """The compared method names, in run order."""
        return tuple(self.scores)

    @property
    def n_segments(self) -> int:
        """Number of segments K."""
        return int(self.feature_mask.max()) + 1

    def _pairwise(
        self, fn: Callable[[np.ndarray, np.ndarray], float]
    ) -> dict[str, dict[str, float]]:
        names = self.methods
        return {a: {b: fn(self.scores[a], self.scores[b]) for b in names} for a in names}

    @property
    def spearman(self) -> dict[str, dict[str, float]]:
        """Nested dict ``[method_a][method_b]`` of Spearman rank correlations."""
        return self._pairwise(spearman)

    @property
    def top_k_overlap(self) -> dict[str, dict[str, float]]:
        """Nested dict ``[method_a][method_b]`` of top-``k`` overlaps (fractions)."""
        k = min(self.top_k, self.n_segments)
        return self._pairwise(lambda a, b: top_k_overlap(a, b, k))

    def spearman_matrix(self) -> tuple[tuple[str, ...], np.ndarray]:
        """``(names, M×M array)`` of Spearman correlations."""
        table = self.spearman
        names = self.methods
        return names, np.array([[table[a][b] for b in names] for a in names])

    def to_markdown(self, digits: int = 2) -> str:
        """Markdown tables: wall times, Spearman correlations and top-k overlaps."""
        names = self.methods
        labels = [_LABELS.get(m, m) for m in names]
        fmt = f"{{:.{digits}f}}"
        lines = [
            f"Target class {self.target}, {self.n_segments} segments, "
            + ", ".join(f"{k}={v}" for k, v in self.settings.items()),
            "",
            "| method | wall time (s) |",
            "|---|---:|",
        ]
        lines += [
            f"| {label} | {self.times[m]:.2f} |" for m, label in zip(names, labels, strict=True)
        ]
        for title, table in (
            ("Spearman rank correlation", self.spearman),
            (f"Top-{min(self.top_k, self.n_segments)} overlap", self.top_k_overlap),
        ):
            lines += ["", f"**{title}**", "", "| | " + " | ".join(labels) + " |"]
            lines.append("|---|" + "---:|" * len(names))
            for m, label in zip(names, labels, strict=True):
                cells = ["—" if a == m else fmt.format(table[m][a]) for a in names]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(self, out: str | None = None, panel_size: float = 3.2) -> Any:
        """One figure: the photo, its superpixels, one map per method and the Spearman matrix.

        The maps are drawn with :func:`captum_secam.visualization.plot_method_grid` (Captum's
        ``visualize_image_attr``, blended heat maps, each method scaled by its own largest
        score since the methods have different units), titled with the wall times.

        Args:
            out: Write the figure to this path (PNG, 120 dpi) when given.
            panel_size: Inches per panel.

        Returns:
            The matplotlib ``Figure`` (not attached to pyplot).
        """
        from captum_secam.visualization import plot_method_grid

        names = self.methods
        mask = self.feature_mask[:1].cpu()
        maps = {
            name: scores_to_mask(torch.from_numpy(self.scores[name])[None], mask) for name in names
        }
        n_panels = len(names) + 2
        cols = max(1, math.ceil(math.sqrt(n_panels + 1)))
        while math.ceil(n_panels / cols) * cols <= n_panels:  # leave a spare panel
            cols += 1
        fig = plot_method_grid(
            self.image,
            mask,
            maps,
            titles={m: _LABELS.get(m, m) for m in names},
            timings=self.times,
            suptitle=f"target class {self.target}, {self.n_segments} segments",
            ncols=cols,
            panel_size=panel_size,
        )
        ax = fig.axes[n_panels]
        ax.set_axis_on()
        _, matrix = self.spearman_matrix()
        short = [_SHORT.get(m, m) for m in names]
        image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(names)), short, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), short, fontsize=7)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_title("Spearman rank correlation", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
        fig.tight_layout()
        if out is not None:
            fig.savefig(out, dpi=120)
        return fig


# --------------------------------------------------------------------------------------------
# Running the methods
# --------------------------------------------------------------------------------------------


def _display_image(inputs: Tensor, photo: Any) -> np.ndarray:
    if photo is not None:
        image = np.asarray(photo)
        if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[2] not in (1, 3, 4):
            raise ValueError(
                f"photo of shape {image.shape} looks channels-first; pass it H×W×C "
                "(np.moveaxis(photo, 0, -1))"
            )
        if image.shape[:2] != tuple(inputs.shape[2:]):
            raise ValueError(
                f"photo is {image.shape[0]}×{image.shape[1]} but the input is "
                f"{inputs.shape[2]}×{inputs.shape[3]}; pass the photo resized to the input size"
            )
        is_uint8 = image.dtype == np.uint8
        image = image[..., :3].astype(np.float64)
        if is_uint8 or image.max() > 1.0:  # 0..255 photos
            image = image / 255.0
        return np.clip(image, 0.0, 1.0)
    x = inputs[0].detach().to("cpu", torch.float64)
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
    image = x.permute(1, 2, 0).numpy()
    return image[..., 0] if image.shape[2] == 1 else image[..., :3]


def compare_methods(
    model: Callable[..., Any],
    inputs: Tensor,
    target: int | None = None,
    feature_mask: Any = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    layer: nn.Module | None = None,
    n_samples: int = 1000,
    baseline: Any = 0.0,
    kernel_width: float = 0.25,
    top_k: int = 5,
    photo: Any = None,
    seed: int = 0,
    batch_size: int = 50,
    segmentation: dict[str, Any] | None = None,
) -> ComparisonResult:
    """Explain one image with several methods on one segmentation and compare the rankings.

    Every perturbation method switches segments off by filling them from the same
    ``baseline``, in the model's input space (lime perturbs the model input in H×W×C
    layout, so its ``hide_color`` is literally the same number as Captum's ``baselines``).
    Lime-type surrogates (``captum_lime``, ``lime``) share lime's recipe: weighted Ridge
    (α=1) on the segment on/off vectors with the kernel ``sqrt(exp(-d²/kernel_width²))`` on
    the cosine distance to all-on.

    Methods (``n_samples`` is the model-evaluation budget of each sampling method):

    * ``"secam"`` — :class:`captum_secam.SeCam` at ``layer`` (no sampling).
    * ``"captum_lime"``, ``"captum_kernelshap"`` — Captum ``Lime``/``KernelShap``,
      ``n_samples`` perturbations.
    * ``"captum_feature_ablation"`` — one ablation per segment (K+1 evaluations).
    * ``"captum_shapley_sampling"`` — ``max(1, n_samples // (K+1))`` permutations.
    * ``"lime"`` — ``lime.lime_image`` with ``num_samples=n_samples``.
    * ``"shap_kernel"`` — ``shap.KernelExplainer``, ``nsamples=n_samples``, ``l1_reg=False``.
    * ``"shap_permutation"`` — ``shap.Explainer`` with
      :class:`~captum_secam.interop.shap.SegmentMasker`, ``max_evals=n_samples``.

    Args:
        model: Classifier taking the 1×C×H×W input, returning 1×classes scores.
        inputs: One image as the model takes it, 1×C×H×W.
        target: Class to explain; ``None``: the predicted class.
        feature_mask: Segment ids 0..K−1 (H×W or 1×1×H×W); ``None``: SLIC with 50
            segments on ``photo`` (or on the input), overridable with ``segmentation``.
        methods: Names from :data:`METHODS`, run in this order.
        layer: The layer SeCam explains (required for ``"secam"``), e.g. ``model._bn1``.
        n_samples: Evaluation budget per sampling method.
        baseline: Fill of hidden segments in model-input units: a number (default 0, the
            normalised mean grey for ``(x − 127)/128`` inputs), per-channel values, ``"mean"``
            (the image's mean colour) or ``"segment_mean"`` (each segment's own mean colour,
            lime's ``hide_color=None``). A baseline image is accepted except with ``"lime"``.
        kernel_width: Kernel width of the lime-type surrogates.
        top_k: ``k`` of the top-k overlap.
        photo: The H×W×3 photo at the input size, for display and default segmentation.
        seed: Seed of every sampler.
        batch_size: Images per forward pass.
        segmentation: Keyword arguments for :func:`captum_secam.segment` when
            ``feature_mask`` is None.

    Returns:
        A :class:`ComparisonResult`.

    Raises:
        ValueError: Unknown method, batch larger than one, missing ``layer`` for SeCam.
        ImportError: ``lime``/``shap`` requested but not installed (names the extra).
    """
    methods = _checked_methods(inputs, methods, layer, n_samples, top_k)
    mask = _comparison_mask(inputs, feature_mask, photo, segmentation)
    n_segments = int(segment_counts(mask)[0])
    if n_segments < 2:
        raise ValueError("the segmentation has a single segment; there is nothing to compare")

    with torch.no_grad():
        outputs = check_classifier_output(model(inputs), 1)
    resolved = int(resolve_targets(target, 1, outputs.shape[1], outputs)[0])

    from captum_secam.interop.shap import fill_image

    # One fill image for every method, computed (and checked) before any of them runs.
    fill = fill_image(inputs[0].detach(), mask[0, 0], baseline)[None]
    runner = _MethodRunner(
        model=model,
        inputs=inputs,
        mask=mask,
        n_segments=n_segments,
        target=resolved,
        layer=layer,
        baseline=baseline,
        fill=fill,
        n_samples=n_samples,
        kernel_width=kernel_width,
        seed=seed,
        batch_size=batch_size,
    )
    scores: dict[str, np.ndarray] = {}
    times: dict[str, float] = {}
    for method in methods:
        start = time.perf_counter()
        values = runner.scores(method)
        times[method] = time.perf_counter() - start
        if values.shape != (n_segments,):
            raise RuntimeError(f"{method} returned {values.shape} scores for {n_segments} segments")
        scores[method] = values

    fill_label = baseline if isinstance(baseline, (int, float, str)) else "custom"
    return ComparisonResult(
        scores=scores,
        times=times,
        target=resolved,
        feature_mask=mask.cpu(),
        image=_display_image(inputs, photo),
        top_k=top_k,
        settings={
            "n_samples": n_samples,
            "baseline": fill_label,
            "kernel_width": kernel_width,
            "seed": seed,
        },
    )


def _checked_methods(
    inputs: Tensor, methods: Sequence[str], layer: nn.Module | None, n_samples: int, top_k: int
) -> tuple[str, ...]:
    """``methods`` as a tuple, after checking the arguments of :func:`compare_methods`."""
    check_images(inputs)
    if inputs.shape[0] != 1:
        raise ValueError(
            f"compare_methods explains one image, got a batch of {inputs.shape[0]}; "
            "loop over x[i : i + 1]"
        )
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods has duplicates: {methods}")
    if "secam" in methods and layer is None:
        raise ValueError(
            "SeCam needs the layer to explain: pass layer=..., e.g. layer=model._bn1 for the "
            "demo EfficientNet-Lite0 or model.layer4 for a ResNet"
        )
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    return methods


def _comparison_mask(
    inputs: Tensor, feature_mask: Any, photo: Any, segmentation: dict[str, Any] | None
) -> Tensor:
    """The 1×1×H×W segmentation all methods share: the given mask, or SLIC by default."""
    if feature_mask is None:
        params = {"method": "slic", "n_segments": 50, **(segmentation or {})}
        if photo is not None:
            params["photo"] = photo
        mask = segment(inputs, **params)
    else:
        mask = validate_feature_mask(feature_mask, inputs)
    return mask[:1].contiguous()


@dataclass
class _MethodRunner:
    """What every compared method shares; :meth:`scores` runs one and returns its K scores."""

    model: Callable[..., Any]
    inputs: Tensor
    mask: Tensor
    n_segments: int
    target: int
    layer: nn.Module | None
    baseline: Any
    fill: Tensor
    n_samples: int
    kernel_width: float
    seed: int
    batch_size: int

    def scores(self, method: str) -> np.ndarray:
        run: dict[str, Callable[[], np.ndarray]] = {
            "secam": self._secam,
            "captum_lime": lambda: self._captum("lime", self.n_samples),
            "captum_kernelshap": lambda: self._captum("kernelshap", self.n_samples),
            "captum_feature_ablation": lambda: self._captum("feature_ablation", None),
            "captum_shapley_sampling": lambda: self._captum(
                "shapley_sampling", max(1, self.n_samples // (self.n_segments + 1))
            ),
            "lime": self._lime,
            "shap_kernel": self._shap_kernel,
            "shap_permutation": self._shap_permutation,
        }
        return run[method]()

    def _captum(self, method: str, samples: int | None) -> np.ndarray:
        from captum_secam.interop.captum_methods import captum_attribute

        # A scalar baseline goes to Captum as a number; anything else as the fill image.
        scalar_fill = isinstance(self.baseline, (int, float)) and not isinstance(
            self.baseline, bool
        )
        out = captum_attribute(
            method,  # type: ignore[arg-type]
            self.model,
            self.inputs,
            self.mask,
            self.target,
            n_samples=samples,
            baselines=float(self.baseline) if scalar_fill else self.fill,
            perturbations_per_eval=self.batch_size,
            seed=self.seed,
            kernel_width=self.kernel_width,
        )
        return out[0].detach().cpu().double().numpy()

    def _secam(self) -> np.ndarray:
        from captum_secam.secam import SeCam

        assert self.layer is not None
        out = SeCam(self.model, self.layer).attribute(
            self.inputs, target=self.target, feature_mask=self.mask, return_input_shape=False
        )
        assert isinstance(out, Tensor)
        return out[0].detach().cpu().double().numpy()

    def _lime(self) -> np.ndarray:
        from captum_secam.interop.lime import lime_segment_scores

        if isinstance(self.baseline, Tensor) and self.baseline.dim() >= 3:
            raise ValueError(
                "lime fills hidden segments with one colour: use a number, per-channel "
                "values, 'mean' or 'segment_mean' as baseline when comparing with lime"
            )
        out = lime_segment_scores(
            self.model,
            self.inputs,
            self.mask,
            self.target,
            n_samples=self.n_samples,
            baseline=self.baseline,
            kernel_width=self.kernel_width,
            random_state=self.seed,
            batch_size=self.batch_size,
        )
        return np.asarray(out[0], dtype=np.float64)

    def _shap_kernel(self) -> np.ndarray:
        from captum_secam.interop.shap import shap_explanation_to_scores, shap_kernel_explain

        expl = shap_kernel_explain(
            self.model,
            self.inputs,
            self.mask,
            self.target,
            n_samples=self.n_samples,
            baseline=self.fill[0],
            seed=self.seed,
            batch_size=self.batch_size,
        )
        return shap_explanation_to_scores(expl)[0]

    def _shap_permutation(self) -> np.ndarray:
        from captum_secam.interop.shap import shap_explainer_explain, shap_explanation_to_scores

        expl = shap_explainer_explain(
            self.model,
            self.inputs,
            self.mask,
            self.target,
            max_evals=self.n_samples,
            baseline=self.fill[0],
            seed=self.seed,
            batch_size=self.batch_size,
        )
        return shap_explanation_to_scores(expl)[0]
