"""The shipped Fashion-MNIST classifier + CAE, the sample file, the figure helper, IDX reader."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from captum_secam.cae import CaeCounterfactual, CaeExplanation, plot_class_code_manifold
from captum_secam.cae.fashion_mnist import (
    ASSETS,
    CLASS_NAMES,
    explain_fashion_mnist,
    load_fashion_mnist,
    load_pretrained,
    load_samples,
    read_idx,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models():  # type: ignore[no-untyped-def]
    return load_pretrained()


def test_assets_are_small_and_pickle_free() -> None:
    files = sorted(p.name for p in ASSETS.iterdir())
    assert files == [
        "cae.json",
        "cae.safetensors",
        "classifier.json",
        "classifier.safetensors",
        "fashion_mnist_samples.npz",
    ]
    assert sum(p.stat().st_size for p in ASSETS.iterdir()) < 8 * 2**20
    with np.load(ASSETS / "fashion_mnist_samples.npz", allow_pickle=False) as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape == (100, 28, 28)


def test_pretrained_models_classify_the_samples(models) -> None:  # type: ignore[no-untyped-def]
    classifier, cae = models
    x, y = load_samples()
    assert x.shape == (100, 1, 28, 28) and float(x.max()) <= 1.0
    assert cae.class_names == CLASS_NAMES and cae.centroids is not None
    with torch.no_grad():
        acc = float((classifier(x).argmax(1) == y).float().mean())
        rec_err = float((cae(x) - x).abs().mean())
    assert acc > 0.8
    assert rec_err < 0.1


def test_pretrained_explanations_flip_and_batch_equals_single(models) -> None:  # type: ignore[no-untyped-def]
    classifier, cae = models
    x, _ = load_samples()
    ex = CaeCounterfactual(classifier, cae)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        kw = dict(path="gradient", t_end=3.0, return_counterfactuals=True)
        res = ex.attribute(x[:6], **kw)
        singles = [ex.attribute(x[i : i + 1], **kw) for i in range(3)]
    assert isinstance(res, CaeExplanation)
    # all six reconstructions keep their class and every one flips on this path
    assert res.flipped.tolist() == [True] * 6
    with torch.no_grad():
        pred_cf = classifier(res.counterfactuals).argmax(1)
    assert bool((pred_cf[res.flipped] != res.target[res.flipped]).all())
    assert res.decoder_passes <= 50
    for i, one in enumerate(singles):
        assert isinstance(one, CaeExplanation)
        torch.testing.assert_close(res.attributions[i], one.attributions[0], atol=1e-4, rtol=0)
        assert bool(res.flipped[i]) == bool(one.flipped[0])


def test_explain_fashion_mnist_writes_png(tmp_path: Path, models) -> None:  # type: ignore[no-untyped-def]
    classifier, cae = models
    out = explain_fashion_mnist(1, tmp_path / "e.png", classifier=classifier, cae=cae)
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"index must be in 0\.\.99"):
        explain_fashion_mnist(100, tmp_path / "x.png", classifier=classifier, cae=cae)


def test_manifold_plot(models) -> None:  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    classifier, cae = models
    x, y = load_samples()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res = CaeCounterfactual(classifier, cae).attribute(x[:1], return_counterfactuals=True)
    fig = plot_class_code_manifold(cae, x, y, explanation=res)
    ax = fig.axes[0]
    assert "path" in ax.get_title()
    line = ax.get_lines()[0].get_xydata()
    assert line.shape[0] == res.path_codes.shape[1]
    with pytest.raises(ValueError, match="example 3 out of range"):
        plot_class_code_manifold(cae, x, y, explanation=res, example=3)
    with pytest.raises(ValueError, match="method must be"):
        plot_class_code_manifold(cae, x, y, method="umap")


def test_read_idx_round_trip(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    p = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(p, "wb") as f:
        f.write(header + arr.tobytes())
    np.testing.assert_array_equal(read_idx(p), arr)
    bad = tmp_path / "bad"
    bad.write_bytes(header + arr.tobytes()[:-1])
    with pytest.raises(ValueError, match="payload size"):
        read_idx(bad)
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)


def test_load_fashion_mnist_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path)
    with pytest.raises(ValueError, match="split must be"):
        load_fashion_mnist("valid", tmp_path)
