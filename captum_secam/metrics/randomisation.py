"""Sanity check: does the explanation depend on the model at all?

:func:`parameter_randomisation` is the cascading model-parameter randomisation test of Adebayo
et al. (2018): it re-initialises the layers of a deep copy of the model from the output towards
the input and measures how similar the explanation stays.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from captum_secam._validation import check_images
from captum_secam.metrics.agreement import Similarity, rank_correlation

__all__ = ["parameter_randomisation"]


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
    _check_arguments(attribute_fn, model, inputs, layers, similarity)
    work = copy.deepcopy(model)
    modules = dict(work.named_modules())
    with_params = [name for name, m in work.named_modules() if _own_parameters(m)]
    if not with_params:
        raise ValueError("the model has no parameters to randomise")
    names = None if layers is None else _checked_layer_names(layers, modules, with_params)

    def explain() -> Tensor:
        return _as_explanation(attribute_fn(work, inputs, target), absolute)

    # The reference run records the order in which parametrised modules execute: it gives the
    # output-to-input order, and proves that attribute_fn uses the model it is given.
    reference, called = _explain_recording_order(explain, modules, with_params)
    if not called:
        raise ValueError(
            "attribute_fn never ran the model it received, so randomising that copy cannot "
            "change its output; build the explainer on the model argument, e.g. "
            "lambda m, x, t: SeCam(m, m.layer4).attribute(x, target=t)"
        )
    if names is None:
        names = list(reversed(called))

    generator = torch.Generator().manual_seed(seed)
    results: list[tuple[str, Tensor]] = []
    for name in names:
        for sub in modules[name].modules():
            if _own_parameters(sub):
                _randomise_module(sub, generator)
        results.append((name, _compare(reference, explain(), similarity)))
    return results


def _check_arguments(
    attribute_fn: Any, model: Any, inputs: Tensor, layers: Any, similarity: Any
) -> None:
    """The checks that need no copy of the model (so they fail fast)."""
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


def _checked_layer_names(
    layers: Sequence[str], modules: dict[str, nn.Module], with_params: list[str]
) -> list[str]:
    """``layers`` as a list, after checking each names a distinct module with parameters."""
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
    return names


def _as_explanation(result: Any, absolute: bool) -> Tensor:
    """What ``attribute_fn`` returned, as a detached tensor (its first item if a tuple)."""
    if isinstance(result, tuple):
        result = result[0]
    if not isinstance(result, Tensor):
        raise TypeError(f"attribute_fn must return a tensor, got {type(result).__name__}")
    result = result.detach()
    if absolute:
        result = result.abs()
    return result


def _explain_recording_order(
    explain: Callable[[], Tensor], modules: dict[str, nn.Module], watched: list[str]
) -> tuple[Tensor, list[str]]:
    """``explain()`` and the ``watched`` modules it ran, in the order they first ran."""
    called: list[str] = []
    handles = [
        modules[name].register_forward_hook(
            lambda _m, _i, _o, name=name: called.append(name) if name not in called else None
        )
        for name in watched
    ]
    try:
        reference = explain()
    finally:
        for handle in handles:
            handle.remove()
    return reference, called


def _compare(
    a: Tensor, b: Tensor, similarity: Similarity | Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """Similarity of the reference explanation ``a`` and a randomised one ``b`` (N values)."""
    if a.shape != b.shape:
        raise ValueError(
            f"attribute_fn returned shape {tuple(b.shape)} after randomisation but "
            f"{tuple(a.shape)} before; it must return the same shape every call"
        )
    if callable(similarity):
        return torch.as_tensor(similarity(a, b))
    values = rank_correlation(a, b, similarity)
    if bool(torch.isnan(values).any()):
        # stacklevel 3: the warning names the caller of parameter_randomisation.
        warnings.warn(
            "an explanation is constant, so its correlation is undefined (NaN)", stacklevel=3
        )
    return values


def _own_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))
