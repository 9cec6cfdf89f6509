"""SeCam: Segmentation-CAM (arXiv 2307.04137) as a Captum attribution.

A class activation map is computed once at a chosen layer, upsampled to the input size and
averaged inside each superpixel, giving LIME-like region scores for the cost of one CAM.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import torch
from captum._utils.common import _format_additional_forward_args
from captum._utils.gradient import compute_layer_gradients_and_eval
from captum._utils.typing import TargetType
from captum.attr import Attribution, GradientAttribution, LayerAttribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_secam._validation import (
    check_classifier_output,
    check_images,
    check_layer_in_model,
    resolve_targets,
)
from captum_secam.segmentation import scores_to_mask, segment, segment_means, validate_feature_mask

__all__ = ["SeCam"]

BaseMap = Literal["gradient_x_activation", "grad_cam"]
_BASE_MAPS = ("gradient_x_activation", "grad_cam")
# Default superpixels when no feature_mask is given. SLIC at <= 128 px with 6 iterations
# differs from full-resolution SLIC about as much as asking for 45 instead of 50 segments
# does (adjusted Rand index ~0.67 vs ~0.66), for ~1/4 of the cost (benchmarks/secam_speed.py).
DEFAULT_SEGMENTATION: dict[str, Any] = {
    "method": "slic",
    "n_segments": 50,
    "working_size": 128,
    "max_num_iter": 6,
}


class SeCam(LayerAttribution, GradientAttribution):
    r"""Segmentation-CAM: a class activation map averaged within superpixels.

    For the target class :math:`c` and the activations :math:`A \in \mathbb{R}^{K\times h\times
    w}` of ``layer``, the base map is (``base="gradient_x_activation"``, the paper's map)

    .. math::
        M_c(x, y) = \sum_k \frac{\partial y_c}{\partial A_k(x, y)} \, A_k(x, y),

    which for a global-average-pool + linear head equals CAM up to :math:`1/(hw)`, with
    :math:`\sum_{x,y} M_c = y_c - b_c`. ``base="grad_cam"`` uses Grad-CAM's channel weights
    :math:`\alpha_k = \frac{1}{hw}\sum_{x,y} \partial y_c / \partial A_k(x,y)` instead. The map is
    upsampled to the input size (:math:`\tilde M_c`) and averaged in each segment :math:`S_j`:

    .. math::
        \text{SeCam}_c(S_j) = \frac{1}{|S_j|} \sum_{(x,y)\in S_j} \tilde M_c(x, y).

    The result is constant on each segment: a region explanation comparable with LIME's, at the
    cost of one forward and one backward pass to ``layer`` plus one segmentation.

    Args:
        forward_func: The model or any function returning N×classes scores.
        layer: The module whose output (or input) is explained, usually the last
            convolutional block, e.g. ``model.layer4`` for a ResNet.
        device_ids: Device ids for ``DataParallel`` models when ``forward_func`` is not the
            ``DataParallel`` module itself (as in Captum).

    Example:
        >>> model = torchvision.models.resnet18().eval()
        >>> secam = SeCam(model, model.layer4)
        >>> x = torch.rand(1, 3, 224, 224)
        >>> attr = secam.attribute(x, target=281)            # 1×3×224×224, piecewise constant
        >>> mask = segment(x, n_segments=50)
        >>> scores = secam.attribute(x, target=281, feature_mask=mask, return_input_shape=False)
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: nn.Module,
        device_ids: list[int] | None = None,
    ) -> None:
        check_layer_in_model(forward_func, layer)
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        GradientAttribution.__init__(self, forward_func)

    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask: Tensor | tuple[Tensor, ...] | None = None,
        base: BaseMap | Attribution = "gradient_x_activation",
        relu_attributions: bool = False,
        interpolate_mode: str = "bilinear",
        attribute_to_layer_input: bool = False,
        return_input_shape: bool = True,
        segmentation: dict[str, Any] | None = None,
    ) -> Tensor | tuple[Tensor, ...]:
        r"""Explain ``target`` for each image with per-superpixel CAM scores.

        Args:
            inputs: N×C×H×W image tensor, or a tuple of such tensors (all with the same H×W),
                as the model takes them (normalised).
            target: Class to explain: an int for all, one int per example (list or tensor),
                or ``None`` for each image's predicted class.
            additional_forward_args: Extra arguments passed to ``forward_func`` after inputs.
            feature_mask: Segment ids, ``torch.long`` shaped H×W, 1×1×H×W or N×1×H×W with
                contiguous ids ``0..K_i−1`` per image (see :func:`~captum_secam.segment`).
                For tuple inputs, one mask (shared) or a tuple with one per input (all equal).
                ``None`` segments the first input with SLIC (``segmentation`` overrides the
                parameters; see :data:`DEFAULT_SEGMENTATION`).
            base: ``"gradient_x_activation"`` (the paper's map, CAM for GAP models),
                ``"grad_cam"``, or any Captum attribution instance whose ``attribute(inputs,
                target=..., additional_forward_args=...)`` returns a 4-D map (e.g.
                ``LayerGradCam``, ``LayerGradientXActivation``, ``IntegratedGradients``); its
                channels are summed.
            relu_attributions: Apply ReLU to the base map before averaging (Grad-CAM style),
                so only positive evidence is kept.
            interpolate_mode: Upsampling of the layer map to the input size (``"bilinear"``,
                ``"nearest"``, ``"bicubic"``, ``"area"``).
            attribute_to_layer_input: Use the layer's input instead of its output.
            return_input_shape: ``True``: a tensor shaped like each input, the segment score
                broadcast over channels. ``False``: per-segment scores N×K (K = largest segment
                count in the batch; entries past an image's own count are 0).
            segmentation: Keyword arguments for :func:`~captum_secam.segment` used when
                ``feature_mask`` is None.

        Returns:
            Detached attributions on the input's device (a tuple for tuple inputs).

        Raises:
            ValueError: Bad image shape, NaN/Inf, a mask that does not fit, targets that do not
                match the batch or the classes, or a layer that gets no gradient.
        """
        is_tuple = isinstance(inputs, tuple)
        input_tuple: tuple[Tensor, ...] = inputs if isinstance(inputs, tuple) else (inputs,)
        if not input_tuple:
            raise ValueError("inputs is an empty tuple; pass at least one N×C×H×W tensor")
        for i, tensor in enumerate(input_tuple):
            check_images(tensor, "inputs" if not is_tuple else f"inputs[{i}]")
        first = input_tuple[0]
        n, _, height, width = first.shape
        for tensor in input_tuple[1:]:
            if tensor.shape[0] != n or tuple(tensor.shape[2:]) != (height, width):
                raise ValueError(
                    "all input tensors must share the batch size and H×W so one segmentation "
                    "fits them all"
                )
        if isinstance(base, str) and base not in _BASE_MAPS:
            raise ValueError(f"base must be one of {_BASE_MAPS} or a Captum attribution")

        pending_mask: Future[Tensor] | None = None
        executor: ThreadPoolExecutor | None = None
        try:
            if feature_mask is None:
                params = _segmentation_params(segmentation)
                if _has_idle_core():
                    # Segmentation does not depend on the CAM: overlap it with the passes.
                    executor = ThreadPoolExecutor(max_workers=1)
                    pending_mask = executor.submit(segment, first.detach(), **params)
                    mask = None
                else:  # a third busy thread next to torch's would slow both down
                    mask = segment(first.detach(), **params)
            else:
                mask = self._validate_masks(feature_mask, input_tuple)
            base_map = self._base_map(
                input_tuple, target, additional_forward_args, base, attribute_to_layer_input
            )
            if pending_mask is not None:
                mask = pending_mask.result()
        finally:
            if executor is not None:
                executor.shutdown(wait=True)
        assert mask is not None

        if relu_attributions:
            base_map = torch.relu(base_map)
        upsampled = LayerAttribution.interpolate(base_map, (height, width), interpolate_mode)
        scores = segment_means(upsampled, mask)
        if not return_input_shape:
            return scores.detach()
        outputs = tuple(
            scores_to_mask(scores, mask, n_channels=t.shape[1]).to(t.dtype).detach().contiguous()
            for t in input_tuple
        )
        return outputs if is_tuple else outputs[0]

    # ----------------------------------------------------------------------------------------

    def _validate_masks(
        self, feature_mask: Tensor | tuple[Tensor, ...], inputs: tuple[Tensor, ...]
    ) -> Tensor:
        masks = feature_mask if isinstance(feature_mask, tuple) else (feature_mask,)
        if len(masks) not in (1, len(inputs)):
            raise ValueError(
                f"got {len(masks)} feature masks for {len(inputs)} inputs; pass one mask or one "
                "per input"
            )
        checked = [validate_feature_mask(m, inputs[0]) for m in masks]
        if any(not torch.equal(checked[0], other) for other in checked[1:]):
            raise ValueError(
                "SeCam averages one map over one segmentation: all feature masks of a tuple "
                "input must be equal"
            )
        return checked[0]

    def _base_map(
        self,
        inputs: tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Any,
        base: BaseMap | Attribution,
        attribute_to_layer_input: bool,
    ) -> Tensor:
        """N×1×h×w map for the targets (h×w: the layer's, or the input's for input methods)."""
        n = inputs[0].shape[0]
        requires_grad = [t.requires_grad for t in inputs]
        try:
            if isinstance(base, Attribution):
                targets = self._targets_for(inputs, target, additional_forward_args)
                attr = base.attribute(
                    inputs if len(inputs) > 1 else inputs[0],
                    target=targets,
                    additional_forward_args=additional_forward_args,
                )
                attr = attr[0] if isinstance(attr, tuple) else attr
                if not isinstance(attr, Tensor) or attr.dim() != 4:
                    raise ValueError(
                        "the base attribution must return an N×C×h×w map for image inputs, got "
                        f"{getattr(attr, 'shape', type(attr))}; use a layer or pixel method"
                    )
                return attr.detach().sum(dim=1, keepdim=True)

            selected = _TargetSelector(self.forward_func, target, n)
            try:
                grads, evals = compute_layer_gradients_and_eval(
                    selected,
                    self.layer,
                    inputs,
                    None,
                    _format_additional_forward_args(additional_forward_args),
                    device_ids=self.device_ids,
                    attribute_to_layer_input=attribute_to_layer_input,
                )
            except AssertionError as err:
                if "did not obtain any outputs" in str(err):
                    raise ValueError(
                        f"layer {type(self.layer).__name__} was never called during the "
                        "forward pass; pick a layer that the model uses"
                    ) from err
                raise
            except RuntimeError as err:
                message = str(err)
                if "not have been used in the graph" in message or "does not require grad" in (
                    message
                ):
                    raise ValueError(
                        f"the target score received no gradient at layer "
                        f"{type(self.layer).__name__}; pick a layer on the path from the input "
                        "to the class scores (not after them, not detached)"
                    ) from err
                raise
        finally:
            for tensor, flag in zip(inputs, requires_grad, strict=True):
                if tensor.is_leaf and tensor.requires_grad != flag:
                    tensor.requires_grad_(flag)

        grad, activation = grads[0], evals[0]
        if activation.dim() != 4:
            raise ValueError(
                f"layer {type(self.layer).__name__} produced a {activation.dim()}-D tensor "
                f"{tuple(activation.shape)}; SeCam needs a spatial N×K×h×w feature map, "
                "e.g. the last convolutional block"
            )
        if base == "grad_cam":
            weights = grad.mean(dim=(2, 3), keepdim=True)
            return (weights * activation).sum(dim=1, keepdim=True).detach()
        return (grad * activation).sum(dim=1, keepdim=True).detach()

    def _targets_for(
        self, inputs: tuple[Tensor, ...], target: TargetType, additional_forward_args: Any
    ) -> Tensor:
        """Resolve targets to class indices, running the model once if needed."""
        n = inputs[0].shape[0]
        with torch.no_grad():
            scores = _call_forward(self.forward_func, inputs, additional_forward_args)
        scores = check_classifier_output(scores, n)
        return resolve_targets(target, n, scores.shape[1], scores)


def _segmentation_params(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The default SLIC settings updated by ``overrides``; another method keeps its own."""
    overrides = dict(overrides or {})
    if overrides.get("method", "slic") != "slic":
        return overrides
    return {**DEFAULT_SEGMENTATION, **overrides}


def _has_idle_core() -> bool:
    """True when torch's intra-op threads leave a core free for the segmenter."""
    return (os.cpu_count() or 1) > torch.get_num_threads()


def _call_forward(
    forward_func: Callable[..., Any], inputs: tuple[Tensor, ...], additional: Any
) -> Any:
    extra = _format_additional_forward_args(additional) or ()
    return forward_func(*inputs, *extra)


class _TargetSelector:
    """Wraps the model so its output is the target score of each example.

    Checking the output and picking the target inside the forward pass lets one pass serve
    ``target=None`` (predicted class) and gives clear errors before Captum's generic ones.
    """

    def __init__(self, forward_func: Callable[..., Any], target: TargetType, batch_size: int):
        self.forward_func = forward_func
        self.target = target
        self.batch_size = batch_size
        self.resolved: Tensor | None = None
        # Captum looks for DataParallel's device_ids on the forward function.
        self.device_ids = getattr(forward_func, "device_ids", None)

    def __call__(self, *args: Any) -> Tensor:
        scores = check_classifier_output(self.forward_func(*args), self.batch_size)
        self.resolved = resolve_targets(self.target, self.batch_size, scores.shape[1], scores)
        return scores.gather(1, self.resolved.to(scores.device)[:, None]).squeeze(1)
