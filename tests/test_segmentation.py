"""The shared segmentation layer: contiguous Captum-ready masks from any segmenter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import grid_mask
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage import data
from skimage.transform import resize

from captum_secam import relabel_sequential, scores_to_mask, segment, segment_means
from captum_secam.segmentation import METHODS, segment_counts, validate_feature_mask

SETTINGS = settings(max_examples=30, deadline=None)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return (resize(data.chelsea(), (64, 80), anti_aliasing=True) * 255).astype(np.uint8)


def assert_contiguous(mask: torch.Tensor) -> None:
    assert mask.dtype == torch.long and mask.dim() == 4 and mask.shape[1] == 1
    for image in mask:
        ids = image.unique()
        assert torch.equal(ids, torch.arange(ids.numel())), ids


@pytest.mark.parametrize("method", METHODS)
def test_every_method_returns_a_contiguous_captum_mask(photo, method):
    kwargs = {"n_segments": 20} if method in ("slic", "watershed", "grid") else {}
    mask = segment(photo, method, **kwargs)
    assert mask.shape == (1, 1, 64, 80)
    assert_contiguous(mask)
    assert int(segment_counts(mask)[0]) > 1


@pytest.mark.parametrize("method", METHODS)
def test_grayscale_photos_are_segmented(photo, method):
    gray = photo.mean(axis=2).astype(np.uint8)
    mask = segment(gray, method)
    assert mask.shape == (1, 1, 64, 80)
    assert_contiguous(mask)


def test_normalised_model_input_segments_like_the_photo(photo):
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float()
    normalised = (x - 127.0) / 128.0
    torch.testing.assert_close(segment(normalised), segment(photo))


def test_photo_argument_segments_the_photo_for_the_input_size(photo):
    x = torch.randn(2, 3, 64, 80)
    mask = segment(x, photo=photo)
    assert mask.shape == (2, 1, 64, 80)
    torch.testing.assert_close(mask[0:1], segment(photo))
    torch.testing.assert_close(mask[1:2], segment(photo))


def test_photo_of_the_wrong_size_is_rejected(photo):
    with pytest.raises(ValueError, match="resize the photo"):
        segment(torch.randn(1, 3, 32, 32), photo=photo)


def test_batches_are_segmented_per_image(photo):
    batch = np.stack([photo, photo[::-1].copy()])
    mask = segment(batch, n_segments=15)
    torch.testing.assert_close(mask[0:1], segment(photo, n_segments=15))
    torch.testing.assert_close(mask[1:2], segment(photo[::-1].copy(), n_segments=15))


def test_grid_has_the_requested_cells():
    mask = segment(torch.rand(1, 3, 30, 40), "grid", n_segments=12)
    assert int(segment_counts(mask)[0]) == 12
    # cells are rectangles: each id occupies a full block of rows and columns
    for j in range(12):
        rows, cols = torch.nonzero(mask[0, 0] == j, as_tuple=True)
        assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == rows.numel()


def test_working_size_keeps_the_output_size_and_most_segments(photo):
    big = (resize(data.chelsea(), (224, 224), anti_aliasing=True) * 255).astype(np.uint8)
    full = segment(big, n_segments=50)
    small = segment(big, n_segments=50, working_size=112)
    assert small.shape == full.shape
    assert_contiguous(small)
    assert abs(int(segment_counts(small)[0]) - int(segment_counts(full)[0])) <= 10


def test_segments_follow_the_image_content():
    # two flat halves: slic must not put a segment across the edge
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    img[:, 16:] = 255
    mask = segment(img, n_segments=4)[0, 0]
    left, right = set(mask[:, :16].unique().tolist()), set(mask[:, 16:].unique().tolist())
    assert not left & right


def test_segment_passes_skimage_parameters_through(photo):
    coarse = segment(photo, "felzenszwalb", scale=1000.0)
    fine = segment(photo, "felzenszwalb", scale=10.0)
    assert int(segment_counts(coarse)[0]) < int(segment_counts(fine)[0])


# ---- bad input ---------------------------------------------------------------------------------


def test_unknown_method_is_rejected(photo):
    with pytest.raises(ValueError, match="choose one of"):
        segment(photo, "kmeans")


def test_n_segments_for_scale_based_methods_is_rejected(photo):
    with pytest.raises(ValueError, match="max_dist"):
        segment(photo, "quickshift", n_segments=10)


def test_channels_first_numpy_photo_is_rejected(photo):
    with pytest.raises(ValueError, match="moveaxis"):
        segment(np.moveaxis(photo, -1, 0))


def test_channels_last_tensor_is_rejected(photo):
    with pytest.raises(ValueError, match="permute"):
        segment(torch.from_numpy(photo)[None].float())


def test_3d_tensor_is_rejected():
    with pytest.raises(ValueError, match="unsqueeze"):
        segment(torch.rand(3, 16, 16))


def test_nan_photo_is_rejected():
    img = np.random.default_rng(0).random((16, 16, 3))
    img[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        segment(img)


def test_non_image_types_are_rejected():
    with pytest.raises(TypeError, match="numpy photo"):
        segment([[1, 2], [3, 4]])


# ---- masks: relabelling, validation, conversions (properties) -----------------------------------


@SETTINGS
@given(arrays(np.int64, (2, 1, 6, 7), elements=st.integers(-5, 40)))
def test_relabel_sequential_is_contiguous_and_keeps_the_partition(labels):
    relabelled = relabel_sequential(labels)
    assert_contiguous(relabelled)
    for original, new in zip(torch.from_numpy(labels), relabelled, strict=True):
        # same partition: pixels share a new id iff they shared an old id
        same_old = original.flatten()[:, None] == original.flatten()[None, :]
        same_new = new.flatten()[:, None] == new.flatten()[None, :]
        assert torch.equal(same_old, same_new)
        # order is kept: sorting by old ids sorts the new ids
        assert torch.equal(
            original.flatten().argsort(stable=True), new.flatten().argsort(stable=True)
        )


@SETTINGS
@given(
    arrays(np.float64, (2, 3, 6, 7), elements=st.floats(-10, 10)),
    st.integers(1, 6),
    st.integers(1, 7),
)
def test_scores_to_mask_and_segment_means_round_trip(values, rows, cols):
    mask = grid_mask(6, 7, rows, cols)
    scores = segment_means(torch.from_numpy(values), mask)
    painted = scores_to_mask(scores, mask, n_channels=3)
    torch.testing.assert_close(segment_means(painted, mask), scores)
    # and the other way: painting per-segment scores then averaging gives them back
    k = int(mask.max()) + 1
    random_scores = torch.from_numpy(values).reshape(2, -1)[:, :k]
    torch.testing.assert_close(
        segment_means(scores_to_mask(random_scores, mask), mask), random_scores
    )


def test_segment_means_matches_a_loop():
    torch.manual_seed(0)
    values = torch.randn(2, 3, 8, 8)
    mask = torch.cat([grid_mask(8, 8, 2, 2), grid_mask(8, 8, 1, 3)])
    means = segment_means(values, mask)
    for i in range(2):
        for j in range(int(mask[i].max()) + 1):
            expected = values[i][:, mask[i, 0] == j].mean()
            torch.testing.assert_close(means[i, j], expected)
    assert torch.all(means[1, 3:] == 0)


def test_validate_feature_mask_broadcasts_shared_masks():
    x = torch.zeros(3, 3, 8, 8)
    mask = grid_mask(8, 8, 2, 2)
    for shared in (mask[0, 0], mask[0], mask, mask[0, 0].numpy()):
        checked = validate_feature_mask(shared, x)
        assert checked.shape == (3, 1, 8, 8) and checked.dtype == torch.long


def test_validate_feature_mask_errors_name_the_fix():
    x = torch.zeros(2, 3, 8, 8)
    mask = grid_mask(8, 8, 2, 2)
    with pytest.raises(TypeError, match="integer"):
        validate_feature_mask(mask.float(), x)
    with pytest.raises(TypeError, match="integer tensor"):
        validate_feature_mask([[0, 1]], x)
    with pytest.raises(ValueError, match="input size"):
        validate_feature_mask(grid_mask(4, 4, 2, 2), x)
    with pytest.raises(ValueError, match="negative"):
        validate_feature_mask(mask - 1, x)
    with pytest.raises(ValueError, match="relabel_sequential"):
        validate_feature_mask(mask * 3, x)
    with pytest.raises(ValueError, match="N×1×H×W"):
        validate_feature_mask(mask.expand(3, 1, 8, 8), x)
    # a gap in only one image of the batch is caught too
    pair = torch.cat([mask, mask.clamp_max(2) * (mask != 1)])
    with pytest.raises(ValueError, match="relabel_sequential"):
        validate_feature_mask(pair, x)


def test_one_segment_for_a_non_constant_image_warns_and_names_the_fix():
    noise = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match=r"single segment.*n_segments.*compactness.*photo"):
        mask = segment(noise, "slic", n_segments=50)
    assert int(segment_counts(mask)[0]) == 1  # the case the warning is about


def test_real_photos_constant_images_and_requested_single_segments_do_not_warn(photo):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert int(segment_counts(segment(photo, n_segments=20))[0]) > 1
        segment(torch.full((1, 3, 16, 16), 0.5))  # constant: nothing to separate, no warning
        assert int(segment_counts(segment(photo, "grid", n_segments=1))[0]) == 1


def test_importing_secam_does_not_import_scikit_image():
    import subprocess
    import sys

    code = (
        "import sys, captum_secam.secam, captum_secam.segmentation; "
        "print(sorted(m for m in sys.modules if m == 'skimage' or m.startswith('skimage.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
