"""Tests for captum_secam.metrics: closed-form cases, properties and every validation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_secam import SeCam
from captum_secam.metrics import (
    aopc,
    area_under_curve,
    box_to_mask,
    deletion_auc,
    deletion_curve,
    energy_pointing_game,
    insertion_auc,
    insertion_curve,
    iou,
    parameter_randomisation,
    pointing_game,
    rank_correlation,
)

H = W = 8


class RegionModel(nn.Module):
    """Two-class model whose class-0 score is the fraction of ``region`` still showing 1s.

    On an all-ones image with fill 0, removing pixels of the region lowers the score linearly:
    the deletion/insertion curves are known in closed form.
    """

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("region", region.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        present = (x[:, 0] * self.region).sum(dim=(1, 2)) / self.region.sum()
        return torch.stack([present, 1 - present], dim=1)


def _region(rows: int = 2) -> torch.Tensor:
    region = torch.zeros(H, W, dtype=torch.bool)
    region[:rows] = True  # the first `rows` rows: area fraction rows / H
    return region


def _grid_mask() -> torch.Tensor:
    """16 segments of 2×2 pixels, ids row-major."""
    return (torch.arange(H)[:, None] // 2 * 4 + torch.arange(W)[None] // 2)[None, None]


def _ordering(region: torch.Tensor, best_first: bool) -> torch.Tensor:
    """Attribution ranking the region first (or last), with distinct values everywhere."""
    base = torch.arange(H * W, dtype=torch.float32).reshape(1, 1, H, W) * 1e-3
    score = region.float()[None, None] if best_first else -region.float()[None, None]
    return (score + base).expand(2, -1, -1, -1)


ONES = torch.ones(2, 3, H, W)
RAW = {"probabilities": False, "fill": "constant", "fill_value": 0.0}


# --------------------------------------------------------------------------------------------
# Deletion / insertion / AOPC: closed forms
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 2, 4])
def test_pixel_deletion_and_insertion_auc_closed_form(rows: int) -> None:
    region = _region(rows)
    a = rows / H
    model = RegionModel(region)
    best, worst = _ordering(region, True), _ordering(region, False)
    # n_steps = H: one row of pixels per step, so the region ends exactly on a step.
    kw = {**RAW, "n_steps": H}
    assert torch.allclose(deletion_auc(model, ONES, best, 0, **kw), torch.tensor(a / 2))
    assert torch.allclose(deletion_auc(model, ONES, worst, 0, **kw), torch.tensor(1 - a / 2))
    assert torch.allclose(insertion_auc(model, ONES, best, 0, **kw), torch.tensor(1 - a / 2))
    assert torch.allclose(insertion_auc(model, ONES, worst, 0, **kw), torch.tensor(a / 2))


def test_deletion_curve_values_and_fractions() -> None:
    model = RegionModel(_region(2))
    curve = deletion_curve(model, ONES, _ordering(_region(2), True), 0, n_steps=8, **RAW)
    expected = torch.tensor([1.0, 0.5, 0.0, 0, 0, 0, 0, 0, 0])
    assert torch.allclose(curve.scores, expected.expand(2, -1))
    assert torch.allclose(curve.fractions, torch.linspace(0, 1, 9).expand(2, -1))
    inserted = insertion_curve(model, ONES, _ordering(_region(2), True), 0, n_steps=8, **RAW)
    assert torch.allclose(inserted.scores[0], torch.tensor([0.0, 0.5, 1, 1, 1, 1, 1, 1, 1]))


def test_aopc_closed_form() -> None:
    # Region of m = 2 steps out of S = 8: drops are k/m for k <= m, then 1.
    model = RegionModel(_region(2))
    value = aopc(model, ONES, _ordering(_region(2), True), 0, n_steps=8, **RAW)
    m, s = 2, 8
    expected = ((m + 1) / 2 + (s - m)) / (s + 1)
    assert torch.allclose(value, torch.tensor(expected))
    worst = aopc(model, ONES, _ordering(_region(2), False), 0, n_steps=8, **RAW)
    assert bool((worst < value).all())


def test_segment_granularity_closed_form() -> None:
    region = _region(2)  # covers segments 0..3 exactly (4 of 16)
    model = RegionModel(region)
    mask = _grid_mask()
    curve = deletion_curve(model, ONES, _ordering(region, True), 0, feature_mask=mask, **RAW)
    # One step per segment; each region segment is a quarter of the region.
    assert curve.scores.shape == (2, 17)
    assert torch.allclose(curve.scores[0, :5], torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    assert torch.allclose(curve.scores[0, 5:], torch.zeros(12))
    assert torch.allclose(curve.fractions[0], torch.linspace(0, 1, 17))
    auc = deletion_auc(model, ONES, _ordering(region, True), 0, feature_mask=mask, **RAW)
    assert torch.allclose(auc, torch.tensor(0.125))
    ins = insertion_auc(model, ONES, _ordering(region, True), 0, feature_mask=mask, **RAW)
    assert torch.allclose(ins, torch.tensor(1 - 0.125))


def test_segment_scores_equal_painted_map_and_uneven_segments() -> None:
    region = _region(2)
    model = RegionModel(region)
    # Uneven segments: the region is segment 0 (16 px), the rest two segments of 24 px.
    mask = torch.zeros(1, 1, H, W, dtype=torch.long)
    mask[..., 2:5, :] = 1
    mask[..., 5:, :] = 2
    scores = torch.tensor([[3.0, 1.0, 2.0], [3.0, 1.0, 2.0]])
    painted = scores[:, mask[0, 0]][:, None]
    by_scores = deletion_curve(model, ONES, scores, 0, feature_mask=mask, **RAW)
    by_map = deletion_curve(model, ONES, painted, 0, feature_mask=mask, **RAW)
    assert torch.equal(by_scores.scores, by_map.scores)
    # Area axis: region 16/64, then segment 2 (24/64), then segment 1.
    assert torch.allclose(by_scores.fractions[0], torch.tensor([0.0, 0.25, 0.625, 1.0]))
    assert torch.allclose(by_scores.scores[0], torch.tensor([1.0, 0.0, 0.0, 0.0]))


def test_segment_steps_grouping_and_images_with_different_counts() -> None:
    region = _region(2)
    model = RegionModel(region)
    mask = _grid_mask().repeat(2, 1, 1, 1)
    mask[1] = mask[1] // 2  # second image: 8 segments of 2×4 pixels
    attr = _ordering(region, True)
    curve = deletion_curve(model, ONES, attr, 0, feature_mask=mask, n_steps=4, **RAW)
    # Image 0: 4 segments per step; image 1: 2 per step; both remove the region in step 1.
    assert torch.allclose(curve.scores, torch.tensor([[1.0, 0, 0, 0, 0]] * 2))
    assert torch.allclose(curve.fractions, torch.linspace(0, 1, 5).expand(2, -1))


class MeanModel(nn.Module):
    """Class-0 score: mean of channel 0; class 1: the pixel at (0, 0) of channel 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0].mean(dim=(1, 2)), x[:, 1, 0, 0]], dim=1)


def test_fills() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, H, W)
    attr = torch.rand(2, 1, H, W)
    model = MeanModel()
    kw = {"probabilities": False, "n_steps": 4}
    # Mean fill keeps the channel mean: the class-0 score ends where it started.
    end = deletion_curve(model, x, attr, 0, fill="mean", **kw).scores[:, -1]
    assert torch.allclose(end, x[:, 0].mean(dim=(1, 2)))
    # Constant fill, one value per channel.
    end = deletion_curve(model, x, attr, 1, fill_value=(0.0, 7.0, 0.0), **kw).scores[:, -1]
    assert torch.allclose(end, torch.tensor([7.0, 7.0]))
    # Tensor fill.
    end = deletion_curve(model, x, attr, 0, fill=torch.full((1, 3, 1, 1), -2.0), **kw).scores
    assert torch.allclose(end[:, -1], torch.tensor([-2.0, -2.0]))
    # Insertion starts from the fill and ends at the original image.
    curve = insertion_curve(model, x, attr, 0, fill="constant", fill_value=5.0, **kw)
    assert torch.allclose(curve.scores[:, 0], torch.tensor([5.0, 5.0]))
    assert torch.allclose(curve.scores[:, -1], x[:, 0].mean(dim=(1, 2)))


def test_blur_fill_keeps_linear_ramps_inside() -> None:
    size = 32
    ramp = torch.arange(size, dtype=torch.float32).expand(size, -1)  # x coordinate
    x = torch.stack([ramp, ramp.T, torch.full_like(ramp, 3.0)])[None]

    class Pixel(nn.Module):
        def forward(self, inp: torch.Tensor) -> torch.Tensor:
            return torch.stack([inp[:, 0, 16, 16], inp[:, 1, 16, 15], inp[:, 2, 0, 0]], dim=1)

    attr = torch.zeros(1, 1, size, size)
    for target, value in [(0, 16.0), (1, 16.0), (2, 3.0)]:
        end = deletion_curve(
            Pixel(), x, attr, target, fill="blur", blur_sigma=2.0, n_steps=1, probabilities=False
        ).scores[0, -1]
        # A symmetric kernel reproduces a linear ramp away from the border, a constant anywhere.
        assert torch.allclose(end, torch.tensor(value), atol=1e-4)
    # A real blur changes a non-linear image.
    bumpy = x.clone()
    bumpy[0, 0, 16, 16] = 100.0
    end = deletion_curve(Pixel(), bumpy, attr, 0, fill="blur", n_steps=1, probabilities=False)
    assert float(end.scores[0, -1]) < 30.0


def test_ties_are_broken_by_pixel_index() -> None:
    model = RegionModel(_region(2))
    flat = torch.zeros(2, 1, H, W)
    by_index = -torch.arange(H * W, dtype=torch.float32).reshape(1, 1, H, W).expand(2, -1, -1, -1)
    a = deletion_curve(model, ONES, flat, 0, n_steps=8, **RAW)
    b = deletion_curve(model, ONES, by_index, 0, n_steps=8, **RAW)
    assert torch.equal(a.scores, b.scores)


def test_batch_size_target_none_and_extra_args() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * H * W, 5)
    ).eval()
    x = torch.randn(3, 3, H, W)
    attr = torch.randn(3, 3, H, W)
    one = deletion_curve(model, x, attr, None, n_steps=5, batch_size=1)
    many = deletion_curve(model, x, attr, model(x).argmax(1), n_steps=5, batch_size=100)
    assert torch.allclose(one.scores, many.scores, atol=1e-6)

    class Shifted(nn.Module):
        def forward(self, inp: torch.Tensor, shift: torch.Tensor, scale: float) -> torch.Tensor:
            return model(inp) * scale + shift[:, None]

    shift = torch.tensor([0.0, 10.0, 20.0])
    curve = deletion_curve(
        Shifted(),
        x,
        attr,
        0,
        additional_forward_args=(shift, 2.0),
        n_steps=5,
        batch_size=4,
        probabilities=False,
    )
    plain = deletion_curve(model, x, attr, 0, n_steps=5, probabilities=False)
    assert torch.allclose(curve.scores, plain.scores * 2 + shift[:, None], atol=1e-5)


def test_model_state_is_untouched() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 2, 1), nn.Dropout(0.0), nn.Flatten(), nn.Linear(2 * H * W, 2)
    )
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(1, 3, H, W, requires_grad=True)
    deletion_auc(model, x, torch.rand(1, 1, H, W), 0, n_steps=3)
    assert model.training and x.requires_grad and x.grad is None
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_secam_end_to_end_scores_and_map_agree() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    mask = (torch.arange(16)[:, None] // 4 * 4 + torch.arange(16)[None] // 4)[None, None]
    secam = SeCam(model, conv)
    painted = secam.attribute(x, target=1, feature_mask=mask)
    scores = secam.attribute(x, target=1, feature_mask=mask, return_input_shape=False)
    a = deletion_auc(model, x, painted, 1, feature_mask=mask, fill="mean")
    b = deletion_auc(model, x, scores, 1, feature_mask=mask, fill="mean")
    assert torch.allclose(a, b)
    assert bool(((a >= 0) & (a <= 1)).all())


def test_area_under_curve() -> None:
    fractions = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(
        area_under_curve(fractions, torch.tensor([[1.0, 1.0, 1.0]])), torch.tensor([1.0])
    )
    assert torch.allclose(
        area_under_curve(fractions, torch.tensor([[0.0, 0.5, 1.0]])), torch.tensor([0.5])
    )
    with pytest.raises(ValueError, match="non-decreasing"):
        area_under_curve(torch.tensor([0.0, 1.0, 0.5]), torch.ones(1, 3))
    with pytest.raises(ValueError, match="at least two points"):
        area_under_curve(torch.zeros(1, 1), torch.zeros(1, 1))


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_steps=st.integers(1, 12),
    fill=st.sampled_from(["constant", "mean", "blur"]),
)
def test_auc_in_unit_interval_for_probabilities(seed: int, n_steps: int, fill: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * H * W, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(3, 3 * H * W, generator=gen))
    x = torch.randn(2, 3, H, W, generator=gen)
    attr = torch.randn(2, 3, H, W, generator=gen)
    for fn in (deletion_auc, insertion_auc):
        value = fn(model, x, attr, None, n_steps=n_steps, fill=fill, blur_sigma=1.0)
        assert bool(((value >= 0) & (value <= 1 + 1e-6)).all())


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 7))
def test_perfect_ordering_beats_random(seed: int, rows: int) -> None:
    region = _region(rows)
    model = RegionModel(region)
    random_attr = torch.rand(2, 1, H, W, generator=torch.Generator().manual_seed(seed))
    best = _ordering(region, True)
    kw = {**RAW, "n_steps": 16}
    assert bool(
        (
            insertion_auc(model, ONES, best, 0, **kw)
            >= insertion_auc(model, ONES, random_attr, 0, **kw) - 1e-6
        ).all()
    )
    assert bool(
        (
            deletion_auc(model, ONES, best, 0, **kw)
            <= deletion_auc(model, ONES, random_attr, 0, **kw) + 1e-6
        ).all()
    )
    assert bool(
        (aopc(model, ONES, best, 0, **kw) >= aopc(model, ONES, random_attr, 0, **kw) - 1e-6).all()
    )


@settings(max_examples=10, deadline=None)
@given(perm=st.permutations(list(range(4))), segments=st.booleans())
def test_batch_permutation(perm: list[int], segments: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * H * W, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(3, 3 * H * W, generator=gen))
    x = torch.randn(4, 3, H, W, generator=gen)
    attr = torch.randn(4, 1, H, W, generator=gen)
    mask = _grid_mask().repeat(4, 1, 1, 1)
    mask[1] //= 2
    target = torch.tensor([0, 1, 2, 0])
    p = torch.tensor(perm)
    kw = {"feature_mask": mask} if segments else {"n_steps": 6}
    kw_p = {"feature_mask": mask[p]} if segments else {"n_steps": 6}
    full = insertion_curve(model, x, attr, target, **kw)
    permuted = insertion_curve(model, x[p], attr[p], target[p], **kw_p)
    assert torch.allclose(full.scores[p], permuted.scores, atol=1e-6)
    assert torch.allclose(full.fractions[p], permuted.fractions)


# --------------------------------------------------------------------------------------------
# Validation of the perturbation metrics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"fill": "noise"}, ValueError, "unknown fill"),
        ({"fill": torch.zeros(5, 3, 1, 1)}, ValueError, "must broadcast"),
        ({"fill": "constant", "fill_value": (0.0, 1.0)}, ValueError, "one value per channel"),
        ({"fill": "blur", "blur_sigma": 0.0}, ValueError, "blur_sigma"),
        ({"n_steps": 0}, ValueError, "n_steps must be a positive int"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int"),
        ({"attributions": torch.zeros(3, 1, H, W)}, ValueError, "one attribution per image"),
        ({"attributions": torch.zeros(2, 1, 4, 4)}, ValueError, "upsample layer maps"),
        ({"attributions": torch.full((2, 1, H, W), float("nan"))}, ValueError, "NaN"),
        ({"attributions": torch.zeros(2, 16)}, ValueError, "pass the feature_mask"),
        (
            {"attributions": torch.zeros(2, 3), "feature_mask": _grid_mask()},
            ValueError,
            "one score per segment",
        ),
        ({"attributions": [[0.0]]}, TypeError, "must be a torch.Tensor"),
        ({"feature_mask": _grid_mask() + 1}, ValueError, "contiguous"),
        ({"target": [0, 1, 0]}, ValueError, "targets for a batch of 2"),
        ({"inputs": torch.ones(2, H, W, 3)}, ValueError, "channels-last"),
    ],
)
def test_perturbation_validation(kwargs: dict, error: type, match: str) -> None:
    model = RegionModel(_region(2))
    args = {"inputs": ONES, "attributions": torch.zeros(2, 1, H, W), "target": 0}
    args.update(kwargs)
    inputs, attributions, target = args.pop("inputs"), args.pop("attributions"), args.pop("target")
    for fn in (deletion_curve, insertion_curve):
        with pytest.raises(error, match=match):
            fn(model, inputs, attributions, target, **args)


def test_model_output_validation() -> None:
    with pytest.raises(ValueError, match="N×classes"):
        deletion_auc(lambda x: x.sum(), ONES, torch.zeros(2, 1, H, W), 0)


# --------------------------------------------------------------------------------------------
# Pointing game, energy, IoU
# --------------------------------------------------------------------------------------------


def test_pointing_game_hit_miss_tolerance_and_ties() -> None:
    attr = torch.zeros(2, 1, H, W)
    attr[0, 0, 1, 1] = 1.0  # inside the box below
    attr[1, 0, 6, 6] = 1.0  # outside: 3 px right and 3 px below the box corner (4, 4)
    box = (0, 0, 4, 4)
    assert pointing_game(attr, box).tolist() == [True, False]
    assert pointing_game(attr, box, tolerance=4.3).tolist() == [True, True]  # dist 3√2 ≈ 4.24
    assert pointing_game(attr, box, tolerance=4.2).tolist() == [True, False]
    gt = box_to_mask(box, H, W)[0, 0]
    assert pointing_game(attr[:, 0], gt).tolist() == [True, False]  # N×H×W maps, H×W mask
    # Ties: a maximal plateau straddling the box.
    plateau = torch.zeros(1, 3, H, W)
    plateau[..., 3:5, 3:5] = 1.0
    assert pointing_game(plateau, box, ties="all").tolist() == [False]
    assert pointing_game(plateau, box, ties="any").tolist() == [True]
    # Per-image boxes.
    boxes = torch.tensor([[0, 0, 2, 2], [6, 6, 8, 8]])
    assert pointing_game(attr, boxes).tolist() == [True, True]


def test_energy_pointing_game() -> None:
    attr = torch.zeros(2, 1, H, W)
    attr[0, 0, :4, :4] = torch.rand(4, 4) + 0.1  # all positive energy inside
    attr[0, 0, 5:, 5:] = -3.0  # negative evidence outside is ignored
    attr[1, 0, 0, 0] = 1.0
    attr[1, 0, 7, 7] = 3.0
    energy = energy_pointing_game(attr, (0, 0, 4, 4))
    assert torch.allclose(energy, torch.tensor([1.0, 0.25]))
    with pytest.warns(UserWarning, match="no positive value"):
        empty = energy_pointing_game(-torch.ones(1, 1, H, W), (0, 0, 4, 4))
    assert bool(torch.isnan(empty).all())


@settings(max_examples=15, deadline=None)
@given(perm=st.permutations(list(range(4))), seed=st.integers(0, 1000))
def test_localisation_follows_batch_permutation(perm: list[int], seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    attr = torch.randn(4, 1, H, W, generator=gen)
    gt = torch.rand(4, 1, H, W, generator=gen) > 0.6
    gt[:, :, 0, 0] = True  # never empty
    p = torch.tensor(perm)
    assert torch.equal(pointing_game(attr, gt)[p], pointing_game(attr[p], gt[p]))
    assert torch.equal(
        pointing_game(attr, gt, ties="any", tolerance=1.5)[p],
        pointing_game(attr[p], gt[p], ties="any", tolerance=1.5),
    )
    assert torch.allclose(energy_pointing_game(attr, gt)[p], energy_pointing_game(attr[p], gt[p]))
    region = attr > 0
    assert torch.equal(iou(region, gt)[p], iou(region[p], gt[p]))
    energy = energy_pointing_game(attr, gt)
    assert bool(((energy >= 0) & (energy <= 1)).all())


def test_iou_and_box_to_mask() -> None:
    a = box_to_mask((0, 0, 4, 4), H, W)
    assert a.shape == (1, 1, H, W) and int(a.sum()) == 16 and bool(a[0, 0, :4, :4].all())
    # Boxes (0,0,4,4) and (2,2,6,6): intersection 4, union 28.
    assert torch.allclose(iou(a, (2, 2, 6, 6)), torch.tensor([1 / 7]))
    assert torch.allclose(iou(a[0, 0], a[0]), torch.tensor([1.0]))
    disjoint = box_to_mask((4, 4, 8, 8), H, W)
    assert float(iou(a, disjoint)) == 0.0
    # Boxes are clipped to the image; per-image boxes give per-image IoUs.
    assert int(box_to_mask((6, 6, 20, 20), H, W).sum()) == 4
    regions = torch.cat([a, disjoint])
    values = iou(regions, torch.tensor([[0, 0, 4, 4], [0, 0, 4, 4]]))
    assert values.tolist() == [1.0, 0.0]
    with pytest.warns(UserWarning, match="both empty"):
        assert bool(torch.isnan(iou(torch.zeros(H, W, dtype=torch.bool), (0, 0, 0, 0))).all())


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: pointing_game(torch.zeros(1, 1, H, W), torch.zeros(H, W)),
            TypeError,
            "must be boolean",
        ),
        (
            lambda: pointing_game(torch.zeros(1, 1, H, W), torch.zeros(4, 4, dtype=torch.bool)),
            ValueError,
            "resize one to the other",
        ),
        (
            lambda: pointing_game(torch.zeros(2, 1, H, W), torch.zeros(3, H, W, dtype=torch.bool)),
            ValueError,
            "one per image",
        ),
        (
            lambda: pointing_game(torch.zeros(1, 1, H, W), (0, 0, 2, 2), ties="first"),
            ValueError,
            "ties must be",
        ),
        (
            lambda: pointing_game(torch.zeros(1, 1, H, W), (0, 0, 2, 2), tolerance=-1),
            ValueError,
            "tolerance",
        ),
        (lambda: pointing_game(torch.zeros(H, W), (0, 0, 2, 2)), ValueError, "scores_to_mask"),
        (
            lambda: pointing_game(torch.full((1, 1, H, W), float("nan")), (0, 0, 2, 2)),
            ValueError,
            "NaN",
        ),
        (
            lambda: energy_pointing_game(np.zeros((1, H, W)), (0, 0, 2, 2)),
            TypeError,
            "torch.Tensor",
        ),
        (
            lambda: iou(torch.zeros(1, 2, H, W, dtype=torch.bool), (0, 0, 2, 2)),
            ValueError,
            "one channel",
        ),
        (
            lambda: pointing_game(torch.zeros(1, 1, H, W), (20, 20, 30, 30)),
            ValueError,
            r"images \[0\] is empty",
        ),
        (
            lambda: energy_pointing_game(
                torch.ones(2, 1, H, W), torch.tensor([[0, 0, 2, 2], [1, 1, 1, 5]])
            ),
            ValueError,
            r"images \[1\] is empty",
        ),
        (lambda: box_to_mask((3, 0, 1, 2), H, W), ValueError, "x0 <= x1"),
        (lambda: box_to_mask((0.5, 0, 1, 2), H, W), ValueError, "whole pixels"),
        (lambda: box_to_mask((0, 0, 1), H, W), ValueError, "x0, y0, x1, y1"),
        (
            lambda: iou(torch.zeros(2, H, W, dtype=torch.bool), torch.zeros(3, 4)),
            ValueError,
            "3 boxes for 2 images",
        ),
    ],
)
def test_localisation_validation(call, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------------------------
# Parameter randomisation
# --------------------------------------------------------------------------------------------


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * H * W, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def _saliency(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[:, target].sum(), x)
    return grad


def test_randomisation_independent_explanation_stays_identical() -> None:
    model = _mlp()
    x = torch.randn(2, 3, H, W)

    def ignores_weights(m: nn.Module, inp: torch.Tensor, t: int) -> torch.Tensor:
        m(inp)  # runs the model, but the explanation does not use it
        return inp * 2

    results = parameter_randomisation(ignores_weights, model, x, target=0)
    assert [name for name, _ in results] == ["3", "1"]  # output layer first
    for _, sim in results:
        assert torch.allclose(sim, torch.ones(2, dtype=torch.float64))


def test_randomisation_dependent_explanation_decorrelates() -> None:
    model = _mlp()
    x = torch.randn(2, 3, H, W)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    results = parameter_randomisation(_saliency, model, x, target=1, seed=3)
    assert [name for name, _ in results] == ["3", "1"]
    final = results[-1][1]
    assert bool((final.abs() < 0.5).all())  # all layers random: unrelated gradients
    # Deterministic under the seed; the model and the global RNG are untouched.
    again = parameter_randomisation(_saliency, model, x, target=1, seed=3)
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(results, again, strict=True))
    assert torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training
    # Explicit layer list, absolute values and pearson run in the given order.
    chosen = parameter_randomisation(
        _saliency, model, x, 1, layers=["1"], similarity="pearson", absolute=True
    )
    assert [name for name, _ in chosen] == ["1"]


def test_randomisation_order_follows_execution_and_blocks_randomise_whole() -> None:
    class Reordered(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(16, 3)  # registered first, runs last
            self.body = nn.Sequential(nn.Linear(3 * H * W, 32), nn.ReLU(), nn.Linear(32, 16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.body(x.flatten(1))))

    torch.manual_seed(0)
    model = Reordered()
    x = torch.randn(1, 3, H, W)
    names = [name for name, _ in parameter_randomisation(_saliency, model, x, 0)]
    assert names == ["head", "body.2", "body.0"]
    seen: list[nn.Module] = []

    def record(m: nn.Module, inp: torch.Tensor, t: int) -> torch.Tensor:
        seen.append(m)
        return _saliency(m, inp, t)

    parameter_randomisation(record, model, x, 0, layers=["body"])
    randomised = seen[-1]
    assert randomised is not model
    assert not torch.equal(randomised.body[0].weight, model.body[0].weight)
    assert not torch.equal(randomised.body[2].weight, model.body[2].weight)
    assert torch.equal(randomised.head.weight, model.head.weight)


def test_randomisation_with_secam_on_gap_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()
    x = torch.randn(1, 3, 16, 16)
    mask = (torch.arange(16)[:, None] // 4 * 4 + torch.arange(16)[None] // 4)[None, None]

    def explain(m: nn.Module, inp: torch.Tensor, t: int) -> torch.Tensor:
        return SeCam(m, m[0]).attribute(inp, target=t, feature_mask=mask)

    results = parameter_randomisation(explain, model, x, target=2)
    assert [name for name, _ in results] == ["4", "0"]
    assert all(bool((s < 0.99).all()) for _, s in results)


def test_rank_correlation_matches_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 40), generator=gen).float()
    b = torch.randint(0, 5, (3, 40), generator=gen).float()
    ours = rank_correlation(a, b)
    for i in range(3):
        assert float(ours[i]) == pytest.approx(stats.spearmanr(a[i], b[i]).statistic, abs=1e-12)
        assert float(rank_correlation(a, b, "pearson")[i]) == pytest.approx(
            stats.pearsonr(a[i], b[i]).statistic, abs=1e-6
        )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"layers": ["nope"]}, ValueError, "no module named 'nope'"),
        ({"layers": ["2"]}, ValueError, "no parameters to randomise"),
        ({"layers": []}, ValueError, "layers is empty"),
        ({"layers": ["1", "1"]}, ValueError, "duplicates"),
        ({"layers": "1"}, TypeError, "sequence of module names"),
        ({"similarity": "kendall"}, ValueError, "similarity must be"),
    ],
)
def test_randomisation_validation(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        parameter_randomisation(_saliency, _mlp(), torch.zeros(1, 3, H, W), 0, **kwargs)


def test_randomisation_rejects_bad_model_and_changing_shapes() -> None:
    with pytest.raises(TypeError, match=r"must be an nn\.Module"):
        parameter_randomisation(_saliency, lambda x: x, torch.zeros(1, 3, H, W), 0)
    original = _mlp()
    with pytest.raises(ValueError, match="never ran the model it received"):
        parameter_randomisation(
            lambda m, x, t: _saliency(original, x, t), original, torch.zeros(1, 3, H, W), 0
        )
    model = _mlp()
    with torch.no_grad():
        model[1].weight.zero_()

    def changes_shape(m: nn.Module, x: torch.Tensor, t: int) -> torch.Tensor:
        width = (
            1 if float(m[1].weight.detach().abs().sum()) == 0 else 2
        )  # 2 once layer "1" is random
        return _saliency(m, x, t)[..., :width]

    with pytest.raises(ValueError, match="same shape every call"):
        parameter_randomisation(changes_shape, model, torch.zeros(1, 3, H, W), 0, layers=["1"])


def test_constant_explanation_warns() -> None:
    with pytest.warns(UserWarning, match="constant"):
        results = parameter_randomisation(
            lambda m, x, t: m(x) * 0, _mlp(), torch.zeros(1, 3, H, W), 0, layers=["3"]
        )
    assert bool(torch.isnan(results[0][1]).all())


# --------------------------------------------------------------------------------------------
# Agreement with Quantus (optional test dependency)
# --------------------------------------------------------------------------------------------


def _quantus():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("quantus")


def test_pixel_flipping_matches_quantus() -> None:
    quantus = _quantus()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * H * W, 3)
    ).eval()
    x = torch.rand(2, 1, H, W)
    x[:, :, 0, 0] = 0.0  # Quantus' "black" baseline is the image minimum
    attr = torch.randperm(2 * H * W).float().reshape(2, 1, H, W)  # no ties
    target = torch.tensor([0, 2])
    metric = quantus.PixelFlipping(
        features_in_step=8, perturb_baseline="black", disable_warnings=True
    )
    theirs = np.array(
        metric(
            model=model,
            x_batch=x.numpy(),
            y_batch=target.numpy(),
            a_batch=attr.numpy(),
            channel_first=True,
            softmax=True,
            device="cpu",
        )
    )
    ours = deletion_curve(model, x, attr, target, n_steps=H * W // 8, fill_value=0.0)
    np.testing.assert_allclose(ours.scores[:, 1:].numpy(), theirs, atol=1e-5)


def test_localisation_matches_quantus() -> None:
    quantus = _quantus()
    gen = torch.Generator().manual_seed(0)
    attr = torch.rand(4, 1, H, W, generator=gen)
    gt = torch.zeros(4, 1, H, W, dtype=torch.bool)
    gt[0, :, :4, :4] = True
    gt[1, :, 4:, :] = True
    gt[2, :, :, 2:5] = True
    gt[3, :, 1:7, 1:7] = True
    x = torch.rand(4, 1, H, W, generator=gen)
    y = np.zeros(4, dtype=int)
    common = {
        "model": None,
        "x_batch": x.numpy(),
        "y_batch": y,
        "a_batch": attr.numpy(),
        "s_batch": gt.numpy().astype(float),
        "channel_first": True,
    }
    pg = quantus.PointingGame(disable_warnings=True)(**common)
    np.testing.assert_array_equal(
        np.array(pg, dtype=bool), pointing_game(attr, gt, ties="any").numpy()
    )
    rma = quantus.RelevanceMassAccuracy(disable_warnings=True)(**common)
    np.testing.assert_allclose(np.array(rma), energy_pointing_game(attr, gt).numpy(), atol=1e-6)
