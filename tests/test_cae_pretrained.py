"""The shipped binary-task classifiers + CAEs, their sample files, ``explain_sample``, IDX reader.

The shipped models may be retrained at any time, so nothing here depends on how well they are
trained: the tests check what the code guarantees (layout, shapes, round trips, the samples'
content, the explanation's internal consistency, the figure written).
"""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from captum_secam.cae import (
    CaeCounterfactual,
    CaeExplanation,
    ClassAssociationEmbedding,
    plot_class_code_manifold,
)
from captum_secam.cae import figures as cae_figures
from captum_secam.cae.fashion_mnist import (
    ASSETS,
    CLASS_NAMES,
    DEFAULT_ROOT,
    PRETRAINED_TASKS,
    FashionMNISTClassifier,
    explain_sample,
    load_classifier,
    load_fashion_mnist,
    load_pretrained,
    load_samples,
    read_idx,
    sample_task,
    save_classifier,
    save_samples,
)
from captum_secam.cae.tasks import MARK_SIZE, load_task

pytestmark = pytest.mark.usefixtures("one_thread")

TASK_NAMES = {"coats": ("Pullover", "Coat"), "planted": ("no mark", "mark")}
ASSET_FILES = [
    "cae.json",
    "cae.safetensors",
    "classifier.json",
    "classifier.safetensors",
    "samples.npz",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


Models = dict[str, tuple[FashionMNISTClassifier, ClassAssociationEmbedding]]


@pytest.fixture(scope="module")
def models() -> Models:
    return {task: load_pretrained(task) for task in PRETRAINED_TASKS}


def _explain(
    classifier: FashionMNISTClassifier,
    cae: ClassAssociationEmbedding,
    x: torch.Tensor,
    **kw: object,
) -> CaeExplanation:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="CaeCounterfactual:", category=UserWarning)
        res = CaeCounterfactual(classifier, cae).attribute(x, return_counterfactuals=True, **kw)
    assert isinstance(res, CaeExplanation)
    return res


# --------------------------------------------------------------------------------------------
# Asset layout
# --------------------------------------------------------------------------------------------


def test_assets_are_one_small_pickle_free_folder_per_task() -> None:
    assert PRETRAINED_TASKS == ("coats", "planted")
    assert sorted(p.name for p in ASSETS.iterdir()) == sorted(PRETRAINED_TASKS)  # no 10-class
    total = 0
    for task in PRETRAINED_TASKS:
        folder = ASSETS / task
        assert sorted(p.name for p in folder.iterdir()) == ASSET_FILES
        total += sum(p.stat().st_size for p in folder.iterdir())
        with np.load(folder / "samples.npz", allow_pickle=False) as f:
            assert f["images"].dtype == np.uint8 and f["images"].shape == (100, 28, 28)
            assert f["labels"].shape == (100,) and set(f["labels"].tolist()) <= {0, 1}
            assert tuple(str(v) for v in f["class_names"]) == TASK_NAMES[task]
            assert ("regions" in f) == (task == "planted")
        doc = json.loads((folder / "classifier.json").read_text())
        assert doc["num_classes"] == 2 and tuple(doc["class_names"]) == TASK_NAMES[task]
    assert total < 8 * 2**20


@pytest.mark.parametrize("task", PRETRAINED_TASKS)
def test_pretrained_pair_shapes_and_names(models: Models, task: str) -> None:
    classifier, cae = models[task]
    assert isinstance(classifier, FashionMNISTClassifier) and isinstance(
        cae, ClassAssociationEmbedding
    )
    assert not classifier.training and not cae.training
    assert classifier.num_classes == cae.num_classes == 2
    assert cae.class_names == TASK_NAMES[task] == sample_task(task).class_names
    assert cae.centroids is not None and tuple(cae.centroids.shape) == (2, cae.class_code_dim)
    x, _ = load_samples(task)
    with torch.no_grad():
        logits = classifier(x[:8])
        s, c = cae.encode(x[:8])
        rec = cae.decode(s, c)
    assert logits.shape == (8, 2) and bool(torch.isfinite(logits).all())
    assert c.shape == (8, cae.class_code_dim) and s.shape[0] == 8
    assert rec.shape == x[:8].shape and 0.0 <= float(rec.min()) <= float(rec.max()) <= 1.0
    assert next(cae.parameters()).device.type == "cpu"


@pytest.mark.parametrize("task", PRETRAINED_TASKS)
def test_pretrained_models_round_trip(models: Models, task: str, tmp_path: Path) -> None:
    classifier, cae = models[task]
    x, _ = load_samples(task)
    save_classifier(classifier, tmp_path / "clf", cae.class_names, note="copy")
    clf2 = load_classifier(tmp_path / "clf")
    cae.save(tmp_path / "cae", include_discriminator=False)
    cae2 = ClassAssociationEmbedding.load(tmp_path / "cae")
    assert json.loads((tmp_path / "clf.json").read_text())["note"] == "copy"
    assert cae2.class_names == cae.class_names
    assert cae.centroids is not None and cae2.centroids is not None
    torch.testing.assert_close(cae2.centroids, cae.centroids)
    with torch.no_grad():
        torch.testing.assert_close(clf2(x[:4]), classifier(x[:4]))
        torch.testing.assert_close(cae2(x[:4]), cae(x[:4]))
    with pytest.raises(ValueError, match="one name per class"):
        save_classifier(classifier, tmp_path / "bad", CLASS_NAMES)


def test_default_classifier_is_the_coats_one(models: Models) -> None:
    x, _ = load_samples("coats")
    with torch.no_grad():
        torch.testing.assert_close(load_classifier()(x[:2]), models["coats"][0](x[:2]))


def test_unknown_task_names_the_choices(tmp_path: Path) -> None:
    for call in (load_pretrained, sample_task, load_samples):
        with pytest.raises(ValueError, match=r"'nope'.*\['coats', 'planted'\]"):
            call("nope")
    with pytest.raises(ValueError, match=r"\['coats', 'planted'\]"):
        explain_sample(0, tmp_path / "x.png", task="nope")
    with pytest.raises(FileNotFoundError, match="save_classifier"):
        load_classifier(tmp_path / "missing")


# --------------------------------------------------------------------------------------------
# Sample content
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", PRETRAINED_TASKS)
def test_samples_content(task: str) -> None:
    sample = sample_task(task)
    x, y = load_samples(task)
    assert len(sample) == 100 and x.shape == (100, 1, 28, 28) and x.dtype == torch.float32
    torch.testing.assert_close(x, sample.images)
    assert torch.equal(y, sample.labels) and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert set(y.tolist()) == {0, 1}  # both classes are among the samples
    if task == "coats":
        assert sample.regions is None
        return
    regions = sample.regions
    assert regions is not None and regions.shape == (100, 1, 28, 28) and regions.dtype == torch.bool
    for i in range(100):
        region = regions[i, 0]
        if int(y[i]) == 0:
            assert not bool(region.any()), i
            continue
        rows, cols = torch.nonzero(region, as_tuple=True)
        top, left = int(rows.min()), int(cols.min())
        square = torch.zeros_like(region)
        square[top : top + MARK_SIZE, left : left + MARK_SIZE] = True
        assert torch.equal(region, square), i  # exactly one 6×6 square
        # the planted mark is pure black / white (stored as uint8 0 or 255) there
        inside = x[i, 0][region]
        assert bool(((inside == 0) | (inside == 1)).all()), i


@pytest.mark.skipif(
    not (DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="needs the Debian dataset-fashion-mnist files",
)
@pytest.mark.parametrize("task", PRETRAINED_TASKS)
def test_samples_are_the_first_test_images_of_the_task(task: str) -> None:
    """The marks sit exactly on the regions: outside them, the samples are the dataset's images."""
    sample = sample_task(task)
    full = load_task(task, "test")
    assert full.class_names == sample.class_names
    assert torch.equal(full.labels[:100], sample.labels)
    stored = (full.images[:100] * 255).round() / 255  # the samples are uint8
    if task == "coats":
        assert sample.regions is None
        torch.testing.assert_close(sample.images, stored, atol=0, rtol=0)
        return
    assert full.regions is not None and sample.regions is not None
    assert torch.equal(full.regions[:100], sample.regions)
    outside = ~sample.regions
    torch.testing.assert_close(sample.images[outside], stored[outside], atol=0, rtol=0)
    garments, _ = load_fashion_mnist("test")
    marked = sample.labels == 1
    # every mark changes the garment under it
    changed = (sample.images - garments[:100]).abs().amax((1, 2, 3))
    assert bool((changed[marked] > 0).all()) and bool((changed[~marked] == 0).all())


def test_save_samples_round_trip(tmp_path: Path) -> None:
    sample = sample_task("planted")
    path = save_samples(sample, tmp_path / "s.npz", n=10)
    with np.load(path, allow_pickle=False) as f:
        np.testing.assert_array_equal(f["images"], (sample.images[:10, 0] * 255).round().numpy())
        np.testing.assert_array_equal(f["labels"], sample.labels[:10].numpy())
        np.testing.assert_array_equal(f["regions"], sample.regions[:10, 0].numpy())  # type: ignore[index]
        assert tuple(str(v) for v in f["class_names"]) == ("no mark", "mark")


# --------------------------------------------------------------------------------------------
# Explanations with the shipped models
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "path"), [("coats", "linear"), ("planted", "gradient")])
def test_explanation_under_no_grad_is_consistent(models: Models, task: str, path: str) -> None:
    classifier, cae = models[task]
    x, _ = load_samples(task)
    with torch.no_grad():
        res = _explain(classifier, cae, x[:4], path=path, fit_steps=3)
    assert res.attributions.shape == x[:4].shape and float(res.attributions.min()) >= 0.0
    assert res.counterfactuals.shape == res.reconstructions.shape == x[:4].shape
    assert res.individual_codes.shape[0] == 4
    assert res.class_codes.shape == res.counterfactual_codes.shape == (4, cae.class_code_dim)
    with torch.no_grad():
        pred = classifier(x[:4]).argmax(1)
        p_cf = classifier(res.counterfactuals).softmax(1)
        rec = cae.decode(res.individual_codes, res.class_codes)
    assert torch.equal(res.target, pred)  # default target: the prediction
    assert bool((res.counterfactual_target != res.target).all())
    # the reported counterfactual prediction and probability are the classifier's
    assert torch.equal(p_cf.argmax(1), res.counterfactual_prediction)
    torch.testing.assert_close(
        p_cf[torch.arange(4), res.counterfactual_prediction],
        res.counterfactual_probability,
        atol=1e-4,
        rtol=0,
    )
    torch.testing.assert_close(rec, res.reconstructions, atol=1e-4, rtol=0)  # codes used
    flipped = res.flipped
    assert bool((res.counterfactual_prediction[flipped] != res.target[flipped]).all())
    assert bool((res.counterfactual_probability[flipped] >= 0.6).all())
    assert all(p.grad is None for p in (*classifier.parameters(), *cae.parameters()))


def test_manifold_plot(models: Models) -> None:
    classifier, cae = models["coats"]
    x, y = load_samples("coats")
    res = _explain(classifier, cae, x[:1])
    fig = plot_class_code_manifold(cae, x, y, explanation=res)
    ax = fig.axes[0]
    assert "path" in ax.get_title()
    line = ax.get_lines()[0].get_xydata()
    assert line.shape[0] == res.path_codes.shape[1]
    with pytest.raises(ValueError, match="example 3 out of range"):
        plot_class_code_manifold(cae, x, y, explanation=res, example=3)


# --------------------------------------------------------------------------------------------
# explain_sample
# --------------------------------------------------------------------------------------------


def _titles(fig: Figure) -> dict[str, str]:
    return {str(ax.get_label()): ax.get_title() for ax in fig.axes if ax.get_label()}


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[tuple[CaeExplanation, Figure, dict]]:
    """Record each ``plot_counterfactual`` call of ``explain_sample`` and its figure."""
    calls: list[tuple[CaeExplanation, Figure, dict]] = []
    real = cae_figures.plot_counterfactual

    def spy(explanation: CaeExplanation, *args: object, **kwargs: object) -> Figure:
        fig = real(explanation, *args, **kwargs)  # type: ignore[arg-type]
        calls.append((explanation, fig, kwargs))
        return fig

    monkeypatch.setattr(cae_figures, "plot_counterfactual", spy)
    return calls


@pytest.mark.parametrize("task", PRETRAINED_TASKS)
def test_explain_sample_writes_the_figure_of_its_explanation(
    models: Models,
    drawn: list[tuple[CaeExplanation, Figure, dict]],
    task: str,
    tmp_path: Path,
) -> None:
    classifier, cae = models[task]
    out = explain_sample(3, tmp_path / "sub" / "e.png", task=task)
    assert out == tmp_path / "sub" / "e.png"
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and 10_000 < len(data) < 2_000_000
    image = matplotlib.image.imread(out)
    assert image.shape[1] > 800 and image.shape[0] > 400
    assert float(image[..., :3].std()) > 0.05  # not a blank canvas

    (res, fig, kwargs) = drawn[0]
    names = TASK_NAMES[task]
    sample = sample_task(task)
    assert kwargs["class_names"] == names and kwargs["label"] == int(sample.labels[3])
    assert kwargs["n_path_images"] == 6
    # the explanation is the one of sample 3 with the shipped models
    ref = _explain(classifier, cae, sample.images[3:4])
    torch.testing.assert_close(res.attributions, ref.attributions)
    titles = _titles(fig)
    assert {"original", "reconstruction", "counterfactual", "saliency"} <= set(titles)
    assert [f"path {m}" in titles for m in range(6)] == [True] * 6
    assert f"true label: {names[int(sample.labels[3])]}" in titles["original"]
    pred = int(res.counterfactual_prediction[0])
    prob = float(res.counterfactual_probability[0])
    assert f"{names[pred]} ({prob:.2f})" in titles["counterfactual"].replace("\n", " ")
    suptitle = fig.get_suptitle().replace("\n", " ")
    assert f"explaining {names[int(res.target[0])]!r}" in suptitle
    assert ("flips to" in suptitle) == bool(res.flipped[0])


def test_explain_sample_options(
    models: Models,
    drawn: list[tuple[CaeExplanation, Figure, dict]],
    tmp_path: Path,
) -> None:
    classifier, cae = models["coats"]
    x, _ = load_samples("coats")
    explain_sample(
        5,
        tmp_path / "a.png",
        target="cOAT",  # names are case-insensitive
        counterfactual_target=0,
        min_confidence=None,
        n_path_images=3,
    )
    res, fig, kwargs = drawn[-1]
    assert int(res.target[0]) == 1 and int(res.counterfactual_target[0]) == 0
    assert kwargs["n_path_images"] == 3 and "path 2" in _titles(fig)
    # an image of one's own, with a label given by name and one's own models
    out = explain_sample(
        image=x[7, 0], label="Pullover", classifier=classifier, cae=cae, out=tmp_path / "b.png"
    )
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert drawn[-1][2]["label"] == 0
    torch.testing.assert_close(
        drawn[-1][0].attributions, _explain(classifier, cae, x[7:8]).attributions
    )
    with pytest.raises(ValueError, match=r"index must be an int in 0\.\.99"):
        explain_sample(100, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"n_path_images must be an int >= 2"):
        explain_sample(0, tmp_path / "x.png", n_path_images=1)
    with pytest.raises(ValueError, match=r"'unicorn'.*0 = 'Pullover', 1 = 'Coat'"):
        explain_sample(0, tmp_path / "x.png", target="unicorn")
    with pytest.raises(ValueError, match=r"counterfactual_target 2 is out of range"):
        explain_sample(0, tmp_path / "x.png", counterfactual_target=2)
    with pytest.raises(ValueError, match="image must be one"):
        explain_sample(image=x[:2], out=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------------------------
# Fashion-MNIST files
# --------------------------------------------------------------------------------------------


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
    assert len(CLASS_NAMES) == 10 and CLASS_NAMES[7] == "Sneaker"
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path)
    with pytest.raises(ValueError, match="split must be"):
        load_fashion_mnist("valid", tmp_path)
