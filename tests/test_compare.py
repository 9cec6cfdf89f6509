"""compare_methods: all methods on one segmentation, agreement measures, table and figure."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

from captum_secam.interop.compare import (
    METHODS,
    ComparisonResult,
    compare_methods,
    spearman,
    top_k_overlap,
)
from captum_secam.segmentation import segment, segment_means

matplotlib.use("Agg")
pytest.importorskip("lime")
pytest.importorskip("shap")


class ChannelMeanLinear(nn.Module):
    """``features`` (1×1 conv) = channel mean; then scores linear in segment means.

    For a constant fill f, the segment-presence game of class c is linear, with exact Shapley
    values ``W[c, j] * (m_j - f)``; SeCam at ``features`` gives ``W[c, j] * m_j / |S_j|``.
    """

    def __init__(self, mask: torch.Tensor, weights: torch.Tensor) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.features.weight.fill_(1.0 / 3.0)
        ids = mask.reshape(-1)
        counts = torch.bincount(ids).double()
        self.head = nn.Linear(ids.numel(), weights.shape[0], bias=False)
        with torch.no_grad():
            self.head.weight.copy_((weights.double()[:, ids] / counts[ids]).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def _setup(seed: int = 0, n_classes: int = 3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, 16, 16, generator=gen)
    grid = segment(x, "grid", n_segments=16)  # 16 equal 4×4 cells
    perm = torch.randperm(16, generator=gen)
    mask = perm[grid]
    weights = torch.randn(n_classes, 16, generator=gen)
    return ChannelMeanLinear(mask[0, 0], weights).eval(), x, mask, weights


SHAPLEY_METHODS = (
    "captum_kernelshap",
    "captum_shapley_sampling",
    "shap_kernel",
    "shap_permutation",
)


def test_all_methods_agree_on_a_linear_game():
    model, x, mask, weights = _setup()
    result = compare_methods(
        model,
        x,
        target=1,
        feature_mask=mask,
        methods=METHODS,
        layer=model.features,
        n_samples=300,
        baseline=0.1,
        top_k=4,
    )
    assert result.methods == METHODS
    exact = (weights[1] * (segment_means(x, mask)[0] - 0.1)).double().numpy()
    for name in (*SHAPLEY_METHODS, "captum_feature_ablation"):
        # Shapley values and single-segment ablations coincide for a linear game.
        np.testing.assert_allclose(result.scores[name], exact, atol=1e-4, err_msg=name)
    for name in ("captum_lime", "lime"):
        assert spearman(result.scores[name], exact) > 0.97, name
    # SeCam = W_j m_j / |S_j|: same ranking as W_j m_j (equal cells), fill-independent
    secam_exact = (weights[1] * segment_means(x, mask)[0]).double().numpy() / 16
    np.testing.assert_allclose(result.scores["secam"], secam_exact, rtol=1e-4, atol=1e-7)
    assert all(t >= 0 for t in result.times.values())
    for a in METHODS:
        assert result.spearman[a][a] == pytest.approx(1.0)
        assert result.top_k_overlap[a][a] == 1.0


def test_planted_segment_lands_on_its_id_for_every_method():
    _, x, mask, _ = _setup(seed=1)
    planted = 13
    weights = torch.zeros(2, 16)
    weights[0, planted] = 4.0
    weights[1] = 0.5
    model = ChannelMeanLinear(mask[0, 0], weights)
    result = compare_methods(
        model,
        x,
        target=0,
        feature_mask=mask,
        methods=METHODS,
        layer=model.features,
        n_samples=100,
    )
    for name, scores in result.scores.items():
        assert int(np.argmax(np.abs(scores))) == planted, name
        assert np.abs(np.delete(scores, planted)).max() < 0.05 * abs(scores[planted]), name


def test_target_none_is_the_predicted_class_and_fill_is_shared():
    model, x, mask, _ = _setup(seed=2)
    predicted = int(model(x).argmax())
    result = compare_methods(
        model,
        x,
        feature_mask=mask,
        methods=("captum_lime", "lime", "shap_kernel"),
        n_samples=200,
        baseline="segment_mean",
    )
    assert result.target == predicted
    # The model only sees segment means: a segment-mean fill changes nothing, for everyone.
    for name, scores in result.scores.items():
        assert np.abs(scores).max() < 1e-5, name


def test_markdown_and_figure(tmp_path):
    model, x, mask, _ = _setup(seed=3)
    result = compare_methods(
        model,
        x,
        target=0,
        feature_mask=mask,
        methods=("secam", "captum_lime", "shap_kernel"),
        layer=model.features,
        n_samples=60,
        top_k=3,
    )
    table = result.to_markdown()
    assert "| SeCam |" in table and "Spearman rank correlation" in table
    assert "Top-3 overlap" in table
    rho = result.spearman["secam"]["shap_kernel"]
    assert f"{rho:.2f}" in table
    names, matrix = result.spearman_matrix()
    assert names == result.methods and matrix.shape == (3, 3)
    np.testing.assert_allclose(matrix, matrix.T)
    out = tmp_path / "cmp.png"
    fig = result.plot(out=str(out))
    assert out.stat().st_size > 10_000
    assert any("Spearman" in ax.get_title() for ax in fig.axes)


def test_default_segmentation_when_no_mask():
    model, x, _, _ = _setup(seed=4)
    result = compare_methods(
        model,
        x,
        target=0,
        methods=("captum_feature_ablation",),
        segmentation={"method": "grid", "n_segments": 4},
    )
    assert result.n_segments == 4 and result.scores["captum_feature_ablation"].shape == (4,)


def test_photo_is_only_for_display():
    model, x, mask, _ = _setup(seed=5)
    photo = np.round(x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    kwargs = {"target": 0, "feature_mask": mask, "methods": ("captum_feature_ablation",)}
    with_photo = compare_methods(model, x, photo=photo, **kwargs)
    np.testing.assert_allclose(with_photo.image, photo / 255.0)
    without = compare_methods(model, x, **kwargs)
    np.testing.assert_array_equal(
        with_photo.scores["captum_feature_ablation"], without.scores["captum_feature_ablation"]
    )
    assert without.image.shape == (16, 16, 3) and 0.0 <= without.image.min() <= 1.0
    with pytest.raises(ValueError, match="channels-first"):
        compare_methods(model, x, photo=np.moveaxis(photo, -1, 0), **kwargs)
    with pytest.raises(ValueError, match="resized to the input size"):
        compare_methods(model, x, photo=photo[:8], **kwargs)


def test_validation():
    model, x, mask, _ = _setup()
    with pytest.raises(ValueError, match="one image"):
        compare_methods(model, torch.cat([x, x]), 0, mask, methods=("lime",))
    with pytest.raises(ValueError, match="unknown methods"):
        compare_methods(model, x, 0, mask, methods=("gradcam",))
    with pytest.raises(ValueError, match="layer="):
        compare_methods(model, x, 0, mask, methods=("secam",))
    with pytest.raises(ValueError, match="one colour"):
        compare_methods(model, x, 0, mask, methods=("lime",), baseline=torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="contiguous"):
        compare_methods(model, x, 0, mask + 1, methods=("lime",))
    with pytest.raises(ValueError, match="duplicates"):
        compare_methods(model, x, 0, mask, methods=("lime", "lime"))


# ---------------------------------------------------------------- agreement measures


def test_spearman_known_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)  # monotone
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="differ in length"):
        spearman([1, 2], [1, 2, 3])


def test_top_k_overlap_known_values():
    a = [5.0, 4.0, 3.0, 2.0, 1.0]
    assert top_k_overlap(a, a, 2) == 1.0
    assert top_k_overlap(a, [1.0, 2.0, 3.0, 4.0, 5.0], 2) == 0.0
    assert top_k_overlap(a, [5.0, 1.0, 4.0, 0.0, 0.0], 2) == 0.5
    with pytest.raises(ValueError, match="k must be"):
        top_k_overlap(a, a, 6)


def test_result_from_given_scores():
    mask = torch.arange(4).reshape(1, 1, 2, 2)
    result = ComparisonResult(
        scores={"a": np.array([1.0, 2, 3, 4]), "b": np.array([4.0, 3, 2, 1])},
        times={"a": 0.1, "b": 0.2},
        target=0,
        feature_mask=mask,
        image=np.zeros((2, 2, 3)),
        top_k=2,
    )
    assert result.spearman["a"]["b"] == pytest.approx(-1.0)
    assert result.top_k_overlap["a"]["b"] == 0.0


@pytest.mark.slow
def test_real_model_small_budget():
    demo = pytest.importorskip("captum_secam.demo_model")
    try:
        model = demo.load_efficientnet_lite0()
    except ImportError:
        pytest.skip("demo extra not installed")
    photo = demo.resize_photo(demo.load_photo("chelsea"))
    x = demo.preprocess_photo(photo)
    mask = segment(x, photo=photo, n_segments=20)
    result = compare_methods(
        model,
        x,
        feature_mask=mask,
        methods=("secam", "captum_lime", "lime", "shap_kernel"),
        layer=model._bn1,
        n_samples=120,
        photo=photo,
    )
    assert result.target == 285  # Egyptian cat
    for name, scores in result.scores.items():
        assert np.isfinite(scores).all() and np.abs(scores).max() > 0, name
    # same recipe, different random draws: lime and Captum Lime rank alike
    assert result.spearman["lime"]["captum_lime"] > 0.5


def test_missing_optional_library_names_the_extra(monkeypatch):
    import sys

    model, x, mask, _ = _setup()
    monkeypatch.setitem(sys.modules, "lime", None)
    monkeypatch.setitem(sys.modules, "lime.lime_image", None)
    monkeypatch.setitem(sys.modules, "shap", None)
    with pytest.raises(ImportError, match=r"captum-secam\[lime\]"):
        compare_methods(model, x, 0, mask, methods=("lime",))
    with pytest.raises(ImportError, match=r"captum-secam\[shap\]"):
        compare_methods(model, x, 0, mask, methods=("shap_kernel",))


def test_package_reexports_every_adapter():
    import captum_secam.interop as interop

    for name in (
        "compare_methods",
        "lime_segment_scores",
        "shap_kernel_explain",
        "SegmentMasker",
        "captum_attribute",
        "attribution_to_segment_scores",
    ):
        assert name in interop.__all__ and callable(getattr(interop, name)), name
