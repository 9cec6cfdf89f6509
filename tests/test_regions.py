"""Region selection (top-k segments, threshold of the maximum)."""

from __future__ import annotations

import pytest
import torch
from conftest import grid_mask

from captum_secam import scores_to_mask, select_threshold, select_top_k


@pytest.fixture
def scores() -> torch.Tensor:
    # image 0: segment 2 best, then 0; image 1 has only 2 segments (padded column 2, 3 = 0)
    return torch.tensor([[0.5, -1.0, 0.9, 0.1], [0.2, 0.8, 0.0, 0.0]])


@pytest.fixture
def masks() -> torch.Tensor:
    return torch.cat([grid_mask(4, 4, 2, 2), grid_mask(4, 4, 1, 2)])


def test_top_k_selects_the_best_segments(scores, masks):
    region = select_top_k(scores, masks, k=2)
    assert region.dtype == torch.bool and region.shape == (2, 1, 4, 4)
    assert torch.equal(region[0, 0], (masks[0, 0] == 2) | (masks[0, 0] == 0))
    assert torch.equal(region[1, 0], torch.ones(4, 4, dtype=torch.bool))


def test_top_k_accepts_input_shaped_attributions(scores, masks):
    attr = scores_to_mask(scores, masks, n_channels=3)
    torch.testing.assert_close(select_top_k(attr, masks, k=1), select_top_k(scores, masks, k=1))
    assert torch.equal(select_top_k(attr, masks, k=1)[1, 0], masks[1, 0] == 1)


def test_top_k_never_picks_padding_columns():
    # image 1 has one segment; its padding columns score higher than its real one
    scores = torch.tensor([[1.0, 2.0], [-5.0, 0.0]])
    masks = torch.cat([grid_mask(2, 2, 1, 2), grid_mask(2, 2, 1, 1)])
    region = select_top_k(scores, masks, k=1)
    assert bool(region[1].all())


def test_top_k_rejects_k_beyond_the_segment_count(scores, masks):
    with pytest.raises(ValueError, match="1 <= k <= 2"):
        select_top_k(scores, masks, k=3)
    with pytest.raises(ValueError, match="1 <= k"):
        select_top_k(scores, masks, k=0)


def test_threshold_keeps_segments_near_the_maximum(scores, masks):
    region = select_threshold(scores, masks, fraction=0.5)
    assert torch.equal(region[0, 0], (masks[0, 0] == 2) | (masks[0, 0] == 0))
    assert torch.equal(region[1, 0], masks[1, 0] == 1)
    everything_positive = select_threshold(scores, masks, fraction=0.1)
    assert torch.equal(everything_positive[0, 0], masks[0, 0] != 1)


def test_threshold_warns_and_selects_nothing_without_positive_evidence(masks):
    scores = torch.tensor([[-0.5, -1.0, -0.9, -0.1], [0.2, 0.8, 0.0, 0.0]])
    with pytest.warns(UserWarning, match="no positively scored segment"):
        region = select_threshold(scores, masks, fraction=0.8)
    assert not region[0].any() and region[1].any()


def test_threshold_rejects_bad_fractions(scores, masks):
    with pytest.raises(ValueError, match="80 %"):
        select_threshold(scores, masks, fraction=80)


def test_bad_shapes_are_rejected(scores, masks):
    with pytest.raises(ValueError, match="N×K"):
        select_top_k(scores[0], masks, k=1)
    with pytest.raises(ValueError, match="columns"):
        select_top_k(scores[:, :1], masks, k=1)
