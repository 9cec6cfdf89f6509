"""SeCam: Segmentation-CAM (arXiv 2307.04137) as a Captum attribution.

A class activation map is computed once at a chosen layer, brought to the input's positions
(upsampled for images) and averaged inside each segment of a feature mask, giving LIME-like
region scores for the cost of one CAM.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from captum._utils.common import _format_additional_forward_args
from captum._utils.gradient import compute_layer_gradients_and_eval
from captum._utils.typing import TargetType
from captum.attr import Attribution, GradientAttribution, LayerAttribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_secam._validation import (
    PREDICTED,
    TargetError,
    check_finite_float,
    check_images,
    check_layer_in_model,
    check_model_output,
    explain_forward_error,
    image_layout_hint,
    resolve_class_names,
    select_target_scores,
)
from captum_secam.segmentation import scores_to_mask, segment_means, validate_feature_mask

__all__ = ["DEFAULT_SEGMENTATION", "PREDICTED", "SeCam", "TargetError"]

BaseMap = Literal["gradient_x_activation", "grad_cam"]
_BASE_MAPS = ("gradient_x_activation", "grad_cam")
ReshapeTransform = Callable[[Tensor], Tensor]
# Default superpixels when no feature_mask is given. SLIC at <= 128 px with 6 iterations
# differs from full-resolution SLIC about as much as asking for 45 instead of 50 segments
# does (adjusted Rand index ~0.67 vs ~0.66), for ~1/4 of the cost (benchmarks/secam_speed.py).
DEFAULT_SEGMENTATION: dict[str, Any] = {
    "method": "slic",
    "n_segments": 50,
    "working_size": 128,
    "max_num_iter": 6,
}
# 1-D signals interpolate linearly; the 2-D mode names map onto their 1-D counterparts.
_MODES_1D = {"bilinear": "linear", "bicubic": "linear"}
_LAYOUT_HELP = (
    "SeCam explains N×C×H×W images, N×F feature vectors, or N×C×L signals (with a feature_mask)"
)


@dataclass(frozen=True)
class _Layout:
    """An input batch and how SeCam reads it.

    ``kind`` is ``"image"`` (N×C×H×W, positions H×W), ``"signal"`` (N×C×L, positions L) or
    ``"features"`` (N×F, each feature its own position, no channels). Every map and mask is
    handled as N×1×positions.
    """

    inputs: tuple[Tensor, ...]
    is_tuple: bool
    kind: Literal["image", "signal", "features"]

    @property
    def first(self) -> Tensor:
        return self.inputs[0]

    @property
    def n(self) -> int:
        return int(self.first.shape[0])

    @property
    def positions(self) -> tuple[int, ...]:
        shape = tuple(int(s) for s in self.first.shape)
        return shape[1:] if self.kind == "features" else shape[2:]

    @property
    def n_positions(self) -> int:
        return int(torch.tensor(self.positions).prod())

    def flat(self, per_position: Tensor) -> Tensor:
        """An N×1×positions tensor as N×1×1×P, the layout of the segmentation helpers."""
        return per_position.reshape(per_position.shape[0], 1, 1, self.n_positions)


class SeCam(LayerAttribution, GradientAttribution):
    r"""Segmentation-CAM: a class activation map averaged within segments.

    For the target score :math:`y_c` and the activations :math:`A \in \mathbb{R}^{K\times h\times
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

    Beyond images: for N×F inputs (tabular) each feature is a position; a layer without
    positions (N×K) gives every feature the same score :math:`\sum_k G_k A_k` (what
    ``LayerGradCam`` returns for it), so per-feature scores need a base attribution on the
    input (e.g. ``base=InputXGradient(model)``), averaged over the groups of ``feature_mask``.
    N×C×L signals are explained with an explicit ``feature_mask``.

    Args:
        forward_func: The model or any function returning the scores (N×classes, or any
            output Captum's ``target`` can index).
        layer: The module whose output (or input) is explained, usually the last
            convolutional block, e.g. ``model.layer4`` for a ResNet.
        device_ids: Device ids for ``DataParallel`` models when ``forward_func`` is not the
            ``DataParallel`` module itself (as in Captum).
        reshape_transform: Applied to the layer's activations and gradients before the map is
            formed, to bring them to N×K×h×w: :class:`~captum_secam.transforms.TokensToGrid`
            for ViT token sequences, ``channels_last_to_first`` for Swin stages, or
            :func:`~captum_secam.transforms.vit_reshape_transform` to read them off a model.
        class_names: One name per output class, so targets can be given by name
            (``target="tabby"``).

    Example:
        >>> model = torchvision.models.resnet18().eval()
        >>> secam = SeCam(model, model.layer4)
        >>> x = torch.rand(1, 3, 224, 224)
        >>> mask = segment(x, "grid", n_segments=49)
        >>> attr = secam.attribute(x, target=281, feature_mask=mask)   # 1×3×224×224
        >>> scores = secam.attribute(x, 281, feature_mask=mask, return_input_shape=False)
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: nn.Module,
        device_ids: list[int] | None = None,
        *,
        reshape_transform: ReshapeTransform | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        check_layer_in_model(forward_func, layer)
        if reshape_transform is not None and not callable(reshape_transform):
            raise TypeError("reshape_transform must be a callable mapping a tensor to N×K×h×w")
        if class_names is not None and (
            isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names)
        ):
            raise TypeError("class_names must be a sequence of str, one per output class")
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        GradientAttribution.__init__(self, forward_func)
        self.reshape_transform = reshape_transform
        self.class_names = tuple(class_names) if class_names is not None else None

    @property
    def multiplies_by_inputs(self) -> bool:
        """True: both built-in base maps multiply gradient terms by the layer's activations
        (a Captum attribution given as ``base`` brings its own convention)."""
        return True

    @log_usage(part_of_slo=True)
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetType | str | list[str] = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        attr_dim_summation: bool = True,
        grad_kwargs: dict[str, Any] | None = None,
        *,
        feature_mask: Tensor | tuple[Tensor, ...] | None = None,
        base: BaseMap | Attribution = "gradient_x_activation",
        interpolate_mode: str = "bilinear",
        return_input_shape: bool = True,
        segmentation: dict[str, Any] | None = None,
    ) -> Tensor | tuple[Tensor, ...]:
        r"""Explain ``target`` for each example with per-segment CAM scores.

        The first seven arguments are ``LayerGradCam.attribute``'s, in its order; SeCam's own
        come after them, keyword-only.

        Args:
            inputs: N×C×H×W images (as the model takes them, normalised), N×F feature
                vectors, N×C×L signals (with ``feature_mask``), or a tuple of such tensors
                sharing N and the positions.
            target: As in Captum: an int (or a 1-element tensor) for all examples, a list or
                1-D tensor with one per example, a tuple indexing a multi-dimensional output
                (or a list of tuples, one per example). ``None``: the model's single score
                per example when it returns one (Captum's meaning), else each example's
                predicted class, like ``target="predicted"``. With ``class_names``, a class
                name or a list of names. Under NoiseTunnel or perturbation metrics pass an
                explicit target: the predicted class may differ between perturbed copies.
            additional_forward_args: Extra arguments passed to ``forward_func`` after inputs.
            attribute_to_layer_input: Use the layer's input instead of its output.
            relu_attributions: Apply ReLU to the base map (at the layer's resolution, before
                upsampling and averaging), so only positive evidence is kept.
            attr_dim_summation: Must be True: SeCam sums the map over the layer's channels
                (accepted for LayerGradCam compatibility).
            grad_kwargs: Keyword arguments for ``torch.autograd.grad`` (as in Captum).
            feature_mask: Segment ids, integer, contiguous ``0..K_i−1`` per example: for
                images H×W, 1×1×H×W or N×1×H×W (see :func:`~captum_secam.segment`); for
                N×F inputs F, 1×F or N×F (feature groups); for signals L, 1×1×L or N×1×L.
                For tuple inputs one mask (shared) or a tuple with one per input (all equal).
                ``None``: images are segmented with SLIC (``segmentation`` overrides the
                parameters; see :data:`DEFAULT_SEGMENTATION`), each feature of an N×F input
                is its own segment.
            base: ``"gradient_x_activation"`` (the paper's map, CAM for GAP models),
                ``"grad_cam"``, or any Captum attribution instance whose ``attribute(inputs,
                target=..., additional_forward_args=...)`` returns a map over the input (or a
                layer) positions, e.g. ``LayerGradCam``, ``IntegratedGradients``,
                ``InputXGradient``; its channels are summed.
            interpolate_mode: Upsampling of the layer map to the input size (``"bilinear"``,
                ``"nearest"``, ``"bicubic"``, ``"area"``; signals use ``"linear"``).
            return_input_shape: ``True``: a tensor shaped like each input, the segment score
                broadcast over channels. ``False``: per-segment scores N×K (K = largest segment
                count in the batch; entries past an example's own count are 0).
            segmentation: Keyword arguments for :func:`~captum_secam.segment` used when an
                image batch comes without ``feature_mask``.

        Returns:
            Detached attributions on the input's device (a tuple for tuple inputs).

        Raises:
            TargetError: Targets that do not fit the output or the batch (a ``ValueError``
                and an ``AssertionError``, see :class:`~captum_secam.secam.TargetError`).
            ValueError: Bad input layout, NaN/Inf, a mask that does not fit, a channel
                mismatch with the model, or a layer that gets no gradient.
        """
        _check_options(attribute_to_layer_input, attr_dim_summation, base, grad_kwargs)
        layout = _read_layout(inputs, feature_mask)
        mask = self._feature_mask(layout, feature_mask, segmentation)
        args = _format_additional_forward_args(additional_forward_args)
        target = resolve_class_names(target, self.class_names)
        if isinstance(base, Attribution):
            base_map = self._attribution_map(layout, target, args, base, relu_attributions)
        else:
            pairs = self._layer_gradients(
                layout, target, args, attribute_to_layer_input, grad_kwargs
            )
            base_map = self._layer_map(pairs, layout, base, relu_attributions, interpolate_mode)
        return _aggregate(base_map, mask, layout, return_input_shape)

    # ----------------------------------------------------------------------------------------
    # Block 2: the feature mask

    def _feature_mask(
        self, layout: _Layout, feature_mask: Any, segmentation: dict[str, Any] | None
    ) -> Tensor:
        """The N×1×positions mask: the user's (checked), SLIC for images, one per feature."""
        if feature_mask is not None:
            return _validate_masks(feature_mask, layout)
        if layout.kind == "features":
            ids = torch.arange(layout.n_positions, device=layout.first.device)
            return ids.reshape(1, 1, -1).expand(layout.n, -1, -1)
        from captum_secam.segmentation import segment  # scikit-image loads only now

        return segment(layout.first.detach(), **_segmentation_params(segmentation))

    # ----------------------------------------------------------------------------------------
    # Block 1: the base map, N×1×positions

    def _layer_map(
        self,
        pairs: list[tuple[Tensor, Tensor]],
        layout: _Layout,
        base: BaseMap,
        relu: bool,
        interpolate_mode: str,
    ) -> Tensor:
        """Gradient × activation (or Grad-CAM) at the layer, summed over its output tensors."""
        total: Tensor | None = None
        for grad, activation in pairs:
            _check_activation(activation, layout, self.layer, self.reshape_transform)
            layer_map = _channel_map(grad, activation, base)
            layer_map = torch.relu(layer_map) if relu else layer_map
            placed = _to_positions(layer_map, layout, interpolate_mode)
            total = placed if total is None else total + placed
        assert total is not None  # Captum returns at least one tensor per layer
        return total

    def _layer_gradients(
        self,
        layout: _Layout,
        target: Any,
        args: Any,
        attribute_to_layer_input: bool,
        grad_kwargs: dict[str, Any] | None,
    ) -> list[tuple[Tensor, Tensor]]:
        """(gradient, activation) per tensor the layer returns, after ``reshape_transform``."""
        selected = _TargetSelector(self.forward_func, target, layout, self.class_names)
        layer_name = type(self.layer).__name__
        with _restored_requires_grad(layout.inputs):
            try:
                grads, evals = compute_layer_gradients_and_eval(
                    selected,
                    self.layer,
                    layout.inputs,
                    None,
                    args,
                    device_ids=self.device_ids,
                    attribute_to_layer_input=attribute_to_layer_input,
                    grad_kwargs=grad_kwargs,
                )
            except AssertionError as err:
                if "did not obtain any outputs" not in str(err):
                    raise
                raise ValueError(
                    f"layer {layer_name} was never called during the forward pass; pick a "
                    "layer that the model uses"
                ) from err
            except RuntimeError as err:
                message = str(err)
                if "not have been used in the graph" not in message and (
                    "does not require grad" not in message
                ):
                    raise
                raise ValueError(
                    f"the target score received no gradient at layer {layer_name}; pick a "
                    "layer on the path from the input to the scores (not after them, not "
                    "detached)"
                ) from err
        transform = self.reshape_transform or (lambda t: t)
        return [
            (transform(g.detach()), transform(a.detach()))
            for g, a in zip(grads, evals, strict=True)
        ]

    def _attribution_map(
        self, layout: _Layout, target: Any, args: Any, base: Attribution, relu: bool
    ) -> Tensor:
        """A Captum attribution as the base map, channels summed, brought to the positions."""
        with _restored_requires_grad(layout.inputs):  # Captum sets it on the inputs
            attr = base.attribute(
                layout.inputs if layout.is_tuple else layout.first,
                target=self._explicit_target(layout, target, args),
                additional_forward_args=args,
            )
        attr = attr[0] if isinstance(attr, tuple) else attr
        if not isinstance(attr, Tensor) or attr.shape[0] != layout.n:
            raise ValueError(
                f"the base attribution must return one map per example, got "
                f"{getattr(attr, 'shape', type(attr))}"
            )
        attr = attr.detach()
        if layout.kind == "features" and tuple(attr.shape[1:]) == layout.positions:
            attr_map = attr[:, None]  # one score per feature: nothing to sum
        elif attr.dim() == len(layout.positions) + 2 or attr[0].numel() == 1:
            attr_map = attr.sum(dim=1, keepdim=True) if attr.dim() > 1 else attr[:, None]
        else:
            raise ValueError(
                f"the base attribution returned maps of shape {tuple(attr.shape)}, which do "
                f"not fit inputs of shape {tuple(layout.first.shape)}; use a layer or input "
                "attribution method"
            )
        attr_map = torch.relu(attr_map) if relu else attr_map
        return _to_positions(attr_map, layout, "bilinear")

    def _explicit_target(self, layout: _Layout, target: Any, args: Any) -> Any:
        """``None``/``"predicted"`` on an N×classes output become the predicted classes."""
        if target is not None and target != PREDICTED:
            return target
        with torch.no_grad():
            extra = args or ()
            output = check_model_output(self.forward_func(*layout.inputs, *extra), layout.n)
        if output[0].numel() == 1:
            return None
        if output.dim() != 2:
            raise TargetError(
                f"target={target!r} needs N×classes scores, but the output is "
                f"{tuple(output.shape)}; pass a tuple index"
            )
        return output.argmax(dim=1)


# --------------------------------------------------------------------------------------------
# Checks


def _check_options(
    attribute_to_layer_input: Any, attr_dim_summation: Any, base: Any, grad_kwargs: Any
) -> None:
    if not isinstance(attribute_to_layer_input, bool):
        raise TypeError(
            "attribute_to_layer_input must be a bool, got "
            f"{type(attribute_to_layer_input).__name__}; the 4th positional argument follows "
            "LayerGradCam.attribute now: pass the segments as feature_mask=..."
        )
    if attr_dim_summation is not True:
        raise ValueError(
            "SeCam averages one map summed over the layer's channels: attr_dim_summation "
            "must be True (use LayerGradCam for per-channel maps)"
        )
    if isinstance(base, str) and base not in _BASE_MAPS:
        raise ValueError(f"base must be one of {_BASE_MAPS} or a Captum attribution")
    if not isinstance(base, (str, Attribution)):
        raise TypeError(f"base must be one of {_BASE_MAPS} or a Captum attribution instance")
    if grad_kwargs is not None and not isinstance(grad_kwargs, dict):
        raise TypeError("grad_kwargs must be a dict of keyword arguments for torch.autograd.grad")


def _read_layout(inputs: Any, feature_mask: Any) -> _Layout:
    """Check the inputs and decide how to read them (images, features or signals)."""
    is_tuple = isinstance(inputs, tuple)
    tensors: tuple[Any, ...] = inputs if is_tuple else (inputs,)
    if not tensors:
        raise ValueError("inputs is an empty tuple; pass at least one tensor")
    names = [f"inputs[{i}]" if is_tuple else "inputs" for i in range(len(tensors))]
    kind = _layout_kind(tensors[0], names[0], feature_mask)
    for tensor, name in zip(tensors, names, strict=True):
        if kind == "image":
            check_images(tensor, name)
        else:
            _check_tensor(tensor, name, 2 if kind == "features" else 3)
    first = tensors[0]
    skip = 1 if kind == "features" else 2
    for tensor in tensors[1:]:
        if tensor.shape[0] != first.shape[0] or tensor.shape[skip:] != first.shape[skip:]:
            raise ValueError(
                "all input tensors must share the batch size and the positions "
                f"({tuple(first.shape)} vs {tuple(tensor.shape)}) so one feature mask fits "
                "them all"
            )
    return _Layout(tuple(tensors), is_tuple, kind)


def _layout_kind(
    first: Any, name: str, feature_mask: Any
) -> Literal["image", "signal", "features"]:
    if not isinstance(first, Tensor) or first.dim() == 4:
        return "image"  # check_images gives the type error
    if first.dim() == 2:
        return "features"
    if first.dim() == 3 and feature_mask is not None:
        return "signal"
    message = (
        f"{name} is {first.dim()}-D, shape {tuple(first.shape)}; {_LAYOUT_HELP}. As images: "
        f"{image_layout_hint(first)}"
    )
    if first.dim() == 3:
        message += (
            "; for N×C×L signals pass feature_mask (e.g. torch.arange(L)[None, None] for one "
            "segment per position)"
        )
    raise ValueError(message)


def _check_tensor(tensor: Any, name: str, dims: int) -> None:
    if not isinstance(tensor, Tensor) or tensor.dim() != dims:
        shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
        raise ValueError(f"{name} must be {dims}-D like inputs[0], got {shape}; {_LAYOUT_HELP}")
    check_finite_float(tensor, name)


def _validate_masks(feature_mask: Any, layout: _Layout) -> Tensor:
    """One N×1×positions mask from a mask or a tuple of (equal) masks."""
    masks = feature_mask if isinstance(feature_mask, tuple) else (feature_mask,)
    if len(masks) not in (1, len(layout.inputs)):
        raise ValueError(
            f"got {len(masks)} feature masks for {len(layout.inputs)} inputs; pass one mask or "
            "one per input"
        )
    checked = [_validate_mask(m, layout) for m in masks]
    if any(not torch.equal(checked[0], other) for other in checked[1:]):
        raise ValueError(
            "SeCam averages one map over one segmentation: all feature masks of a tuple "
            "input must be equal"
        )
    return checked[0]


def _validate_mask(mask: Any, layout: _Layout) -> Tensor:
    if layout.kind == "image":
        return validate_feature_mask(mask, layout.first)
    tensor = torch.as_tensor(mask) if not isinstance(mask, Tensor) else mask
    positions, n = layout.positions, layout.n
    lead = tensor.shape[: tensor.dim() - len(positions)]
    allowed = {(), (1,), (n,)} if layout.kind == "features" else {(), (1, 1), (n, 1)}
    if tuple(tensor.shape[tensor.dim() - len(positions) :]) != positions or lead not in allowed:
        shapes = "F, 1×F or N×F" if layout.kind == "features" else "L, 1×1×L or N×1×L"
        raise ValueError(
            f"feature_mask must be {shapes} for inputs of shape {tuple(layout.first.shape)}, "
            f"got {tuple(tensor.shape)}"
        )
    flat = tensor.reshape(-1, 1, 1, layout.n_positions)
    view = layout.first.reshape(n, -1)[:, None, None, : layout.n_positions]
    return validate_feature_mask(flat, view).reshape(n, 1, *positions)


def _check_activation(
    activation: Tensor, layout: _Layout, layer: nn.Module, transform: Any
) -> None:
    """The layer's map must have the input's number of position dimensions."""
    wanted = len(layout.positions) + 2 if layout.kind != "features" else 2
    if activation.dim() == wanted:
        return
    name, shape = type(layer).__name__, tuple(activation.shape)
    if layout.kind == "image" and activation.dim() == 3 and transform is None:
        fix = (
            "it looks like a token sequence (N×tokens×dim): pass reshape_transform="
            "TokensToGrid(...) or vit_reshape_transform(model) from captum_secam.transforms"
        )
    elif layout.kind == "image" and activation.dim() == 2:
        fix = "SeCam needs a spatial N×K×h×w feature map, e.g. the last convolutional block"
    else:
        fix = f"SeCam needs a {wanted}-D map for {layout.kind} inputs (N×K×positions)"
    raise ValueError(f"layer {name} produced a {activation.dim()}-D tensor {shape}; {fix}")


# --------------------------------------------------------------------------------------------
# Maps and aggregation


def _channel_map(grad: Tensor, activation: Tensor, base: BaseMap) -> Tensor:
    """Σ_k over the layer's channels: N×1×positions (N×1 for a layer without positions)."""
    if base == "grad_cam" and activation.dim() > 2:
        grad = grad.mean(dim=tuple(range(2, grad.dim())), keepdim=True)
    return (grad * activation).sum(dim=1, keepdim=True)


def _to_positions(layer_map: Tensor, layout: _Layout, interpolate_mode: str) -> Tensor:
    """Bring an N×1×(layer positions) map to N×1×(input positions)."""
    if layout.kind == "features":
        if layer_map.dim() == 3 and layer_map.shape[2] == layout.n_positions:
            return layer_map
        return layer_map.reshape(layout.n, 1, 1).expand(-1, -1, layout.n_positions)
    if tuple(layer_map.shape[2:]) == layout.positions:
        return layer_map
    mode = interpolate_mode
    if layout.kind == "signal":
        mode = _MODES_1D.get(interpolate_mode, interpolate_mode)
    return LayerAttribution.interpolate(layer_map, layout.positions, mode)


def _aggregate(
    base_map: Tensor, mask: Tensor, layout: _Layout, return_input_shape: bool
) -> Tensor | tuple[Tensor, ...]:
    """Block 3: the segment means, per segment (N×K) or painted like each input."""
    flat_mask = layout.flat(mask)
    scores = segment_means(layout.flat(base_map.to(layout.first.device)), flat_mask)
    if not return_input_shape:
        return scores.detach()
    outputs = tuple(
        _paint(scores, flat_mask, tensor, layout.kind).detach() for tensor in layout.inputs
    )
    return outputs if layout.is_tuple else outputs[0]


def _paint(scores: Tensor, flat_mask: Tensor, like: Tensor, kind: str) -> Tensor:
    channels = 1 if kind == "features" else like.shape[1]
    painted = scores_to_mask(scores, flat_mask, n_channels=channels)
    return painted.reshape(like.shape).to(like.dtype).contiguous()


def _segmentation_params(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The default SLIC settings updated by ``overrides``; another method keeps its own."""
    overrides = dict(overrides or {})
    if overrides.get("method", "slic") != "slic":
        return overrides
    return {**DEFAULT_SEGMENTATION, **overrides}


@contextmanager
def _restored_requires_grad(inputs: tuple[Tensor, ...]) -> Iterator[None]:
    """Give leaf inputs back their ``requires_grad`` flags, whatever happens."""
    flags = [t.requires_grad for t in inputs]
    try:
        yield
    finally:
        for tensor, flag in zip(inputs, flags, strict=True):
            if tensor.is_leaf and tensor.requires_grad != flag:
                tensor.requires_grad_(flag)


class _TargetSelector:
    """Wraps the model so its output is the target score of each example.

    Selecting the target inside the forward pass lets one pass serve ``target=None``
    (predicted class) and gives clear errors (channel mismatches, outputs that are not
    tensors, targets that do not fit) before Captum's generic ones.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        target: Any,
        layout: _Layout,
        class_names: Sequence[str] | None,
    ) -> None:
        self.forward_func = forward_func
        self.target = target
        self.layout = layout
        self.class_names = class_names
        # Captum looks for DataParallel's device_ids on the forward function.
        self.device_ids = getattr(forward_func, "device_ids", None)

    def __call__(self, *args: Any) -> Tensor:
        try:
            raw = self.forward_func(*args)
        except RuntimeError as err:
            clear = explain_forward_error(err, self.layout.inputs)
            if clear is None:
                raise
            raise clear from err
        output = check_model_output(raw, self.layout.n)
        return select_target_scores(output, self.target, self.class_names)
