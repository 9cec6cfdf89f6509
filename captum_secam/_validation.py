"""Input checks shared by every attributor: each error says what to change."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "check_classifier_output",
    "check_images",
    "check_layer_in_model",
    "resolve_targets",
]

# Channel counts that a channels-last image tensor typically ends with.
_IMAGE_CHANNELS = (1, 2, 3, 4)


def check_images(images: Any, name: str = "inputs") -> Tensor:
    """Check that ``images`` is a finite floating N×C×H×W tensor and return it."""
    if not isinstance(images, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor shaped N×C×H×W, got {type(images).__name__}; "
            "convert numpy images with torch.from_numpy(img).permute(2, 0, 1)[None]"
        )
    if images.dim() != 4:
        hint = (
            "add a batch dimension with x.unsqueeze(0)"
            if images.dim() == 3
            else "pass a batch of images shaped N×C×H×W"
        )
        raise ValueError(
            f"{name} must be 4-D (N×C×H×W), got {images.dim()}-D shape "
            f"{tuple(images.shape)}; {hint}"
        )
    n_channels, last = images.shape[1], images.shape[3]
    if n_channels not in _IMAGE_CHANNELS and last in _IMAGE_CHANNELS and images.shape[2] > last:
        raise ValueError(
            f"{name} of shape {tuple(images.shape)} looks channels-last (N×H×W×C); "
            "image tensors must be channels-first: use x.permute(0, 3, 1, 2)"
        )
    if not images.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got {images.dtype}; "
            "convert with x.float() (and normalise as your model expects)"
        )
    if not bool(torch.isfinite(images).all()):
        raise ValueError(
            f"{name} contains NaN or Inf values; clean the images before explaining "
            "(e.g. torch.nan_to_num) — explanations of non-finite inputs are meaningless"
        )
    return images


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


def check_classifier_output(output: Any, batch_size: int) -> Tensor:
    """Check that a model output is an N×classes tensor."""
    if not isinstance(output, Tensor):
        raise TypeError(
            f"the model must return a tensor of class scores, got {type(output).__name__}; "
            "wrap it so forward returns the N×classes logits"
        )
    if output.dim() != 2 or output.shape[0] != batch_size:
        raise ValueError(
            f"the model output must be N×classes (N={batch_size}), got shape "
            f"{tuple(output.shape)}; wrap the model so it returns one row of class "
            "scores per image"
        )
    return output


def resolve_targets(
    target: Any,
    batch_size: int,
    n_classes: int,
    scores: Tensor | None = None,
    name: str = "target",
) -> Tensor:
    """Turn Captum-style targets into a LongTensor of one class index per example.

    Args:
        target: ``None`` (use the predicted class, needs ``scores``), an int, a sequence of
            ints with one entry per example, or a 0-D / 1-D integer tensor.
        batch_size: Number of examples N.
        n_classes: Number of classes in the model output.
        scores: N×classes model output, used when ``target`` is None.
        name: The argument's name, for error messages.

    Returns:
        LongTensor of shape (N,) on the CPU or on ``scores``' device.
    """
    device = scores.device if scores is not None else torch.device("cpu")
    if target is None:
        if scores is None:
            raise ValueError("target=None needs the model scores to pick the predicted class")
        return scores.detach().argmax(dim=1)
    if isinstance(target, bool):
        raise TypeError(f"{name} must be an int class index, not a bool")
    if isinstance(target, int):
        indices = torch.full((batch_size,), target, dtype=torch.long, device=device)
    elif isinstance(target, Tensor):
        if target.is_floating_point() or target.dtype == torch.bool or target.dim() > 1:
            raise TypeError(
                f"a {name} tensor must hold integer class indices, 0-D or 1-D, got "
                f"{target.dtype} of shape {tuple(target.shape)}"
            )
        indices = target.detach().to(device=device, dtype=torch.long).reshape(-1)
    elif isinstance(target, Sequence) and not isinstance(target, str):
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in target):
            raise TypeError(
                f"{name} lists must hold one int class index per example; tuples for "
                "multi-dimensional outputs are not supported (the model output is N×classes)"
            )
        indices = torch.tensor(list(target), dtype=torch.long, device=device)
    else:
        raise TypeError(
            f"{name} must be None, an int, a list of ints or an integer tensor, "
            f"got {type(target).__name__}"
        )
    if indices.numel() == 1:  # one class for the whole batch
        indices = indices.expand(batch_size)
    if indices.numel() != batch_size:
        raise ValueError(
            f"got {indices.numel()} targets for a batch of {batch_size} images ({name} has "
            f"{indices.numel()} entries); pass one target per example or a single int for all"
        )
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n_classes):
        raise ValueError(
            f"{name} {indices.tolist()} is out of range for a model with {n_classes} "
            f"classes; use class indices in 0..{n_classes - 1}"
        )
    return indices
