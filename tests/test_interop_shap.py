"""shap adapters: exact Shapley values, segment identity, SPEC §4 traps, conversions."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_secam.interop.shap import (
    SegmentMasker,
    attribution_to_shap_explanation,
    fill_image,
    scores_to_shap_explanation,
    segment_presence_fn,
    shap_explainer_explain,
    shap_explanation_to_attribution,
    shap_explanation_to_scores,
    shap_kernel_explain,
)
from captum_secam.segmentation import scores_to_mask, segment, segment_means

shap = pytest.importorskip("shap")


class SegmentLinear(nn.Module):
    """Scores linear in per-segment means: Shapley value of j is ``W[c, j] * (m_j - f_j)``."""

    def __init__(self, mask: torch.Tensor, weights: torch.Tensor) -> None:
        super().__init__()
        ids = mask.reshape(-1)
        counts = torch.bincount(ids).double()
        self.register_buffer("pixel_weights", (weights.double()[:, ids] / counts[ids]).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1).reshape(x.shape[0], -1) @ self.pixel_weights.T


def _shuffled_grid(size: int, n_segments: int, seed: int) -> torch.Tensor:
    grid = segment(torch.zeros(1, 3, size, size), "grid", n_segments=n_segments)
    perm = torch.randperm(int(grid.max()) + 1, generator=torch.Generator().manual_seed(seed))
    return perm[grid]


def _toy(seed: int = 0, size: int = 16, n_segments: int = 16, n_classes: int = 3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, size, size, generator=gen)
    mask = _shuffled_grid(size, n_segments, seed)
    weights = torch.randn(n_classes, int(mask.max()) + 1, generator=gen)
    return SegmentLinear(mask[0, 0], weights).eval(), x, mask, weights


def _exact(weights, x, mask, cls, fill=0.0):
    return (weights[cls] * (segment_means(x, mask)[0] - fill)).double().numpy()


# ---------------------------------------------------------------- exact Shapley values


def test_kernel_explainer_matches_exact_shapley_on_a_linear_game():
    model, x, mask, weights = _toy(seed=1)
    expl = shap_kernel_explain(model, x, mask, target=1, n_samples=300, baseline=0.2)
    scores = shap_explanation_to_scores(expl)
    assert scores.shape == (1, 16)
    np.testing.assert_allclose(scores[0], _exact(weights, x, mask, 1, 0.2), atol=1e-4)
    # efficiency: values sum to f(x) - f(all filled), the base value is f(all filled)
    full = float(model(x)[0, 1])
    filled = float(model(torch.full_like(x, 0.2))[0, 1])
    assert scores.sum() == pytest.approx(full - filled, abs=1e-4)
    assert float(expl.base_values[0]) == pytest.approx(filled, abs=1e-5)


def test_trap_kernel_keeps_more_than_ten_segments():
    # shap's default l1_reg="num_features(10)" would zero 6 of these 16 segments.
    model, x, mask, _ = _toy(seed=2)
    ours = shap_explanation_to_scores(shap_kernel_explain(model, x, mask, 0, n_samples=300))[0]
    assert np.count_nonzero(np.abs(ours) > 1e-6) == 16
    trapped = shap_explanation_to_scores(
        shap_kernel_explain(model, x, mask, 0, n_samples=300, l1_reg="num_features(10)")
    )[0]
    assert np.count_nonzero(np.abs(trapped) > 1e-9) == 10  # the trap is real


@pytest.mark.parametrize("algorithm", ["permutation", "exact"])
def test_explainer_with_segment_masker_matches_exact_shapley(algorithm):
    n_segments = 16 if algorithm == "permutation" else 6
    model, x, mask, weights = _toy(seed=3, n_segments=n_segments)
    k = int(mask.max()) + 1
    expl = shap_explainer_explain(
        model,
        x,
        mask,
        target=2,
        max_evals=4 * k + 2 if algorithm == "permutation" else 2**k,
        baseline=0.5,
        algorithm=algorithm,
    )
    assert np.asarray(expl.values).shape == (1, k)
    np.testing.assert_allclose(expl.values[0], _exact(weights, x, mask, 2, 0.5), atol=1e-4)


def test_shap_output_layout_we_rely_on():
    # shap 0.51: a single-output game gives one value per feature for one explained row.
    k = 5
    explainer = shap.KernelExplainer(lambda z: z @ np.arange(1.0, k + 1), np.zeros((1, k)))
    phi = np.asarray(explainer.shap_values(np.ones((1, k)), nsamples=64, l1_reg=False, silent=True))
    assert phi.size == k
    np.testing.assert_allclose(phi.reshape(-1), np.arange(1.0, k + 1), atol=1e-8)


# ---------------------------------------------------------------- segment identity


@pytest.mark.parametrize("method", ["kernel", "permutation"])
def test_planted_segment_lands_on_its_id(method):
    _, x, mask, _ = _toy(seed=4)
    planted = 9
    weights = torch.zeros(1, 16)
    weights[0, planted] = 3.0
    model = SegmentLinear(mask[0, 0], weights)
    if method == "kernel":
        expl = shap_kernel_explain(model, x, mask, 0, n_samples=100)
    else:
        expl = shap_explainer_explain(model, x, mask, 0, max_evals=66)
    scores = shap_explanation_to_scores(expl)[0]
    assert int(np.argmax(np.abs(scores))) == planted
    assert np.abs(np.delete(scores, planted)).max() < 1e-6


def test_segment_masker_hides_exactly_the_switched_off_segments():
    # shap's maskers.Image would blank grid rectangles; this one hides whole superpixels.
    _, x, mask, _ = _toy(seed=5)
    masker = SegmentMasker(mask, baseline=-1.0)
    assert masker.shape == (1, 16)
    assert masker.mask_shapes(x[0].numpy()) == [(16,)]
    keep = np.ones(16, dtype=bool)
    keep[[2, 7]] = False
    out = masker(keep, x[0].numpy())
    assert out.shape == (1, 3, 16, 16)
    hidden = np.isin(mask[0, 0].numpy(), [2, 7])
    np.testing.assert_array_equal(out[0][:, hidden], -1.0)
    np.testing.assert_array_equal(out[0][:, ~hidden], x[0].numpy()[:, ~hidden])
    np.testing.assert_array_equal(masker(True, x[0].numpy())[0], x[0].numpy())
    with pytest.raises(ValueError, match="C×H×W images"):
        masker(keep, x[0, 0].numpy())


def test_fill_options():
    _, x, mask, _ = _toy(seed=6)
    image, ids = x[0], mask[0, 0]
    assert torch.equal(fill_image(image, ids, 0.3), torch.full_like(image, 0.3))
    per_channel = fill_image(image, ids, [0.1, 0.2, 0.3])
    assert torch.allclose(per_channel[:, 4, 5], torch.tensor([0.1, 0.2, 0.3]))
    mean = fill_image(image, ids, "mean")
    assert torch.allclose(mean[:, 0, 0], image.mean(dim=(1, 2)))
    seg = fill_image(image, ids, "segment_mean")
    inside = ids == 3
    assert torch.allclose(seg[0][inside], image[0][inside].mean().expand(int(inside.sum())))
    other = torch.rand(3, 16, 16)
    assert torch.equal(fill_image(image, ids, other), other)
    with pytest.raises(ValueError, match="does not fit"):
        fill_image(image, ids, torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="unknown baseline"):
        fill_image(image, ids, "blur")


def test_segment_presence_game_values():
    model, x, mask, weights = _toy(seed=7)
    game = segment_presence_fn(model, x, mask, target=0, baseline=0.0, batch_size=3)
    z = np.eye(16)
    np.testing.assert_allclose(game(z), _exact(weights, x, mask, 0), atol=1e-5)
    assert game(np.ones(16))[0] == pytest.approx(float(model(x)[0, 0]), abs=1e-5)
    with pytest.raises(ValueError, match="M×16"):
        game(np.ones((2, 5)))


# ---------------------------------------------------------------- conversions


@settings(max_examples=25, deadline=None)
@given(
    n_segments=st.integers(2, 30),
    seed=st.integers(0, 10_000),
    n_channels=st.sampled_from([1, 3]),
)
def test_round_trips_are_identities(n_segments, seed, n_channels):
    mask = _shuffled_grid(12, n_segments, seed)
    k = int(mask.max()) + 1
    scores = torch.randn(1, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expl = scores_to_shap_explanation(scores)
    np.testing.assert_array_equal(shap_explanation_to_scores(expl), scores.numpy())
    attr = shap_explanation_to_attribution(expl, mask, n_channels=n_channels)
    assert attr.shape == (1, n_channels, 12, 12)
    assert torch.equal(attr, scores_to_mask(scores, mask, n_channels))
    back = attribution_to_shap_explanation(attr, mask)
    np.testing.assert_allclose(shap_explanation_to_scores(back), scores.numpy(), atol=1e-12)


def test_conversion_errors():
    mask = _shuffled_grid(12, 9, 0)
    with pytest.raises(ValueError, match="not constant on the segments"):
        attribution_to_shap_explanation(torch.rand(1, 3, 12, 12), mask)
    with pytest.raises(ValueError, match="segment values"):
        shap_explanation_to_attribution(scores_to_shap_explanation(np.zeros(4)), mask)
    with pytest.raises(ValueError, match="N×K"):
        shap_explanation_to_scores(np.zeros((1, 2, 3)))


def test_seeded_and_global_rng_restored():
    model, x, mask, _ = _toy(seed=8, n_segments=25)
    np.random.seed(123)  # noqa: NPY002 - shap samples from numpy's global RNG
    before = np.random.get_state()[1].copy()  # noqa: NPY002
    a = shap_kernel_explain(model, x, mask, 0, n_samples=100, seed=1).values
    after = np.random.get_state()[1]  # noqa: NPY002
    np.testing.assert_array_equal(before, after)
    b = shap_kernel_explain(model, x, mask, 0, n_samples=100, seed=1).values
    np.testing.assert_array_equal(a, b)


def test_validation_errors():
    model, x, mask, _ = _toy()
    with pytest.raises(ValueError, match="at least 33"):
        shap_explainer_explain(model, x, mask, 0, max_evals=10)
    with pytest.raises(ValueError, match="algorithm"):
        shap_explainer_explain(model, x, mask, 0, algorithm="partition")
    with pytest.raises(ValueError, match="contiguous"):
        shap_kernel_explain(model, x, mask + 1, 0, n_samples=10)


def test_missing_shap_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "shap", None)
    model, x, mask, _ = _toy()
    with pytest.raises(ImportError, match=r'pip install "captum-secam\[shap\]"'):
        shap_kernel_explain(model, x, mask, 0, n_samples=10)
    with pytest.raises(ImportError, match=r"captum-secam\[shap\]"):
        scores_to_shap_explanation(np.zeros(3))
