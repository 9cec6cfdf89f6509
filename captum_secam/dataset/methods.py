"""The explanation methods a dataset job can run, each reduced to per-segment scores.

Every method explains one batch of preprocessed images ``x`` (N×C×H×W) on their superpixels
``mask`` (N×1×H×W) and yields, per image, the predicted class and probability, the explained
target and one score per segment:

* ``"secam"``: :class:`~captum_secam.SeCam` (gradient × activation, the paper's map);
* ``"gradcam"``: SeCam with Grad-CAM's channel weights (``base="grad_cam"``);
* ``"lime"``, ``"kernelshap"``, ``"feature_ablation"``, ``"shapley_sampling"``: Captum's
  perturbation methods on the same superpixels (:func:`~captum_secam.interop.captum_attribute`),
  one image at a time with the seed ``params["seed"] + image id``, so an image's result does
  not depend on the batch it lands in;
* any Captum ``Attribution`` instance (e.g. :class:`~captum_secam.cae.CaeCounterfactual` or
  ``IntegratedGradients``): its input-shaped map averaged in each segment; ``method_params``
  are passed to its ``attribute``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from captum.attr import Attribution
from torch import Tensor, nn

from captum_secam.segmentation import segment_counts, segment_means

__all__ = ["METHODS", "BatchExplainer", "MethodSpec", "resolve_method"]

_SECAM_DEFAULTS: dict[str, Any] = {"relu_attributions": False, "interpolate_mode": "bilinear"}
_PERTURBATION_DEFAULTS: dict[str, dict[str, Any]] = {
    "lime": {
        "n_samples": 500,
        "seed": 0,
        "perturbations_per_eval": 16,
        "baselines": 0.0,
        "alpha": 1.0,
        "kernel_width": 0.25,
    },
    "kernelshap": {"n_samples": 500, "seed": 0, "perturbations_per_eval": 16, "baselines": 0.0},
    "feature_ablation": {"perturbations_per_eval": 16, "baselines": 0.0},
    "shapley_sampling": {
        "n_samples": 10,
        "seed": 0,
        "perturbations_per_eval": 16,
        "baselines": 0.0,
    },
}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "secam": _SECAM_DEFAULTS,
    "gradcam": _SECAM_DEFAULTS,
    **_PERTURBATION_DEFAULTS,
}
METHODS: tuple[str, ...] = tuple(_DEFAULTS)


@dataclass(frozen=True)
class MethodSpec:
    """A method with all its parameters filled in (what the output records)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    attribution: Attribution | None = None

    def params_json(self) -> str:
        """Canonical JSON (sorted keys) of the parameters."""
        return json.dumps(self.params, sort_keys=True)


def resolve_method(method: str | Attribution, params: dict[str, Any] | None) -> MethodSpec:
    """Check ``method`` and fill its defaults into ``params``.

    Raises:
        ValueError: Unknown method or parameter, or parameters that are not plain JSON values.
    """
    params = dict(params or {})
    try:
        json.dumps(params, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"method_params must be JSON values (numbers, strings, lists, dicts) so the output "
            f"can record them: {err}"
        ) from err
    if isinstance(method, Attribution):
        return MethodSpec(type(method).__name__, params, method)
    if not isinstance(method, str) or method not in _DEFAULTS:
        raise ValueError(
            f"unknown method {method!r}; choose one of {METHODS} or pass a Captum Attribution "
            "instance (e.g. CaeCounterfactual)"
        )
    defaults = _DEFAULTS[method]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for method {method!r}; it takes {sorted(defaults)}"
        )
    return MethodSpec(method, {**defaults, **params})


@dataclass
class BatchResult:
    """Per image of a batch: prediction, target and per-segment scores (numpy)."""

    predicted_class: np.ndarray
    predicted_probability: np.ndarray
    target: np.ndarray
    target_probability: np.ndarray
    scores: list[np.ndarray]


class BatchExplainer:
    """Runs one method on batches, leaving the model as it found it.

    Args:
        model: The classifier (N×C×H×W → N×classes).
        layer: The layer for ``secam``/``gradcam`` (ignored by the other methods).
        spec: From :func:`resolve_method`.
        target: Class to explain for every image, or ``None`` for each image's prediction.
    """

    def __init__(
        self, model: nn.Module, layer: nn.Module | None, spec: MethodSpec, target: int | None
    ) -> None:
        if spec.name in ("secam", "gradcam") and layer is None:
            raise ValueError(
                f"method {spec.name!r} needs the layer whose map it averages: pass layer=, e.g. "
                "model.layer4 for a ResNet or model._bn1 for EfficientNet-Lite"
            )
        self.model = model
        self.layer = layer
        self.spec = spec
        self.target = target

    def explain(self, x: Tensor, mask: Tensor, image_ids: list[int]) -> BatchResult:
        """Explain a batch; ``image_ids`` seed the sampling methods per image."""
        if self.spec.name in ("secam", "gradcam"):
            logits, scores = self._secam(x, mask)
        else:
            with torch.no_grad():
                logits = self.model(x)
            targets = self._targets(logits)
            if self.spec.attribution is not None:
                scores = self._attribution(x, mask, targets)
            else:
                scores = self._perturbation(x, mask, targets, image_ids)
        return _result(logits.detach(), self._targets(logits), scores, mask)

    def _targets(self, logits: Tensor) -> Tensor:
        n, classes = logits.shape
        if self.target is None:
            return logits.argmax(dim=1)
        if not 0 <= self.target < classes:
            raise ValueError(f"target {self.target} is out of range for {classes} classes")
        return torch.full((n,), self.target, dtype=torch.long, device=logits.device)

    def _secam(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        from captum_secam.secam import SeCam

        assert self.layer is not None
        recorded: list[Tensor] = []
        # The model's own output, caught on SeCam's pass, gives the prediction for free.
        handle = self.model.register_forward_hook(lambda _m, _i, out: recorded.append(out))
        # Only d(score)/d(layer output) is needed: with the parameters frozen, autograd records
        # nothing before the layer (Captum makes the layer output require grad), so the batch
        # keeps no early activations: ~1/3 faster on EfficientNet-Lite0, same values.
        params = [p for p in self.model.parameters() if p.requires_grad]
        try:
            for param in params:
                param.requires_grad_(False)
            secam = SeCam(self.model, self.layer)
            base = "grad_cam" if self.spec.name == "gradcam" else "gradient_x_activation"
            scores = secam.attribute(
                x,
                target=self.target,
                feature_mask=mask,
                base=base,
                return_input_shape=False,
                **self.spec.params,
            )
        finally:
            handle.remove()
            for param in params:
                param.requires_grad_(True)
        assert isinstance(scores, Tensor)
        return recorded[-1].detach(), scores

    def _perturbation(
        self, x: Tensor, mask: Tensor, targets: Tensor, image_ids: list[int]
    ) -> Tensor:
        from captum_secam.interop.captum_methods import captum_attribute

        params = dict(self.spec.params)
        seed = params.pop("seed", None)
        rows = []
        for i, image_id in enumerate(image_ids):
            one = captum_attribute(
                self.spec.name,  # type: ignore[arg-type]
                self.model,
                x[i : i + 1],
                mask[i : i + 1],
                target=int(targets[i]),
                seed=None if seed is None else int(seed) + image_id,
                **params,
            )
            rows.append(one[0])
        return _pad_rows(rows)

    def _attribution(self, x: Tensor, mask: Tensor, targets: Tensor) -> Tensor:
        assert self.spec.attribution is not None
        attr = self.spec.attribution.attribute(x, target=targets, **self.spec.params)
        if isinstance(attr, tuple):
            attr = attr[0]
        if not isinstance(attr, Tensor) or attr.dim() != 4 or attr.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"{self.spec.name}.attribute must return an input-shaped N×C×H×W map, got "
                f"{getattr(attr, 'shape', type(attr))}; use a pixel-level method"
            )
        return segment_means(attr.detach().float(), mask)


def _pad_rows(rows: list[Tensor]) -> Tensor:
    width = max(int(r.shape[0]) for r in rows)
    out = torch.zeros(len(rows), width, dtype=rows[0].dtype, device=rows[0].device)
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = row
    return out


def _result(logits: Tensor, targets: Tensor, scores: Tensor, mask: Tensor) -> BatchResult:
    probabilities = logits.float().softmax(dim=1)
    predicted = probabilities.argmax(dim=1)
    counts = segment_counts(mask).tolist()
    scores_np = scores.detach().float().cpu().numpy()
    return BatchResult(
        predicted_class=predicted.cpu().numpy(),
        predicted_probability=probabilities.gather(1, predicted[:, None])[:, 0].cpu().numpy(),
        target=targets.cpu().numpy(),
        target_probability=probabilities.gather(1, targets[:, None])[:, 0].cpu().numpy(),
        scores=[scores_np[i, : counts[i]] for i in range(len(counts))],
    )


def top_k_ids(scores: np.ndarray, k: int) -> list[int]:
    """Ids of the ``k`` best segments, best first (ties: the lower id first)."""
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    return [int(i) for i in order[:k]]
