"""lime adapters: segment identity, the SPEC §4 traps, determinism, missing extra."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from captum_secam.interop.lime import (
    lime_classifier_fn,
    lime_explanation_to_scores,
    lime_image_from_input,
    lime_segment_scores,
    lime_segmentation_fn,
)
from captum_secam.segmentation import segment, segment_means

pytest.importorskip("lime")

N_CLASSES = 8
LOWEST_CLASS = 7  # its bias keeps it out of lime's default top 5 labels


class SegmentLinear(nn.Module):
    """Class scores linear in the per-segment means of the channel-mean image.

    ``scores[c] = sum_j W[c, j] * mean_{p in S_j} mean_ch x[:, p] + b[c]``, so with a constant
    fill the segment-presence game is linear and the Shapley value of segment ``j`` for class
    ``c`` is ``W[c, j] * (m_j - f_j)``.
    """

    def __init__(self, mask: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        ids = mask.reshape(-1)
        counts = torch.bincount(ids).double()
        pixel_weights = weights.double()[:, ids] / counts[ids]  # classes × HW
        self.register_buffer("pixel_weights", pixel_weights.float())
        self.register_buffer("bias", bias.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1).reshape(x.shape[0], -1) @ self.pixel_weights.T + self.bias


def _shuffled_grid(size: int, n_segments: int, seed: int) -> torch.Tensor:
    """A grid segmentation whose ids are shuffled, so id order is not raster order."""
    grid = segment(torch.zeros(1, 3, size, size), "grid", n_segments=n_segments)
    k = int(grid.max()) + 1
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    return perm[grid]


def _toy(seed: int = 0, size: int = 16, n_segments: int = 16):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, size, size, generator=gen)
    mask = _shuffled_grid(size, n_segments, seed)
    k = int(mask.max()) + 1
    weights = torch.randn(N_CLASSES, k, generator=gen)
    bias = torch.zeros(N_CLASSES)
    bias[LOWEST_CLASS] = -100.0
    model = SegmentLinear(mask[0, 0], weights, bias).eval()
    return model, x, mask, weights


def _exact(weights: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, cls: int, fill: float):
    return (weights[cls] * (segment_means(x, mask)[0] - fill)).numpy()


def test_segmentation_fn_returns_the_mask_and_checks_the_size():
    mask = _shuffled_grid(16, 16, 1)
    fn = lime_segmentation_fn(mask)
    out = fn(np.zeros((16, 16, 3)))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, mask[0, 0].numpy())
    with pytest.raises(ValueError, match="segment the image lime explains"):
        fn(np.zeros((8, 8, 3)))


@pytest.mark.parametrize("shift", [1, 5])
def test_trap_ids_starting_above_zero_are_rejected(shift):
    # skimage's slic numbers from 1: lime would see a phantom feature 0 and never switch off
    # the last segment.
    mask = _shuffled_grid(16, 16, 0) + shift
    with pytest.raises(ValueError, match=r"contiguous 0\.\.K-1"):
        lime_segmentation_fn(mask)
    model, x, _, _ = _toy()
    with pytest.raises(ValueError, match="relabel_sequential"):
        lime_segment_scores(model, x, mask, target=0, n_samples=20)


def test_trap_gaps_in_ids_are_rejected():
    mask = _shuffled_grid(16, 16, 0)
    mask[mask == 3] = 4  # id 3 disappears: a dead feature
    with pytest.raises(ValueError, match="contiguous"):
        lime_segmentation_fn(mask)


def test_float_masks_are_rejected():
    with pytest.raises(TypeError, match="integer"):
        lime_segmentation_fn(_shuffled_grid(16, 16, 0).float())


def test_planted_segment_lands_on_its_id():
    # Only segment `planted` matters; with shuffled ids, its score must be at index `planted`.
    _, x, mask, _ = _toy(seed=3)
    k = int(mask.max()) + 1
    planted = 11
    weights = torch.zeros(N_CLASSES, k)
    weights[0, planted] = 5.0
    planted_model = SegmentLinear(mask[0, 0], weights, torch.zeros(N_CLASSES))
    scores = lime_segment_scores(planted_model, x, mask, target=0, n_samples=200)
    assert scores.shape == (1, k)
    assert int(np.argmax(np.abs(scores[0]))) == planted
    others = np.delete(scores[0], planted)
    assert np.abs(others).max() < 0.05 * abs(scores[0, planted])


def test_scores_track_exact_shapley_values_of_a_linear_game():
    model, x, mask, weights = _toy(seed=1)
    scores = lime_segment_scores(model, x, mask, target=2, n_samples=400, baseline=0.25)[0]
    exact = _exact(weights, x, mask, 2, 0.25)
    # lime's ridge (alpha=1) shrinks the coefficients a little; the ranking is the same.
    assert np.corrcoef(scores, exact)[0, 1] > 0.99
    assert np.all(np.abs(scores) > 0)  # every segment read back (num_features covers K)


def test_trap_top_labels_does_not_override_the_target():
    # Class 7 is never in the model's top 5: lime's default top_labels=5 would skip it.
    model, x, mask, weights = _toy(seed=2)
    assert LOWEST_CLASS not in model(x)[0].argsort(descending=True)[:5].tolist()
    scores = lime_segment_scores(model, x, mask, target=LOWEST_CLASS, n_samples=300)[0]
    exact = _exact(weights, x, mask, LOWEST_CLASS, 0.0)
    assert np.corrcoef(scores, exact)[0, 1] > 0.99


def test_reading_a_label_lime_did_not_explain_names_the_trap():
    model, x, mask, _ = _toy()
    _, explanations = lime_segment_scores(
        model, x, mask, target=1, n_samples=30, return_explanations=True
    )
    with pytest.raises(KeyError, match="top_labels"):
        lime_explanation_to_scores(explanations[0], label=4)
    np.testing.assert_allclose(
        lime_explanation_to_scores(explanations[0], 1),
        lime_segment_scores(model, x, mask, target=1, n_samples=30)[0],
    )


def test_trap_fill_is_explicit():
    # The model only sees segment means, so filling a segment with its own mean colour
    # (lime's hide_color=None) changes nothing, while a grey fill does.
    model, x, mask, _ = _toy(seed=4)
    seg_mean = lime_segment_scores(model, x, mask, 0, n_samples=100, baseline="segment_mean")
    grey = lime_segment_scores(model, x, mask, 0, n_samples=100, baseline=0.0)
    assert np.abs(seg_mean).max() < 1e-6
    assert np.abs(grey).max() > 0.1


def test_same_seed_same_scores_and_seed_matters():
    model, x, mask, _ = _toy()
    a = lime_segment_scores(model, x, mask, 0, n_samples=40, random_state=5)
    b = lime_segment_scores(model, x, mask, 0, n_samples=40, random_state=5)
    c = lime_segment_scores(model, x, mask, 0, n_samples=40, random_state=6)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_photo_with_preprocess_equals_model_space():
    model, x, mask, _ = _toy(seed=5)
    photo = np.round(x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    x_photo = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255

    def preprocess(batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(batch, dtype=np.float32)).permute(0, 3, 1, 2) / 255

    via_photo = lime_segment_scores(
        model, x_photo, mask, 0, n_samples=80, photo=photo, preprocess=preprocess, baseline=127.5
    )
    via_input = lime_segment_scores(model, x_photo, mask, 0, n_samples=80, baseline=0.5)
    np.testing.assert_allclose(via_photo, via_input, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="photo and preprocess go together"):
        lime_segment_scores(model, x_photo, mask, 0, n_samples=10, photo=photo)


def test_classifier_fn_batches_and_matches_the_model():
    model, x, _, _ = _toy()
    images = np.stack([lime_image_from_input(x), lime_image_from_input(x * 0.5)])
    fn = lime_classifier_fn(model, batch_size=1)
    out = fn(images)
    assert out.dtype == np.float64 and out.shape == (2, N_CLASSES)
    expected = model(torch.cat([x, x * 0.5])).detach().double().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="batch of H×W×C"):
        fn(images[0])
    with pytest.raises(ValueError, match="batch_size"):
        lime_classifier_fn(model, batch_size=0)


def test_batch_of_images_with_per_image_targets():
    model, x, mask, weights = _toy(seed=6)
    batch = torch.cat([x, x.flip(-1)])
    scores = lime_segment_scores(model, batch, mask, target=[0, 3], n_samples=300)
    assert scores.shape == (2, int(mask.max()) + 1)
    for i, cls in enumerate((0, 3)):
        exact = (weights[cls] * segment_means(batch[i : i + 1], mask)[0]).numpy()
        assert np.corrcoef(scores[i], exact)[0, 1] > 0.99


def test_one_colour_fill_only():
    model, x, mask, _ = _toy()
    with pytest.raises(ValueError, match="one colour"):
        lime_segment_scores(model, x, mask, 0, n_samples=10, baseline=torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="unknown baseline"):
        lime_segment_scores(model, x, mask, 0, n_samples=10, baseline="blur")


def test_missing_lime_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lime", None)
    monkeypatch.setitem(sys.modules, "lime.lime_image", None)
    model, x, mask, _ = _toy()
    with pytest.raises(ImportError, match=r'pip install "captum-secam\[lime\]"'):
        lime_segment_scores(model, x, mask, 0, n_samples=10)
