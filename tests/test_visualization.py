"""Figures from our tensors (captum_secam.visualization)."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from captum_secam.segmentation import scores_to_mask
from captum_secam.visualization import (
    VISUALIZATION_METHODS,
    VISUALIZATION_SIGNS,
    plot_method_grid,
    show_attribution,
    show_superpixels,
    show_top_segments,
    to_hw_map,
    to_hwc_image,
)

H, W = 20, 30  # non-square, so a transposed or channels-first image cannot pass unnoticed


def grid_mask(rows: int = 2, cols: int = 3) -> torch.Tensor:
    r = torch.arange(H)[:, None] * rows // H
    c = torch.arange(W)[None, :] * cols // W
    return (r * cols + c)[None, None].long()


@pytest.fixture
def photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


@pytest.fixture
def attr() -> torch.Tensor:
    scores = torch.tensor([[3.0, -1.0, 0.5, 2.0, -2.0, 0.0]])
    return scores_to_mask(scores, grid_mask(), n_channels=3).clone().requires_grad_(True)


def axes() -> object:
    return Figure().subplots()


def drawn(ax: object) -> np.ndarray:
    return np.asarray(ax.images[-1].get_array())  # type: ignore[attr-defined]


VALID = [
    (m, s)
    for m in VISUALIZATION_METHODS
    for s in VISUALIZATION_SIGNS
    if not (s == "all" and m in ("masked_image", "alpha_scaling"))
]


@pytest.mark.parametrize(("method", "sign"), VALID)
def test_every_method_and_sign_accepts_our_tensors(
    method: str, sign: str, photo: np.ndarray, attr: torch.Tensor
) -> None:
    # N×C×H×W attribution that requires grad, and the photo as an N×C×H×W float tensor.
    photo_tensor = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
    ax = show_attribution(attr, photo_tensor, ax=axes(), method=method, sign=sign, title="t")
    image = drawn(ax)
    assert image.shape[:2] == (H, W)
    assert ax.get_title().startswith("t")  # type: ignore[attr-defined]


@pytest.mark.parametrize("method", ["masked_image", "alpha_scaling"])
def test_single_sign_methods_need_a_sign(
    method: str, photo: np.ndarray, attr: torch.Tensor
) -> None:
    with pytest.raises(ValueError, match="sign='positive'"):
        show_attribution(attr, photo, method=method, sign="all")


def test_heat_map_values_follow_the_scores(attr: torch.Tensor) -> None:
    ax = show_attribution(attr, None, ax=axes(), method="heat_map", sign="all", outlier_perc=0)
    image = drawn(ax)
    # Segment 0 (top-left) has the largest score (3.0) -> normalised to 1; segment 4 -> -2/3.
    assert image[0, 0] == pytest.approx(1.0)
    assert image[H - 1, W // 2] == pytest.approx(-2.0 / 3.0)


@pytest.mark.parametrize("method", VISUALIZATION_METHODS)
@pytest.mark.parametrize("sign", ["absolute_value", "positive", "all"])
def test_all_zero_map_is_drawn_blank(method: str, sign: str, photo: np.ndarray) -> None:
    if sign == "all" and method in ("masked_image", "alpha_scaling"):
        pytest.skip("invalid combination, tested above")
    zeros = torch.zeros(1, 3, H, W)
    ax = show_attribution(zeros, photo, ax=axes(), method=method, sign=sign, title="Lime")
    assert "all-zero attribution" in ax.get_title()  # type: ignore[attr-defined]
    assert drawn(ax).shape[:2] == (H, W)


def test_missing_sign_is_noted(photo: np.ndarray) -> None:
    negative = -torch.ones(1, 1, H, W)
    ax = show_attribution(negative, photo, ax=axes(), method="blended_heat_map", sign="positive")
    assert ax.get_title() == "no positive attribution"  # type: ignore[attr-defined]


def test_chw_and_hwc_photos_draw_the_same(photo: np.ndarray) -> None:
    chw_array = np.moveaxis(photo, -1, 0)
    chw_tensor = torch.from_numpy(chw_array.copy())
    for variant in (photo, chw_array, chw_tensor, chw_tensor[None]):
        np.testing.assert_allclose(to_hwc_image(variant), photo / 255.0)
    ones = torch.ones(1, 1, H, W)
    for variant in (photo, chw_array, chw_tensor):
        ax = show_attribution(ones, variant, ax=axes(), method="original_image")
        np.testing.assert_array_equal(drawn(ax), photo)


def test_normalised_inputs_are_rescaled_for_display() -> None:
    x = torch.linspace(-2, 2, 3 * H * W).reshape(1, 3, H, W)
    image = to_hwc_image(x)
    assert image.shape == (H, W, 3)
    assert image.min() == pytest.approx(0.0) and image.max() == pytest.approx(1.0)


def test_attribution_channels_are_averaged(attr: torch.Tensor) -> None:
    values = to_hw_map(attr)
    assert values.shape == (H, W)
    assert values[0, 0] == pytest.approx(3.0)
    np.testing.assert_allclose(to_hw_map(attr[0]), values)
    np.testing.assert_allclose(to_hw_map(attr[0, 0]), values)
    with pytest.raises(ValueError, match="NaN"):
        to_hw_map(torch.full((H, W), float("nan")))


def test_size_mismatch_is_rejected(photo: np.ndarray) -> None:
    with pytest.raises(ValueError, match="resize_photo"):
        show_attribution(torch.ones(1, 1, H + 1, W), photo)
    with pytest.raises(ValueError, match="draws on the photo"):
        show_attribution(torch.ones(1, 1, H, W), None, method="blended_heat_map")
    with pytest.raises(ValueError, match="unknown method"):
        show_attribution(torch.ones(1, 1, H, W), photo, method="overlay")


def test_superpixel_boundaries_are_drawn(photo: np.ndarray) -> None:
    mask = grid_mask()
    ax = show_superpixels(photo, mask, ax=axes())
    image = drawn(ax)
    changed = np.any(np.abs(image - photo / 255.0) > 1e-9, axis=2)
    # Boundaries lie along the grid lines (row 10, columns 10 and 20) and nowhere else.
    assert changed[9:11, :].all()
    assert not changed[:5, :5].any()
    assert np.allclose(image[changed], (1.0, 1.0, 0.0))
    assert ax.get_title() == "6 superpixels"  # type: ignore[attr-defined]


def test_top_segments_keep_colour_and_grey_the_rest(photo: np.ndarray) -> None:
    region = grid_mask() == 0  # top-left segment only
    ax = show_top_segments(photo, region, ax=axes(), title="top 1")
    image = drawn(ax)
    inside = region[0, 0].numpy()
    inner = inside.copy()
    inner[0, :] = inner[:, 0] = inner[9, :] = inner[:, 9] = False  # skip the outline
    np.testing.assert_allclose(image[inner], photo[inner] / 255.0)
    outside = image[~inside]
    np.testing.assert_allclose(outside[:, 0], outside[:, 1])  # grey: equal channels
    assert outside.min() > 0.6
    empty = show_top_segments(photo, np.zeros((H, W), bool), ax=axes())
    assert "nothing selected" in empty.get_title()  # type: ignore[attr-defined]


def test_method_grid_layout_and_file(
    tmp_path: object, photo: np.ndarray, attr: torch.Tensor
) -> None:
    mask = grid_mask()
    out = f"{tmp_path}/grid.png"
    fig = plot_method_grid(
        photo,
        mask,
        {"SeCam": attr, "Lime": torch.zeros(1, 3, H, W)},
        timings={"SeCam": 0.0123, "Lime": "12 s"},
        regions={"SeCam": attr[:, :1] > 1.0},
        suptitle="Egyptian cat",
        out=out,
    )
    visible = [ax for ax in fig.axes if ax.axison]
    titles = [ax.get_title() for ax in visible]
    assert len(visible) == 5  # photo, superpixels, SeCam, SeCam region, Lime
    assert titles[2] == "SeCam\n12 ms"
    assert titles[3] == "SeCam: top segments"
    assert titles[4].startswith("Lime\n12 s") and "all-zero" in titles[4]
    png = matplotlib.image.imread(out)
    assert png.ndim == 3 and png.shape[0] > 100
    with pytest.raises(ValueError, match="no attribution with that name"):
        plot_method_grid(photo, mask, {"SeCam": attr}, regions={"Lime": attr > 0})
