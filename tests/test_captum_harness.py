"""Captum's generic attribution checks, run over SeCam and CaeCounterfactual.

Captum's repository drives ``tests/attr/test_targets.py``, ``tests/attr/test_hook_removal.py``
and friends from one list of configurations, ``captum.testing.attr.helpers.test_config.config``
(installed with captum). Here SeCam is registered next to ``LayerGradCam`` in every
configuration that lists it, CaeCounterfactual gets configurations of its own in the same
schema, and the same generic checks run over all of them (our own code, written after reading
Captum's): targets (int, list, tensor, tuple), hook removal after success and after errors,
additional_forward_args, multiple inputs, NoiseTunnel, infidelity and sensitivity_max.

Nothing is skipped: every configuration that LayerGradCam runs, SeCam runs too (see
docs/concepts.md, "Captum conventions", for how N×F inputs and multi-output layers are read).
Captum's JIT and DataParallel checks are not part of this file: JIT tracing fails for every
hook-based layer method (LayerGradCam included), and DataParallel needs several GPUs.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from captum._utils.common import _format_additional_forward_args
from captum.attr import Attribution, LayerAttribution, LayerGradCam, NoiseTunnel
from captum.attr._models.base import _set_deep_layer_value
from captum.metrics import infidelity, sensitivity_max
from captum.testing.attr.helpers.gen_test_utils import get_target_layer
from captum.testing.attr.helpers.test_config import config as captum_config
from captum.testing.helpers.basic_models import BasicModel_ConvNet
from conftest import tiny_reference_cae
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from captum_secam import SeCam
from captum_secam.cae import CaeCounterfactual

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------
# Registration: SeCam next to LayerGradCam, CaeCounterfactual in the same schema
# ----------------------------------------------------------------------------------------------


class _ErrorModule(nn.Module):
    """Stands in for the explained layer; raises as Captum's hook-removal check does."""

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        raise AssertionError("Raising error on execution")


class _TwoHeadConvNet(nn.Module):
    """BasicModel_ConvNet with an N×10×2 output, for tuple targets on an image model."""

    def __init__(self) -> None:
        super().__init__()
        self.net = BasicModel_ConvNet()

    def forward(self, x: Tensor) -> Tensor:
        y = self.net(x)
        return torch.stack([y, -y], dim=2)


class _ScaledProbe(nn.Module):
    """A linear image classifier (2 classes) with a per-example scale argument."""

    def __init__(self, w: Tensor, r: Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.register_buffer("r", r.clone())
        self.tau = 0.5 * float((w**2).sum())

    def forward(self, x: Tensor, scale: Tensor | None = None) -> Tensor:
        s1 = (((x - self.r) * self.w).flatten(1).sum(1) - self.tau) * (4.0 / self.tau)
        scores = torch.stack([torch.zeros_like(s1), s1], 1)
        return scores if scale is None else scores * scale


def _cae_setup() -> tuple[nn.Module, Any, Tensor]:
    """A tiny CAE and a probe whose decision flips on the path of image 0 (as in
    tests/test_cae_attribution.py); images in [0.3, 0.7] leave room for NoiseTunnel's noise."""
    cae = tiny_reference_cae()
    x = 0.3 + 0.4 * torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        s, c = cae.encode(x)
        r = cae.decode(s[:1], c[:1])
        mu1 = c[0] + 3.0
        w = cae.decode(s[:1], mu1[None]) - r
    cae.set_centroids(torch.stack([c[0], mu1]))
    return _ScaledProbe(w, r).eval(), cae, x


def _own_secam_configs() -> list[dict[str, Any]]:
    """Image configurations for the target kinds Captum only tests on N×F models."""
    torch.manual_seed(5)
    images = 10 * torch.randn(4, 1, 10, 10)
    configs = [
        {
            "name": f"secam_conv_{kind}_target",
            "algorithms": [LayerGradCam, SeCam],
            "model": BasicModel_ConvNet(),
            "layer": "conv2",
            "attribute_args": {"inputs": images, "target": target},
        }
        for kind, target in (
            ("int", 3),
            ("list", [0, 3, 1, 9]),
            ("tensor", torch.tensor([2, 2, 7, 0])),
            ("tuple", (4,)),
        )
    ]
    configs.append(
        {
            "name": "secam_conv_list_of_tuples_target",
            "algorithms": [LayerGradCam, SeCam],
            "model": _TwoHeadConvNet(),
            "layer": "net.conv2",
            "attribute_args": {"inputs": images, "target": [(1, 0), (0, 1), (9, 1), (3, 0)]},
        }
    )
    return configs


def _cae_configs() -> list[dict[str, Any]]:
    probe, cae, x = _cae_setup()
    scale = torch.tensor([[1.0], [2.0], [0.5], [3.0]])
    targets = (("int", 0), ("list", [0, 1, 1, 0]), ("tensor", torch.tensor([1, 0, 0, 1])))
    configs = [
        {
            "name": f"cae_{kind}_target",
            "algorithms": [CaeCounterfactual],
            "model": probe,
            "init_kwargs": {"cae": cae},
            "attribute_args": {"inputs": x, "target": target},
        }
        for kind, target in (*targets, ("tuple", (0,)))
    ]
    configs.append(
        {
            "name": "cae_additional_forward_args",
            "algorithms": [CaeCounterfactual],
            "model": probe,
            "init_kwargs": {"cae": cae},
            "attribute_args": {
                "inputs": x,
                "target": [0, 0, 1, 0],
                "additional_forward_args": (scale,),
            },
        }
    )
    return configs


def register(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Captum's configurations that run LayerGradCam, with SeCam registered next to it."""
    registered = []
    for entry in configs:
        if LayerGradCam in entry["algorithms"]:
            registered.append({**entry, "algorithms": [LayerGradCam, SeCam]})
    return registered


CONFIGS = register(captum_config) + _own_secam_configs() + _cae_configs()
CASES = [
    pytest.param(entry, algorithm, id=f"{entry['name']}-{algorithm.__name__}")
    for entry in CONFIGS
    for algorithm in entry["algorithms"]
]
SECAM_CASES = [case for case in CASES if case.values[1] is SeCam]
CAE_CASES = [case for case in CASES if case.values[1] is CaeCounterfactual]
# Captum replaces the explained layer by a failing module only for layer methods.
HOOK_CASES = [
    pytest.param(*case.values, mode, id=f"{case.id}-{mode}")
    for case in CASES
    for mode in ("normal", "incorrect_target", "invalid_module")
    if mode != "invalid_module" or "layer" in case.values[0]
]


def test_every_layer_grad_cam_config_of_captum_is_registered() -> None:
    names = {e["name"] for e in captum_config if LayerGradCam in e["algorithms"]}
    ours = {e["name"] for e in CONFIGS if SeCam in e["algorithms"]}
    assert len(names) >= 7 and names <= ours


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _build(entry: dict[str, Any], algorithm: type[Attribution]) -> tuple[Attribution, dict]:
    """A fresh explainer and deep-copied arguments, so tests cannot affect one another."""
    entry = copy.deepcopy(entry)
    model, args = entry["model"], entry["attribute_args"]
    if "layer" in entry:
        explainer = algorithm(model, get_target_layer(model, entry["layer"]))  # type: ignore[call-arg]
    else:
        explainer = algorithm(model, **entry.get("init_kwargs", {}))  # type: ignore[call-arg]
    return explainer, args


def _example(args: dict[str, Any], i: int, target: Any) -> dict[str, Any]:
    """The arguments of example ``i`` alone (inputs and per-example extra args sliced)."""
    inputs = args["inputs"]
    single = dict(args, target=target)
    single["inputs"] = (
        inputs[i : i + 1] if isinstance(inputs, Tensor) else tuple(t[i : i + 1] for t in inputs)
    )
    if args.get("additional_forward_args") is not None:
        extra = _format_additional_forward_args(args["additional_forward_args"]) or ()
        single["additional_forward_args"] = tuple(
            a[i : i + 1] if isinstance(a, Tensor) else a for a in extra
        )
    return single


def _as_tuple(attr: Any) -> tuple[Tensor, ...]:
    return attr if isinstance(attr, tuple) else (attr,)


def _n_examples(args: dict[str, Any]) -> int:
    inputs = args["inputs"]
    return len(inputs) if isinstance(inputs, Tensor) else len(inputs[0])


@pytest.fixture(autouse=True)
def _quiet_cae() -> Iterator[None]:
    """CaeCounterfactual warns about images it cannot flip; the checks here are generic."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="CaeCounterfactual", category=UserWarning)
        yield


# ----------------------------------------------------------------------------------------------
# Targets: a batch gives what each example gives alone (int, list, tensor, tuple targets)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "algorithm"), CASES)
def test_targets(entry: dict[str, Any], algorithm: type[Attribution]) -> None:
    explainer, args = _build(entry, algorithm)
    torch.manual_seed(0)
    batch = _as_tuple(explainer.attribute(**args))
    target, n = args["target"], _n_examples(args)
    per_example = isinstance(target, (list, Tensor)) and len(target) == n
    for i in range(n):
        own = target[i] if per_example else target
        if isinstance(own, Tensor):
            own = int(own)
        singles = [own] + ([target[i : i + 1]] if per_example else [])
        for single_target in singles:
            torch.manual_seed(0)
            single = _as_tuple(explainer.attribute(**_example(args, i, single_target)))
            for whole, alone in zip(batch, single, strict=True):
                torch.testing.assert_close(whole[i : i + 1], alone, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Hooks: none left behind after success, a wrong target, or a failing layer
# ----------------------------------------------------------------------------------------------


def _assert_no_hooks(model: nn.Module) -> None:
    for module in model.modules():
        assert len(module._forward_hooks) == 0
        assert len(module._backward_hooks) == 0
        assert len(module._forward_pre_hooks) == 0


@pytest.mark.parametrize(("entry", "algorithm", "mode"), HOOK_CASES)
def test_hook_removal(entry: dict[str, Any], algorithm: type[Attribution], mode: str) -> None:
    entry = copy.deepcopy(entry)
    if mode == "invalid_module":
        _set_deep_layer_value(entry["model"], entry["layer"], _ErrorModule())
    explainer, args = _build(entry, algorithm)
    model = explainer.forward_func
    assert isinstance(model, nn.Module)
    if mode == "normal":
        explainer.attribute(**args)
    else:
        if mode == "incorrect_target":
            args["target"] = (9999,) * 20
        with pytest.raises(AssertionError):
            explainer.attribute(**args)
    _assert_no_hooks(model)


# ----------------------------------------------------------------------------------------------
# NoiseTunnel
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "algorithm"), CASES)
def test_noise_tunnel(entry: dict[str, Any], algorithm: type[Attribution]) -> None:
    explainer, args = _build(entry, algorithm)
    plain = _as_tuple(explainer.attribute(**args))
    tunnel = NoiseTunnel(explainer)
    silent = _as_tuple(tunnel.attribute(**args, nt_type="smoothgrad", nt_samples=3, stdevs=0.0))
    for a, b in zip(plain, silent, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)  # zero noise: the plain map
    torch.manual_seed(0)
    noisy = _as_tuple(tunnel.attribute(**args, nt_type="smoothgrad_sq", nt_samples=3, stdevs=0.02))
    for a, b in zip(plain, noisy, strict=True):
        assert b.shape == a.shape and bool(torch.isfinite(b).all()) and bool((b >= 0).all())


# ----------------------------------------------------------------------------------------------
# captum.metrics: infidelity and sensitivity_max
# ----------------------------------------------------------------------------------------------


def _pixel_segments(inputs: Tensor) -> Tensor:
    """One segment per position: SeCam then returns its base map itself."""
    positions = inputs.shape[1:] if inputs.dim() == 2 else inputs.shape[2:]
    ids = torch.arange(int(torch.tensor(positions).prod())).reshape(positions)
    return ids[None] if inputs.dim() == 2 else ids[None, None]


def _grad_cam_on_inputs(cam: Any, inputs: Tensor) -> Tensor:
    """LayerGradCam's map(s) summed, brought to the input's positions and channels."""
    total = sum(_as_tuple(cam)).detach()  # type: ignore[arg-type]
    if inputs.dim() == 2:
        return total.reshape(-1, 1).expand_as(inputs)
    up = LayerAttribution.interpolate(total, tuple(inputs.shape[2:]), "bilinear")
    return up.expand_as(inputs)


def _secam_and_grad_cam(entry: dict[str, Any]) -> tuple[Callable, Callable, dict[str, Any]]:
    """Explanation functions that must agree: SeCam (Grad-CAM base, one segment per
    position) and LayerGradCam upsampled, on the same inputs."""
    secam, args = _build(entry, SeCam)
    grad_cam, _ = _build(entry, LayerGradCam)

    def secam_fn(inputs: Any, **kw: Any) -> Any:
        first = inputs if isinstance(inputs, Tensor) else inputs[0]
        return secam.attribute(inputs, feature_mask=_pixel_segments(first), base="grad_cam", **kw)

    def grad_cam_fn(inputs: Any, **kw: Any) -> Any:
        cam = grad_cam.attribute(inputs, **kw)
        if isinstance(inputs, Tensor):
            return _grad_cam_on_inputs(cam, inputs)
        return tuple(_grad_cam_on_inputs(cam, t) for t in inputs)

    return secam_fn, grad_cam_fn, args


def _perturb(inputs: Any) -> tuple[Any, Any]:
    if isinstance(inputs, Tensor):
        noise = 0.1 * torch.randn_like(inputs)
        return noise, inputs - noise
    noise = tuple(0.1 * torch.randn_like(t) for t in inputs)
    return noise, tuple(t - n for t, n in zip(inputs, noise, strict=True))


def _metric_kwargs(args: dict[str, Any]) -> dict[str, Any]:
    return {
        "target": args["target"],
        "additional_forward_args": args.get("additional_forward_args"),
    }


@pytest.mark.parametrize(("entry", "algorithm"), SECAM_CASES)
def test_infidelity_and_sensitivity_max_match_layer_grad_cam(
    entry: dict[str, Any], algorithm: type[Attribution]
) -> None:
    """Where LayerGradCam runs through captum.metrics, SeCam runs and scores the same."""
    secam_fn, grad_cam_fn, args = _secam_and_grad_cam(entry)
    kw = _metric_kwargs(args)
    ours, theirs = secam_fn(args["inputs"], **kw), grad_cam_fn(args["inputs"], **kw)
    for a, b in zip(_as_tuple(ours), _as_tuple(theirs), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    model = copy.deepcopy(entry["model"])
    scores = []
    for attr in (ours, theirs):
        torch.manual_seed(0)
        scores.append(infidelity(model, _perturb, args["inputs"], attr, n_perturb_samples=4, **kw))
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-5, atol=1e-6)
    assert scores[0].shape == (_n_examples(args),) and bool(torch.isfinite(scores[0]).all())
    sens = []
    for fn in (secam_fn, grad_cam_fn):
        torch.manual_seed(0)
        sens.append(sensitivity_max(fn, args["inputs"], n_perturb_samples=3, **kw))
    torch.testing.assert_close(sens[0], sens[1], rtol=1e-4, atol=1e-6)
    assert bool((sens[0] >= 0).all())


def test_infidelity_is_zero_for_an_exact_explanation() -> None:
    """f(x) = Σ W·x; SeCam at the input of a 1×1 identity layer with one-pixel segments
    gives W·x, so attributions / x explain f(x) − f(x − I) exactly (infidelity 0)."""

    class Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inside = nn.Identity()
            self.w = nn.Parameter(
                torch.randn(1, 1, 6, 6, generator=torch.Generator().manual_seed(1))
            )

        def forward(self, x: Tensor) -> Tensor:
            return (self.inside(x) * self.w).flatten(1).sum(1, keepdim=True)

    model = Linear()
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(2)) + 0.5
    attr = SeCam(model, model.inside).attribute(x, feature_mask=_pixel_segments(x))
    torch.testing.assert_close(attr, (model.w * x).detach())
    torch.manual_seed(0)
    score = infidelity(model, _perturb, x, attr / x, n_perturb_samples=5)
    assert float(score.abs().max()) < 1e-9


@pytest.mark.parametrize(("entry", "algorithm"), CAE_CASES)
def test_cae_through_infidelity_and_sensitivity_max(
    entry: dict[str, Any], algorithm: type[Attribution]
) -> None:
    """CaeCounterfactual under captum.metrics (sensitivity_max runs it under no_grad): the
    metrics equal what they compute by hand with one fixed perturbation."""
    explainer, args = _build(entry, algorithm)
    model, x, kw = explainer.forward_func, args["inputs"], _metric_kwargs(args)
    delta = 0.01 * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(4)))
    attr = explainer.attribute(**args)

    def fixed(inputs: Tensor) -> tuple[Tensor, Tensor]:
        return delta.repeat(inputs.shape[0] // x.shape[0], 1, 1, 1), inputs - delta

    infid = infidelity(model, fixed, x, attr, n_perturb_samples=1, **kw)
    scores = lambda images: _target_scores(model, images, args)  # noqa: E731
    expected = ((delta * attr).flatten(1).sum(1) - (scores(x) - scores(x - delta))) ** 2
    torch.testing.assert_close(infid, expected, rtol=1e-4, atol=1e-7)

    sens = sensitivity_max(explainer.attribute, x, lambda t: t + delta, n_perturb_samples=1, **kw)
    moved = explainer.attribute(**dict(args, inputs=x + delta))
    norm = attr.flatten(1).norm(dim=1)
    by_hand = (moved - attr).flatten(1).norm(dim=1) / torch.where(norm == 0, 1.0, norm)
    torch.testing.assert_close(sens, by_hand, rtol=1e-4, atol=1e-6)


def _target_scores(model: Callable, images: Tensor, args: dict[str, Any]) -> Tensor:
    extra = _format_additional_forward_args(args.get("additional_forward_args")) or ()
    with torch.no_grad():
        out = model(images, *extra)
    target = args["target"]
    index = torch.as_tensor(target[0] if isinstance(target, tuple) else target)
    index = index.expand(out.shape[0]) if index.dim() == 0 else index
    return out.gather(1, index.reshape(-1, 1))[:, 0]


# ----------------------------------------------------------------------------------------------
# Target reading: the same scores as Captum's own selection, for every kind of target
# ----------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_target_scores_match_captums_selection(data: st.DataObject) -> None:
    from captum._utils.common import _select_targets

    from captum_secam._validation import select_target_scores

    n = data.draw(st.integers(1, 4), label="n")
    dims = tuple(data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3), label="dims"))
    output = torch.randn(n, *dims, generator=torch.Generator().manual_seed(n))
    index = st.tuples(*[st.integers(0, d - 1) for d in dims])
    if len(dims) == 1:
        column = st.integers(0, dims[0] - 1)
        target = data.draw(
            st.one_of(
                column,
                column.map(lambda c: (c,)),
                st.lists(column, min_size=n, max_size=n),
                st.lists(column, min_size=n, max_size=n).map(torch.tensor),
            ),
            label="target",
        )
    else:
        target = data.draw(st.one_of(index, st.lists(index, min_size=n, max_size=n)), "target")
    expected = _select_targets(output, target).reshape(n)
    torch.testing.assert_close(select_target_scores(output, target), expected)
