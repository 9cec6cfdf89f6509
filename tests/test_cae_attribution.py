"""CaeCounterfactual on a tiny synthetic setup where the flip is guaranteed by construction.

The classifier is linear in the image: score_1(x) = <w, x − r> − τ, score_0 = 0, with r the
reconstruction of image 0 and w = G(s_0, μ_1) − r, τ = ‖w‖²/2. On the linear path of image 0 the
class-1 score goes from −τ (t=0) to +τ (t=1), so the decision must flip inside (0, 1].
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from captum_secam.cae import CaeCounterfactual, CaeExplanation, ClassAssociationEmbedding

pytestmark = pytest.mark.usefixtures("one_thread")


class LinearProbe(nn.Module):
    def __init__(self, w: Tensor, r: Tensor, tau: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.register_buffer("r", r.clone())
        self.tau = tau

    def forward(self, x: Tensor) -> Tensor:
        s1 = ((x - self.r) * self.w).flatten(1).sum(1) - self.tau
        return torch.stack([torch.zeros_like(s1), s1], 1)


@pytest.fixture(scope="module")
def setup() -> tuple[ClassAssociationEmbedding, LinearProbe, Tensor]:
    torch.manual_seed(0)
    cae = ClassAssociationEmbedding(
        16,
        1,
        2,
        class_code_dim=4,
        base_channels=4,
        n_res_blocks=1,
        mlp_dim=8,
        disc_channels=4,
        up_kernel=3,
    ).eval()
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        s, c = cae.encode(x)
        r = cae.decode(s[:1], c[:1])
        mu1 = c[0] + 3.0
        w = cae.decode(s[:1], mu1[None]) - r
    cae.set_centroids(torch.stack([c[0], mu1]))
    probe = LinearProbe(w, r, 0.5 * float((w**2).sum())).eval()
    return cae, probe, x


def explain(cae, probe, x, **kw) -> CaeExplanation:  # type: ignore[no-untyped-def]
    res = CaeCounterfactual(probe, cae).attribute(x, return_counterfactuals=True, **kw)
    assert isinstance(res, CaeExplanation)
    return res


def test_linear_path_flips_and_flip_point_is_tight(setup) -> None:  # type: ignore[no-untyped-def]
    cae, probe, x = setup
    res = explain(cae, probe, x[:1], target=0, path="linear", n_steps=10, refine_steps=6)
    assert res.flipped.tolist() == [True]
    t = float(res.flip_position[0])
    assert 0 < t <= 1
    assert int(res.counterfactual_prediction[0]) == 1 != int(res.target[0])
    assert int(res.counterfactual_target[0]) == 1
    # just before the flip point (one bisection interval) the prediction is still the target
    with torch.no_grad():
        s, c = cae.encode(x[:1])
        mu = cae.centroids[1]
        before = cae.decode(s, c + (t - 0.1 / 2**6) * (mu - c))
        at = cae.decode(s, c + t * (mu - c))
        assert int(probe(before).argmax(1)) == 0
        assert int(probe(at).argmax(1)) == 1
        torch.testing.assert_close(at, res.counterfactuals, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(res.reconstructions, cae(x[:1]))
    # the map is |counterfactual − reconstruction|, ≥ 0, zero where they agree
    torch.testing.assert_close(
        res.attributions, (res.counterfactuals - res.reconstructions).abs(), rtol=0, atol=0
    )
    assert float(res.attributions.min()) >= 0
    assert res.decoder_passes <= 1 + 10 + 6
    # the path starts at the class code and ends at the flip point
    torch.testing.assert_close(res.path_codes[0, 0], res.class_codes[0])
    torch.testing.assert_close(res.path_codes[0, -1], res.counterfactual_codes[0])


def test_unchanged_codes_and_compare_to_input(setup) -> None:  # type: ignore[no-untyped-def]
    cae, probe, x = setup
    res = explain(cae, probe, x[:1], target=0, compare_to="input")
    torch.testing.assert_close(res.attributions, (res.counterfactuals - x[:1]).abs())
    # the reconstruction already shows the target: no fit, it is G(E(x))
    assert res.fitted.tolist() == [False]
    with torch.no_grad():
        torch.testing.assert_close(res.reconstructions, cae.decode(*cae.encode(x[:1])))


def _brightness_classifier(threshold: float):  # type: ignore[no-untyped-def]
    """Class 1 iff the mean intensity is below ``threshold`` (a steep logistic score)."""

    def forward(img: Tensor) -> Tensor:
        s1 = (threshold - img.flatten(1).mean(1)) * 200.0
        return torch.stack([torch.zeros_like(s1), s1], 1)

    return forward


def test_fit_makes_the_reconstruction_show_the_target(setup) -> None:  # type: ignore[no-untyped-def]
    cae, _, x = setup
    with torch.no_grad():
        rec = cae.decode(*cae.encode(x[:3]))
    # the images are class 1 (darker than the threshold), their reconstructions just too
    # bright: class 0, so class 1 (the prediction) cannot be explained without the fit
    threshold = float(rec.flatten(1).mean(1).min()) - 0.002
    clf = _brightness_classifier(threshold)
    assert clf(x[:3]).argmax(1).tolist() == [1, 1, 1]
    assert clf(rec).argmax(1).tolist() == [0, 0, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res = explain(cae, clf, x[:3], target=1, fit_steps=30)
        singles = [explain(cae, clf, x[i : i + 1], target=1, fit_steps=30) for i in range(3)]
    assert res.fitted.tolist() == [True, True, True]
    assert all(p.grad is None for p in cae.parameters())  # the fit leaves no gradients behind
    assert res.reconstruction_prediction.tolist() == [1, 1, 1]
    assert bool((res.reconstructions.flatten(1).mean(1) < threshold).all())
    # a reconstruction still: the fit moved the image only a little
    assert float((res.reconstructions - rec).abs().mean()) < 0.05
    assert res.decoder_passes <= 1 + 31 + 10 + 6
    for i, one in enumerate(singles):
        torch.testing.assert_close(
            res.reconstructions[i], one.reconstructions[0], atol=1e-5, rtol=0
        )
        assert bool(res.flipped[i]) == bool(one.flipped[0])
    # a target the classifier does not predict on x is never made up by the fit
    clf_below = _brightness_classifier(-10.0)  # every image is class 0
    with pytest.warns(UserWarning, match="not classified as the target"):
        made_up = explain(cae, clf_below, x[:3], target=1)
    assert made_up.fitted.tolist() == [False] * 3 and made_up.flipped.tolist() == [False] * 3
    # without the fit the same examples cannot be explained and are flagged
    with pytest.warns(UserWarning, match="not classified as the target"):
        res0 = explain(cae, clf, x[:3], target=1, fit_steps=0)
    assert res0.fitted.tolist() == [False] * 3 and res0.flipped.tolist() == [False] * 3
    torch.testing.assert_close(res0.reconstructions, rec)


def test_gradient_path_flips(setup) -> None:  # type: ignore[no-untyped-def]
    cae, probe, x = setup
    res = explain(cae, probe, x[:1], target=0, path="gradient", n_steps=20, t_end=2.0)
    assert res.flipped.tolist() == [True]
    assert int(probe(res.counterfactuals).argmax(1)) == 1
    assert 0 < float(res.flip_position[0]) <= 2.0
    assert res.decoder_passes <= 2 + 20 + 6


def test_batch_equals_per_image_and_is_deterministic(setup) -> None:  # type: ignore[no-untyped-def]
    cae, probe, x = setup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        batch = explain(cae, probe, x, target=0)
        again = explain(cae, probe, x, target=0)
        singles = [explain(cae, probe, x[i : i + 1], target=0) for i in range(4)]
    assert torch.equal(batch.attributions, again.attributions)
    for i, one in enumerate(singles):
        torch.testing.assert_close(batch.attributions[i], one.attributions[0], atol=1e-5, rtol=0)
        assert bool(batch.flipped[i]) == bool(one.flipped[0])
        if bool(one.flipped[0]):
            assert float(batch.flip_position[i]) == pytest.approx(float(one.flip_position[0]))


def test_no_flip_warns_and_flags(setup) -> None:  # type: ignore[no-untyped-def]
    cae, _, x = setup

    def always_zero(img: Tensor) -> Tensor:
        return torch.stack([torch.ones(img.shape[0]), torch.zeros(img.shape[0])], 1)

    with pytest.warns(UserWarning, match="never left the target class for examples \\[0, 1\\]"):
        res = CaeCounterfactual(always_zero, cae).attribute(
            x[:2], return_counterfactuals=True, n_steps=3, path="linear"
        )
    assert isinstance(res, CaeExplanation)
    assert res.flipped.tolist() == [False, False]
    assert all(math.isnan(v) for v in res.flip_position.tolist())
    assert res.decoder_passes == 1 + 3
    with pytest.raises(ValueError, match="use path='linear'"):
        CaeCounterfactual(always_zero, cae).attribute(x[:2], path="gradient")
    probe = setup[1]
    with pytest.raises(ValueError, match="use path='linear'"):  # detached input, live params
        CaeCounterfactual(lambda img: probe(img.detach()), cae).attribute(x[:2], target=0)
    # the map of an unflipped example is taken at the path end (the centroid)
    with torch.no_grad():
        s, _ = cae.encode(x[:2])
        end = cae.decode(s, cae.centroids[torch.tensor([1, 1])])
    torch.testing.assert_close(res.counterfactuals, end, atol=1e-5, rtol=1e-5)


def test_plain_call_returns_map_like_input_and_tuple_in_tuple_out(setup) -> None:  # type: ignore[no-untyped-def]
    cae, probe, x = setup
    ex = CaeCounterfactual(probe, cae)
    a = ex.attribute(x[:1], target=0)
    assert isinstance(a, Tensor) and a.shape == (1, 1, 16, 16) and not a.requires_grad
    t = ex.attribute((x[:1],), target=0)
    assert isinstance(t, tuple) and torch.equal(t[0], a)


def test_default_target_is_prediction_and_cf_is_nearest_other_centroid(setup) -> None:  # type: ignore[no-untyped-def]
    cae, probe, x = setup
    res = explain(cae, probe, x[:1])
    assert int(res.target[0]) == int(probe(x[:1]).argmax(1))
    assert int(res.counterfactual_target[0]) != int(res.target[0])


def test_additional_forward_args(setup) -> None:  # type: ignore[no-untyped-def]
    cae, probe, x = setup

    def f(img: Tensor, scale: float) -> Tensor:
        return probe(img) * scale

    a = CaeCounterfactual(f, cae).attribute(x[:1], target=0, additional_forward_args=(2.0,))
    b = CaeCounterfactual(probe, cae).attribute(x[:1], target=0)
    torch.testing.assert_close(a, b)


def test_do_no_harm(setup) -> None:  # type: ignore[no-untyped-def]
    cae, probe, x = setup
    probe.train()
    cae.train()
    req = [p.requires_grad for p in probe.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for path in ("linear", "gradient"):
            CaeCounterfactual(probe, cae).attribute(x[:2], target=0, path=path)
    assert probe.training and cae.training
    assert [p.requires_grad for p in probe.parameters()] == req
    assert all(p.grad is None for p in probe.parameters())
    assert all(p.grad is None for p in cae.parameters())
    probe.eval()
    cae.eval()


@pytest.mark.parametrize(
    ("inputs", "kwargs", "exc", "match"),
    [
        (torch.rand(1, 1, 28, 28), {}, ValueError, "built for 16×16"),
        (torch.rand(1, 3, 16, 16), {}, ValueError, "3 channels"),
        (torch.rand(1, 16, 16), {}, ValueError, "4-D"),
        (torch.rand(1, 1, 16, 16) * 3, {}, ValueError, r"\[0, 1\]"),
        (torch.full((1, 1, 16, 16), float("inf")), {}, ValueError, "NaN or infinite"),
        (torch.rand(1, 1, 16, 16), dict(target=2), ValueError, "out of range"),
        (torch.rand(1, 1, 16, 16), dict(target=-1), ValueError, "out of range"),
        (torch.rand(2, 1, 16, 16), dict(target=[0, 1, 0]), ValueError, "3 entries"),
        (torch.rand(1, 1, 16, 16), dict(target=0.5), TypeError, "int"),
        (
            torch.rand(1, 1, 16, 16),
            dict(target=1, counterfactual_target=1),
            ValueError,
            "counterfactual_target equals target",
        ),
        (torch.rand(1, 1, 16, 16), dict(counterfactual_target=5), ValueError, "out of range"),
        (torch.rand(1, 1, 16, 16), dict(path="spline"), ValueError, "path must be"),
        (torch.rand(1, 1, 16, 16), dict(compare_to="x"), ValueError, "compare_to"),
        (torch.rand(1, 1, 16, 16), dict(n_steps=0), ValueError, "n_steps"),
        (torch.rand(1, 1, 16, 16), dict(refine_steps=-1), ValueError, "refine_steps"),
        (torch.rand(1, 1, 16, 16), dict(t_end=0.0), ValueError, "t_end"),
        (torch.rand(1, 1, 16, 16), dict(fit_steps=-1), ValueError, "fit_steps"),
        (torch.rand(1, 1, 16, 16), dict(fit_steps=2.5), ValueError, "fit_steps"),
        (torch.rand(1, 1, 16, 16), dict(fit_steps=True), ValueError, "fit_steps"),
        (torch.rand(1, 1, 16, 16), dict(n_steps=True), ValueError, "n_steps"),
    ],
)
def test_validation(setup, inputs, kwargs, exc, match) -> None:  # type: ignore[no-untyped-def]
    cae, probe, _ = setup
    with pytest.raises(exc, match=match):
        CaeCounterfactual(probe, cae).attribute(inputs, **kwargs)


def test_validation_of_models(setup) -> None:  # type: ignore[no-untyped-def]
    cae, probe, x = setup
    with pytest.raises(TypeError, match="ClassAssociationEmbedding"):
        CaeCounterfactual(probe, probe)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="returns 3 class scores"):
        CaeCounterfactual(lambda i: torch.zeros(i.shape[0], 3), cae).attribute(x[:1])
    with pytest.raises(ValueError, match="1-tuple"):
        CaeCounterfactual(probe, cae).attribute((x[:1], x[:1]))
    bare = ClassAssociationEmbedding(16, 1, 2, base_channels=4, n_res_blocks=1, mlp_dim=8)
    with pytest.raises(ValueError, match="no class-code centroids"):
        CaeCounterfactual(probe, bare).attribute(x[:1])


def test_reconstruction_not_of_target_class_is_flagged(setup) -> None:  # type: ignore[no-untyped-def]
    cae, probe, x = setup
    # the reconstruction of image 0 is class 0 by construction, so class 1 cannot be explained
    with pytest.warns(UserWarning, match="reconstructions of examples \\[0\\]"):
        res = explain(cae, probe, x[:1], target=1, counterfactual_target=0, fit_steps=0)
    assert res.flipped.tolist() == [False]
    assert math.isnan(float(res.flip_position[0]))
    assert float(res.attributions.abs().sum()) == 0.0
    torch.testing.assert_close(res.counterfactuals, res.reconstructions)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 10_000),
    path=st.sampled_from(["linear", "gradient"]),
    n_steps=st.integers(1, 8),
    refine=st.integers(0, 5),
)
def test_invariants_hold_for_random_images(setup, seed, path, n_steps, refine) -> None:  # type: ignore[no-untyped-def]
    cae, probe, _ = setup
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res = explain(cae, probe, x, path=path, n_steps=n_steps, refine_steps=refine, t_end=2.0)
    assert float(res.attributions.min()) >= 0
    torch.testing.assert_close(res.attributions, (res.counterfactuals - res.reconstructions).abs())
    with torch.no_grad():
        pred = probe(res.counterfactuals).argmax(1)
    f = res.flipped
    assert bool((pred[f] != res.target[f]).all())
    assert bool(torch.isnan(res.flip_position[~f]).all())
    assert bool(((res.flip_position[f] > 0) & (res.flip_position[f] <= 2.0 + 1e-6)).all())
    fit_passes = 31 if bool(res.fitted.any()) else 0  # default fit_steps=30, plus its check
    assert res.decoder_passes <= 2 + n_steps + refine + fit_passes
    torch.testing.assert_close(res.path_codes[:, 0], res.class_codes)
    # fitted or not, every explained reconstruction shows the target
    ok = res.reconstruction_prediction == res.target
    assert bool(ok[res.fitted].all())


def test_counterfactual_target_equal_to_predicted_class_is_rejected(setup) -> None:  # type: ignore[no-untyped-def]
    cae, probe, x = setup
    pred = int(probe(x[:1]).argmax(1))
    with pytest.raises(ValueError, match="equals the predicted class"):
        CaeCounterfactual(probe, cae).attribute(x[:1], counterfactual_target=pred)
