"""Input checks shared by every attributor: each error says what to change.

Errors about targets are :class:`TargetError`, which is both a ``ValueError`` (what users catch
for a bad argument) and an ``AssertionError`` (what Captum raises for a wrong target, and what
Captum's generic test harness expects).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "PREDICTED",
    "TargetError",
    "check_classifier_output",
    "check_images",
    "check_layer_in_model",
    "check_model_output",
    "explain_forward_error",
    "image_layout_hint",
    "resolve_class_names",
    "resolve_targets",
    "select_target_scores",
]

# Channel counts that a channels-last image tensor typically ends with.
_IMAGE_CHANNELS = (1, 2, 3, 4)
# ``target="predicted"``: explain each example's top-scoring class (same as None on N×K).
PREDICTED = "predicted"
_CHANNEL_ERROR = re.compile(r"expected input\[(.*?)\] to have (\d+) channels, but got (\d+)")


class TargetError(ValueError, AssertionError):
    """A target that does not fit the model output (count, range, type or shape).

    A ``ValueError`` for users (``except ValueError`` catches it) and an ``AssertionError``
    for Captum's conventions: Captum asserts on wrong targets, and its generic harness
    (``test_hook_removal``) expects an ``AssertionError``.
    """


def check_images(images: Any, name: str = "inputs") -> Tensor:
    """Check that ``images`` is a finite floating N×C×H×W tensor and return it."""
    if not isinstance(images, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor shaped N×C×H×W, got {type(images).__name__}; "
            "convert numpy images with torch.from_numpy(img).permute(2, 0, 1)[None]"
        )
    if images.dim() != 4:
        raise ValueError(
            f"{name} must be 4-D (N×C×H×W), got {images.dim()}-D shape "
            f"{tuple(images.shape)}; {image_layout_hint(images)}"
        )
    n_channels, last = images.shape[1], images.shape[3]
    if n_channels not in _IMAGE_CHANNELS and last in _IMAGE_CHANNELS and images.shape[2] > last:
        raise ValueError(
            f"{name} of shape {tuple(images.shape)} looks channels-last (N×H×W×C); "
            "image tensors must be channels-first: use x.permute(0, 3, 1, 2)"
        )
    check_finite_float(images, name)
    return images


def check_finite_float(tensor: Tensor, name: str) -> None:
    """Raise unless ``tensor`` is floating point and finite."""
    if not tensor.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got {tensor.dtype}; "
            "convert with x.float() (and normalise as your model expects)"
        )
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(
            f"{name} contains NaN or Inf values; clean the inputs before explaining "
            "(e.g. torch.nan_to_num) — explanations of non-finite inputs are meaningless"
        )


def image_layout_hint(images: Tensor) -> str:
    """How to turn a wrongly shaped image tensor into N×C×H×W."""
    if images.dim() == 3:
        first, last = images.shape[0], images.shape[2]
        if last in _IMAGE_CHANNELS and first not in _IMAGE_CHANNELS:
            return (
                "it looks like one H×W×C image: make it 1×C×H×W with "
                "x.permute(2, 0, 1).unsqueeze(0)"
            )
        return "it looks like one C×H×W image: add a batch dimension with x.unsqueeze(0)"
    if images.dim() == 2:
        return "one grayscale H×W image becomes 1×1×H×W with x[None, None]"
    return "pass a batch of images shaped N×C×H×W"


def check_layer_in_model(forward_func: Callable[..., Any], layer: nn.Module) -> None:
    """Reject a layer that is not a submodule of ``forward_func`` (when it is a module)."""
    if not isinstance(layer, nn.Module):
        raise TypeError(f"layer must be an nn.Module inside the model, got {type(layer).__name__}")
    model = forward_func if isinstance(forward_func, nn.Module) else None
    if model is None:
        owner = getattr(forward_func, "__self__", None)
        model = owner if isinstance(owner, nn.Module) else None
    if model is not None and not any(m is layer for m in model.modules()):
        raise ValueError(
            f"layer {type(layer).__name__} is not part of the model "
            f"{type(model).__name__}; pass a submodule of the same model instance, "
            "e.g. model.layer4 (not a layer of a copy of the model)"
        )


def explain_forward_error(err: RuntimeError, inputs: Sequence[Tensor]) -> ValueError | None:
    """A clear error for a forward pass that failed on the input layout, else None.

    Recognises PyTorch's convolution channel mismatch: a grayscale image given to an RGB
    model, an RGB image to a grayscale model, or an H×W×C tensor read as channels-first.
    """
    found = _CHANNEL_ERROR.search(str(err))
    if found is None:
        return None
    expected, got = int(found.group(2)), int(found.group(3))
    shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
    first = inputs[0] if inputs else None
    if first is not None and first.dim() in (3, 4) and first.shape[-1] == expected:
        fix = "the tensor looks channels-last (H×W×C); make it N×C×H×W with " + (
            "x.permute(2, 0, 1).unsqueeze(0)" if first.dim() == 3 else "x.permute(0, 3, 1, 2)"
        )
    elif got == 1 and expected == 3:
        fix = "repeat the grayscale channel: x.expand(-1, 3, -1, -1) (then normalise as for RGB)"
    elif got == 3 and expected == 1:
        fix = "convert to grayscale first, e.g. x.mean(dim=1, keepdim=True)"
    else:
        fix = f"give the model N×{expected}×H×W images"
    return ValueError(
        f"the model expects {expected}-channel input but got {got} channels (inputs shaped "
        f"{shapes}); {fix}"
    )


def check_model_output(output: Any, batch_size: int) -> Tensor:
    """Check that a model output is a tensor with one row per example and return it.

    Hugging Face ``ModelOutput`` objects, dicts and tuples are refused with the one-line
    wrapper that makes the model return its scores.
    """
    if not isinstance(output, Tensor):
        raise TypeError(_output_wrapper_hint(output))
    if output.dim() == 0 or output.shape[0] != batch_size:
        raise ValueError(
            f"the model output must have one row per example (N={batch_size}), got shape "
            f"{tuple(output.shape)}; wrap the model so it returns N×classes scores"
        )
    return output


def _output_wrapper_hint(output: Any) -> str:
    kind = type(output).__name__
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return (
            f"the model returned a {kind} (e.g. a Hugging Face ModelOutput) where Captum "
            "methods need the tensor of class scores; pass "
            "`forward_func = lambda *x: model(*x).logits` (and the layer of `model`)"
        )
    if isinstance(output, Mapping):
        keys = [k for k, v in output.items() if isinstance(v, Tensor)]
        key = repr(keys[0]) if keys else "'<key>'"
        return (
            f"the model returned a dict with keys {list(output)} where Captum methods need "
            f"the tensor of class scores; pass `forward_func = lambda *x: model(*x)[{key}]`"
        )
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return (
            f"the model returned a {kind} of {len(output)} items where Captum methods need "
            "the tensor of class scores; pass `forward_func = lambda *x: model(*x)[0]` "
            "(the item holding the scores)"
        )
    return (
        f"the model must return a tensor of class scores, got {kind}; "
        "wrap it so forward returns the N×classes logits"
    )


def check_classifier_output(output: Any, batch_size: int) -> Tensor:
    """Check that a model output is an N×classes tensor."""
    output = check_model_output(output, batch_size)
    if output.dim() != 2:
        raise ValueError(
            f"the model output must be N×classes (N={batch_size}), got shape "
            f"{tuple(output.shape)}; wrap the model so it returns one row of class "
            "scores per image"
        )
    return output


# --------------------------------------------------------------------------------------------
# Targets, read as Captum reads them
# --------------------------------------------------------------------------------------------


def resolve_class_names(
    target: Any, class_names: Sequence[str] | None, name: str = "target"
) -> Any:
    """Replace a class name (or a list of names) in ``target`` by class indices.

    Exact names match first, then a unique case-insensitive match; ``"predicted"`` and
    non-string targets are returned unchanged.
    """
    if isinstance(target, str):
        return target if target == PREDICTED else _class_index(target, class_names, name)
    if isinstance(target, list) and target and all(isinstance(t, str) for t in target):
        return [_class_index(t, class_names, name) for t in target]
    return target


def _class_index(label: str, class_names: Sequence[str] | None, name: str) -> int:
    if not class_names:
        raise TargetError(
            f"{name}={label!r} is a class name, but this explainer knows no class names; "
            "pass class_names=[...] (one per model output) when constructing it, or give the "
            f"class index, or {name}='predicted' for each example's predicted class"
        )
    exact = [i for i, known in enumerate(class_names) if known == label]
    if not exact:
        exact = [i for i, known in enumerate(class_names) if known.lower() == label.lower()]
    if len(exact) == 1:
        return exact[0]
    if len(exact) > 1:
        raise TargetError(
            f"{name}={label!r} names several classes {exact}; pass the class index instead"
        )
    close = difflib.get_close_matches(label, list(class_names), n=3, cutoff=0.6)
    hint = f"; did you mean {close}?" if close else ""
    raise TargetError(
        f"{name}={label!r} is not one of the {len(class_names)} class names{hint} "
        "(or pass the class index)"
    )


def resolve_targets(
    target: Any,
    batch_size: int,
    n_classes: int,
    scores: Tensor | None = None,
    name: str = "target",
    class_names: Sequence[str] | None = None,
) -> Tensor:
    """Turn Captum-style targets for an N×classes output into one class index per example.

    Args:
        target: ``None`` or ``"predicted"`` (the predicted class, needs ``scores``), an int, a
            class name (with ``class_names``), a list with one int or name per example, a 0-D
            or 1-D integer tensor, or a 1-tuple (Captum reads a tuple as one index into the
            dimensions after the batch, so only ``(c,)`` fits an N×classes output).
        batch_size: Number of examples N.
        n_classes: Number of classes in the model output.
        scores: N×classes model output, used for the predicted class.
        name: The argument's name, for error messages.
        class_names: Names of the classes, for name targets.

    Returns:
        LongTensor of shape (N,) on the CPU or on ``scores``' device.

    Raises:
        TargetError: Wrong count, out of range, unknown name or a tuple that does not fit.
        TypeError: A bool, a float tensor or another type that cannot be a class index.
    """
    device = scores.device if scores is not None else torch.device("cpu")
    target = resolve_class_names(target, class_names, name)
    if target is None or isinstance(target, str):
        if scores is None:
            raise ValueError(f"{name}={target!r} needs the model scores to pick the class")
        return scores.detach().argmax(dim=1)
    indices = _class_indices(target, batch_size, name, device)
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n_classes):
        raise TargetError(
            f"{name} {indices.tolist()} is out of range for a model with {n_classes} "
            f"classes; use class indices in 0..{n_classes - 1}"
        )
    return indices


def _class_indices(target: Any, batch_size: int, name: str, device: torch.device) -> Tensor:
    """One class index per example from an int, tensor, list or 1-tuple target."""
    if isinstance(target, bool):
        raise TypeError(f"{name} must be an int class index, not a bool")
    if isinstance(target, int):
        return torch.full((batch_size,), target, dtype=torch.long, device=device)
    if isinstance(target, tuple):
        if len(target) != 1:
            raise TargetError(_tuple_misfit(target, 2, name))
        return _class_indices(target[0], batch_size, name, device)
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.dtype == torch.bool or target.dim() > 1:
            raise TypeError(
                f"a {name} tensor must hold integer class indices, 0-D or 1-D, got "
                f"{target.dtype} of shape {tuple(target.shape)}"
            )
        indices = target.detach().to(device=device, dtype=torch.long).reshape(-1)
    elif isinstance(target, list):
        indices = torch.tensor(
            [_list_entry(t, name) for t in target], dtype=torch.long, device=device
        )
    else:
        raise TypeError(
            f"{name} must be None, 'predicted', an int, a class name, a list or an integer "
            f"tensor, got {type(target).__name__}"
        )
    if indices.numel() == 1:  # one class for the whole batch
        indices = indices.expand(batch_size)
    if indices.numel() != batch_size:
        raise TargetError(
            f"got {indices.numel()} targets for a batch of {batch_size} examples ({name} has "
            f"{indices.numel()} entries); pass one target per example or a single int for all"
        )
    return indices


def _list_entry(entry: Any, name: str) -> int:
    if isinstance(entry, tuple) and len(entry) == 1:
        entry = entry[0]
    if isinstance(entry, int) and not isinstance(entry, bool):
        return entry
    if isinstance(entry, tuple):
        raise TargetError(_tuple_misfit(entry, 2, name))
    raise TypeError(
        f"{name} lists must hold one int class index (or class name) per example, got "
        f"{type(entry).__name__}"
    )


def _tuple_misfit(index: tuple[Any, ...], output_dims: int, name: str) -> str:
    return (
        f"{name} tuple {index!r} indexes {len(index)} dimensions after the batch (Captum reads "
        f"a tuple as one index into a multi-dimensional output), but the model output has "
        f"{output_dims - 1}; for one class per example pass a list or a 1-D tensor"
    )


def select_target_scores(
    output: Tensor, target: Any, class_names: Sequence[str] | None = None
) -> Tensor:
    """The score to explain for each example (shape N), selected as Captum selects it.

    ``None`` keeps Captum's meaning where the model returns one score per example; on an
    N×classes output, ``None`` and ``"predicted"`` select each example's top class. An int
    (or name) selects a column of an N×classes output; a tuple indexes the dimensions after
    the batch of a multi-dimensional output; a list holds one int or tuple per example.
    """
    n = output.shape[0]
    target = resolve_class_names(target, class_names)
    if target is None or isinstance(target, str):
        if output[0].numel() == 1:
            return output.reshape(n)
        if output.dim() == 2:
            return output.gather(1, output.detach().argmax(dim=1)[:, None])[:, 0]
        raise TargetError(
            f"target={target!r} needs one score per example or N×classes scores, but the "
            f"output is {tuple(output.shape)}; pass a tuple of {output.dim() - 1} indices"
        )
    if output.dim() == 1:
        raise TargetError(
            f"the model returns one score per example (shape {tuple(output.shape)}); leave "
            "target=None to explain it"
        )
    if output.dim() == 2:
        indices = resolve_targets(target, n, output.shape[1]).to(output.device)
        return output.gather(1, indices[:, None])[:, 0]
    rows = _index_rows(target, n, tuple(output.shape[1:]))
    columns = [torch.tensor(col, device=output.device) for col in zip(*rows, strict=True)]
    index = (torch.arange(n, device=output.device), *columns)
    selected = output[index]
    if selected[0].numel() != 1:
        raise TargetError(
            f"target {target!r} selects {tuple(selected.shape[1:])} scores per example from an "
            f"output of shape {tuple(output.shape)}; pass a tuple of {output.dim() - 1} indices "
            "so it selects one"
        )
    return selected.reshape(n)


def _index_rows(target: Any, n: int, dims: tuple[int, ...]) -> list[tuple[int, ...]]:
    """One index tuple per example into the dimensions after the batch (Captum's reading)."""
    if isinstance(target, Tensor) and target.numel() == 1 and not target.is_floating_point():
        target = int(target.item())
    rows: list[tuple[int, ...]]
    if isinstance(target, int) and not isinstance(target, bool):
        rows = [(target,)] * n
    elif isinstance(target, tuple):
        rows = [target] * n
    elif isinstance(target, list) and target and all(isinstance(t, tuple) for t in target):
        rows = list(target) * n if len(target) == 1 else list(target)
    else:
        raise TargetError(
            f"the model output is N×{'×'.join(map(str, dims))}: a list or tensor with one "
            "class per example needs N×classes scores (Captum's convention); select one score "
            f"per example with a tuple of {len(dims)} indices, or a list of such tuples"
        )
    if len(rows) != n:
        raise TargetError(
            f"got {len(rows)} target tuples for a batch of {n} examples; pass one per example"
        )
    if len({len(row) for row in rows}) != 1:
        raise TargetError("all target tuples must have the same length")
    for row in rows:
        if len(row) > len(dims):
            raise TargetError(_tuple_misfit(row, len(dims) + 1, "target"))
        if not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < size
            for i, size in zip(row, dims, strict=False)
        ):
            raise TargetError(
                f"target {row!r} is out of range for an output of shape N×"
                f"{'×'.join(map(str, dims))}"
            )
    return rows
