"""Captum's perturbation methods on a feature_mask (captum_secam.interop.captum_methods).

The model here is built so that its output is an exactly known function of which segments are
present: with inputs of ones and a baseline of zero, a segment's mean is 1 when it is kept and 0
when it is switched off. Exact Shapley values then follow by enumerating all coalitions.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_secam.interop.captum_methods import (
    CAPTUM_METHODS,
    WeightedRidge,
    attribution_to_segment_scores,
    captum_attribute,
    lime_cosine_kernel,
)
from captum_secam.segmentation import scores_to_mask, segment_means


def grid_mask(height: int, width: int, rows: int, cols: int) -> torch.Tensor:
    r = torch.arange(height)[:, None] * rows // height
    c = torch.arange(width)[None, :] * cols // width
    return (r * cols + c)[None, None].long()


class PresenceModel(nn.Module):
    """Class 0 score: ``w · p + pair_weight · p_0 · p_1 + bias``; class 1: its negative.

    ``p`` is the vector of per-segment means of the input (1 = segment present, 0 = off).
    """

    def __init__(self, mask: torch.Tensor, weights: list[float], pair_weight: float = 0.0):
        super().__init__()
        self.register_buffer("mask", mask)
        self.weights = torch.tensor(weights)
        self.pair_weight = pair_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        presence = segment_means(x, self.mask.expand(x.shape[0], -1, -1, -1))
        score = presence @ self.weights + self.pair_weight * presence[:, 0] * presence[:, 1] + 0.5
        return torch.stack([score, -score], dim=1)


def exact_shapley(model: PresenceModel, n_segments: int) -> torch.Tensor:
    """Shapley values of class 0 by enumerating every coalition."""

    def value(coalition: tuple[int, ...]) -> float:
        presence = torch.zeros(1, n_segments)
        presence[0, list(coalition)] = 1.0
        score = presence @ model.weights + model.pair_weight * presence[:, 0] * presence[:, 1]
        return float(score[0])

    phi = torch.zeros(n_segments)
    others = range(n_segments)
    for j in others:
        rest = [i for i in others if i != j]
        for size in range(n_segments):
            weight = math.factorial(size) * math.factorial(n_segments - size - 1)
            weight /= math.factorial(n_segments)
            for coalition in itertools.combinations(rest, size):
                phi[j] += weight * (value((*coalition, j)) - value(coalition))
    return phi


@pytest.fixture
def mask6() -> torch.Tensor:
    return grid_mask(12, 18, 2, 3)  # 6 segments, non-square image


def ones_like_mask(mask: torch.Tensor, channels: int = 3) -> torch.Tensor:
    return torch.ones(1, channels, *mask.shape[2:])


WEIGHTS = [1.0, -2.0, 0.5, 3.0, 0.0, -1.0]


@pytest.mark.parametrize("method", ["kernelshap", "shapley_sampling", "feature_ablation"])
def test_linear_model_gives_exact_shapley_values(method: str, mask6: torch.Tensor) -> None:
    model = PresenceModel(mask6, WEIGHTS)
    x = ones_like_mask(mask6)
    scores = captum_attribute(method, model, x, mask6, target=0, n_samples=200, seed=0)
    assert scores.shape == (1, 6)
    torch.testing.assert_close(scores[0], exact_shapley(model, 6), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(scores[0], torch.tensor(WEIGHTS), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["kernelshap", "shapley_sampling"])
def test_interaction_is_split_as_shapley_values(method: str, mask6: torch.Tensor) -> None:
    # The pair term gives each of segments 0 and 1 half of it (exact Shapley values).
    model = PresenceModel(mask6, WEIGHTS, pair_weight=2.0)
    expected = exact_shapley(model, 6)
    assert float(expected[0]) == pytest.approx(WEIGHTS[0] + 1.0)
    x = ones_like_mask(mask6)
    n_samples = 3000 if method == "kernelshap" else 300
    scores = captum_attribute(method, model, x, mask6, target=0, n_samples=n_samples, seed=0)
    torch.testing.assert_close(scores[0], expected, atol=0.15, rtol=0.0)
    # Efficiency: the values add up to f(all) − f(none).
    assert float(scores.sum()) == pytest.approx(float(expected.sum()), abs=0.15)


def test_lime_surrogate_is_not_all_zero_and_ranks_like_the_model(mask6: torch.Tensor) -> None:
    model = PresenceModel(mask6, WEIGHTS)
    x = ones_like_mask(mask6)
    scores = captum_attribute("lime", model, x, mask6, target=0, n_samples=300, seed=0)[0]
    assert bool((scores != 0).all())
    # A linear model is recovered up to the ridge shrinkage: same order, same signs.
    assert torch.equal(scores.argsort(), torch.tensor(WEIGHTS).argsort())
    assert torch.equal(
        torch.sign(scores[[0, 1, 2, 3, 5]]), torch.sign(torch.tensor(WEIGHTS))[[0, 1, 2, 3, 5]]
    )


@pytest.mark.parametrize("method", CAPTUM_METHODS)
def test_planted_segment_is_found(method: str) -> None:
    mask = grid_mask(16, 16, 3, 3)  # 9 segments
    weights = [0.0] * 9
    weights[7] = 4.0
    model = PresenceModel(mask, weights)
    x = ones_like_mask(mask)
    scores = captum_attribute(method, model, x, mask, target=0, n_samples=150, seed=1)[0]
    assert int(scores.argmax()) == 7
    others = torch.cat([scores[:7], scores[8:]])
    assert float(others.abs().max()) < 0.2 * float(scores[7])


def test_target_none_uses_the_predicted_class(mask6: torch.Tensor) -> None:
    model = PresenceModel(mask6, WEIGHTS)  # class 0 score is 2.0 > class 1 score -2.0
    x = ones_like_mask(mask6)
    auto = captum_attribute("feature_ablation", model, x, mask6)
    explicit = captum_attribute("feature_ablation", model, x, mask6, target=0)
    other = captum_attribute("feature_ablation", model, x, mask6, target=1)
    torch.testing.assert_close(auto, explicit)
    torch.testing.assert_close(other, -explicit)


def test_batch_with_different_segment_counts_is_padded(mask6: torch.Tensor) -> None:
    small = grid_mask(12, 18, 2, 2)  # 4 segments
    masks = torch.cat([mask6, small])
    pixel_weights = torch.arange(12 * 18, dtype=torch.float32).reshape(1, 1, 12, 18) / 100

    class PixelLinear(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            score = (x * pixel_weights).sum(dim=(1, 2, 3))
            return torch.stack([score, -score], dim=1)

    x = torch.ones(2, 3, 12, 18)
    scores = captum_attribute("feature_ablation", PixelLinear(), x, masks, target=[0, 1])
    assert scores.shape == (2, 6)

    def segment_sums(mask: torch.Tensor) -> torch.Tensor:
        k = int(mask.max()) + 1
        return torch.stack([3 * pixel_weights[mask == j].sum() for j in range(k)])

    torch.testing.assert_close(scores[0], segment_sums(mask6), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(scores[1, :4], -segment_sums(small), rtol=1e-5, atol=1e-3)
    assert torch.equal(scores[1, 4:], torch.zeros(2))


def test_input_shaped_output_is_the_scores_on_the_segments(mask6: torch.Tensor) -> None:
    model = PresenceModel(mask6, WEIGHTS)
    x = ones_like_mask(mask6)
    scores = captum_attribute("kernelshap", model, x, mask6, target=0, n_samples=100)
    painted = captum_attribute(
        "kernelshap", model, x, mask6, target=0, n_samples=100, return_input_shape=True
    )
    assert painted.shape == x.shape
    torch.testing.assert_close(painted, scores_to_mask(scores, mask6, n_channels=3))


def test_seed_makes_runs_repeatable_and_keeps_the_global_rng(mask6: torch.Tensor) -> None:
    model = PresenceModel(mask6, WEIGHTS, pair_weight=1.0)
    x = ones_like_mask(mask6)
    state = torch.random.get_rng_state()
    first = captum_attribute("lime", model, x, mask6, target=0, n_samples=40, seed=3)
    second = captum_attribute("lime", model, x, mask6, target=0, n_samples=40, seed=3)
    other = captum_attribute("lime", model, x, mask6, target=0, n_samples=40, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_baselines_set_the_switched_off_value(mask6: torch.Tensor) -> None:
    model = PresenceModel(mask6, WEIGHTS)
    x = ones_like_mask(mask6)
    # Baseline 0.5: switching a segment off halves its presence, so ablation gives w/2.
    for baselines in (0.5, torch.full((3, 12, 18), 0.5), torch.full((1, 3, 12, 18), 0.5)):
        scores = captum_attribute("feature_ablation", model, x, mask6, 0, baselines=baselines)
        torch.testing.assert_close(scores[0], torch.tensor(WEIGHTS) / 2)


def test_model_gradients_are_untouched(mask6: torch.Tensor) -> None:
    conv = nn.Conv2d(3, 2, 1)
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.rand(1, 3, 12, 18)
    captum_attribute("lime", model, x, mask6, target=1, n_samples=20)
    assert conv.weight.grad is None


@settings(max_examples=15, deadline=None)
@given(
    weights=st.lists(
        st.floats(-5, 5, allow_nan=False).map(lambda v: round(v, 2)), min_size=4, max_size=4
    )
)
def test_additive_model_property(weights: list[float]) -> None:
    """For any additive model, ablation and Shapley sampling both return the weights."""
    mask = grid_mask(8, 8, 2, 2)
    model = PresenceModel(mask, weights)
    x = ones_like_mask(mask, channels=1)
    for method in ("feature_ablation", "shapley_sampling"):
        scores = captum_attribute(method, model, x, mask, target=0, n_samples=3)
        torch.testing.assert_close(scores[0], torch.tensor(weights), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def test_float_mask_is_rejected(mask6: torch.Tensor) -> None:
    model = PresenceModel(mask6, WEIGHTS)
    with pytest.raises(TypeError, match="integer segment ids"):
        captum_attribute("lime", model, ones_like_mask(mask6), mask6.float(), target=0)


def test_mask_with_gaps_is_rejected(mask6: torch.Tensor) -> None:
    model = PresenceModel(mask6, WEIGHTS)
    with pytest.raises(ValueError, match="contiguous"):
        captum_attribute("kernelshap", model, ones_like_mask(mask6), mask6 * 2, target=0)


def test_mask_of_wrong_size_is_rejected(mask6: torch.Tensor) -> None:
    model = PresenceModel(mask6, WEIGHTS)
    with pytest.raises(ValueError, match="input is 12×18"):
        captum_attribute("lime", model, ones_like_mask(mask6), grid_mask(12, 12, 2, 2), 0)


def test_bad_arguments_are_rejected(mask6: torch.Tensor) -> None:
    model = PresenceModel(mask6, WEIGHTS)
    x = ones_like_mask(mask6)
    with pytest.raises(ValueError, match="unknown method"):
        captum_attribute("occlusion", model, x, mask6, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        captum_attribute("lime", model, x, mask6, 0, n_samples=0)
    with pytest.raises(ValueError, match="perturbations_per_eval"):
        captum_attribute("lime", model, x, mask6, 0, perturbations_per_eval=0)
    with pytest.raises(ValueError, match="baselines of shape"):
        captum_attribute("feature_ablation", model, x, mask6, 0, baselines=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="got 2 targets"):
        captum_attribute("feature_ablation", model, x, mask6, target=[0, 1])
    with pytest.raises(ValueError, match="4-D"):
        captum_attribute("lime", model, x[0], mask6, 0)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def test_attribution_to_segment_scores(mask6: torch.Tensor) -> None:
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    painted = scores_to_mask(scores, mask6, n_channels=3)
    torch.testing.assert_close(
        attribution_to_segment_scores(painted, mask6, check_constant=True), scores
    )
    noisy = painted.clone()
    noisy[0, 0, 0, 0] += 1.0
    with pytest.raises(ValueError, match="not constant on the segments"):
        attribution_to_segment_scores(noisy, mask6, check_constant=True)
    # Without the check it is the per-segment mean (channels included).
    means = attribution_to_segment_scores(noisy, mask6)
    segment0_pixels = int((mask6 == 0).sum())
    assert float(means[0, 0]) == pytest.approx(1.0 + 1.0 / (3 * segment0_pixels))
    with pytest.raises(ValueError, match="N×C×H×W"):
        attribution_to_segment_scores(painted[0], mask6)


def test_weighted_ridge_recovers_a_linear_function() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((200, 5), 0.5))
    coef = torch.tensor([1.0, -2.0, 0.0, 0.5, 3.0])
    y = x @ coef + 0.7
    w = torch.rand(200) + 0.1
    exact = WeightedRidge(alpha=0.0)
    exact.fit(DataLoader(TensorDataset(x, y, w), batch_size=200))
    torch.testing.assert_close(exact.representation()[0], coef, atol=1e-5, rtol=0)
    torch.testing.assert_close(exact(x), y, atol=1e-5, rtol=0)
    shrunk = WeightedRidge(alpha=50.0)
    shrunk.fit(DataLoader(TensorDataset(x, y, w), batch_size=50))  # several batches
    assert float(shrunk.representation().norm()) < float(coef.norm())
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        WeightedRidge(alpha=-1.0)
    with pytest.raises(RuntimeError, match="fit"):
        WeightedRidge().representation()


def test_lime_cosine_kernel_matches_the_lime_package() -> None:
    kernel = lime_cosine_kernel(0.25)
    assert float(kernel(None, None, torch.ones(1, 8))) == pytest.approx(1.0)
    half = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0]])
    distance = 1 - 4 / math.sqrt(4 * 8)
    assert float(kernel(None, None, half)) == pytest.approx(
        math.sqrt(math.exp(-(distance**2) / 0.25**2)), rel=1e-6
    )
    assert float(kernel(None, None, torch.zeros(1, 8))) == pytest.approx(
        math.sqrt(math.exp(-1 / 0.25**2)), rel=1e-6
    )
    with pytest.raises(ValueError, match="kernel_width"):
        lime_cosine_kernel(0.0)


def test_target_out_of_range_is_rejected(mask6: torch.Tensor) -> None:
    model = PresenceModel(mask6, WEIGHTS)
    with pytest.raises(ValueError, match="out of range"):
        captum_attribute("lime", model, ones_like_mask(mask6), mask6, target=2)
