"""explain_dataset: rows, values, resume after kill -9, refusals, reader, CLI (tiny seeded CNN)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_secam import SeCam, segment
from captum_secam.dataset import (
    DatasetConfigError,
    Normalize,
    decode_mask_png,
    draw_overlay,
    encode_mask_png,
    explain_dataset,
    read_manifest,
    read_results,
    row_explanation,
)
from captum_secam.dataset.schema import TIMING_COLUMNS
from captum_secam.dataset.sources import decode_image
from captum_secam.interop.captum_methods import captum_attribute

sys.path.insert(0, os.path.dirname(__file__))
from _dataset_helpers import (
    IMAGE_SIZE,
    N_GOOD,
    SEGMENTATION,
    TinyNet,
    blocky_photo,
    make_folder,
    tiny_model,
)

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
OPTIONS: dict[str, Any] = {
    "image_size": IMAGE_SIZE,
    "segmentation": SEGMENTATION,
    "num_workers": 0,
    "batch_size": 3,
    "shard_size": 4,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    make_folder(str(root))
    return root


@pytest.fixture(scope="module")
def model() -> TinyNet:
    return tiny_model()


@pytest.fixture(scope="module")
def reference(folder: Path, model: TinyNet, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An uninterrupted run (the table every resumed run must equal)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    explain_dataset(folder, model, out, layer=model.features, **OPTIONS)
    return read_results(out)


def without_timings(table: Any) -> list[dict[str, Any]]:
    return table.drop_columns(list(TIMING_COLUMNS)).to_pylist()


# ------------------------------------------------------------------------------------------
# Rows and their values
# ------------------------------------------------------------------------------------------


def test_every_file_has_one_row_in_sorted_order(reference: Any, folder: Path) -> None:
    rows = reference.to_pylist()
    paths = [r["path"] for r in rows]
    assert paths == sorted(paths)
    assert [r["id"] for r in rows] == list(range(N_GOOD + 2))
    assert "readme.txt" not in paths and "sub/img5.png" in paths
    errors = {r["path"]: r["error"] for r in rows if r["status"] == "error"}
    assert set(errors) == {"broken.jpg", "truncated.png"}
    assert all(e.startswith("OSError:") and "0x" not in e for e in errors.values())
    assert {r["status"] for r in rows} == {"ok", "error"}
    assert all(r["shard"] == r["id"] // 4 for r in rows)


@pytest.fixture(scope="module")
def reference_rows(reference: Any) -> dict[str, dict[str, Any]]:
    return {r["path"]: r for r in reference.to_pylist()}


def test_scores_equal_per_image_secam(reference: Any, folder: Path, model: TinyNet) -> None:
    """Batched job == SeCam.attribute one image at a time on the same photo and mask."""
    secam = SeCam(model, model.features)
    checked = 0
    for index in range(reference.num_rows):
        row = (
            row_explanation(reference, index)
            if reference["status"][index].as_py() == "ok"
            else None
        )
        if row is None:
            continue
        with open(folder / row["path"], "rb") as handle:
            photo, (width, height) = decode_image(handle.read(), IMAGE_SIZE)
        x = Normalize(0, 255)(photo)[None]
        mask = segment(photo, **SEGMENTATION)
        assert np.array_equal(row["mask"], mask[0, 0].numpy())
        expected = secam.attribute(x, feature_mask=mask, return_input_shape=False)[0]
        assert np.allclose(row["scores"], expected.numpy(), atol=1e-6, rtol=0)
        with torch.no_grad():
            logits = model(x)[0]
        assert row["predicted_class"] == int(logits.argmax()) == row["target"]
        assert row["predicted_probability"] == pytest.approx(
            float(logits.softmax(0).max()), abs=1e-6
        )
        assert row["n_segments"] == int(mask.max()) + 1 == len(row["scores"])
        order = np.argsort(-row["scores"], kind="stable")[:4].tolist()
        assert row["top_k"] == order
        assert (row["width"], row["height"]) == (width, height)
        assert row["method"] == "secam" and json.loads(row["params"])["interpolate_mode"]
        checked += 1
    assert checked == N_GOOD


def test_gray_and_rgba_are_converted(reference_rows: dict[str, Any], folder: Path) -> None:
    from PIL import Image

    assert reference_rows["gray.png"]["status"] == "ok"
    assert reference_rows["alpha.png"]["status"] == "ok"
    assert reference_rows["wide16.png"]["status"] == "ok"
    gray, _ = decode_image((folder / "gray.png").read_bytes(), IMAGE_SIZE)
    assert np.array_equal(gray[..., 0], gray[..., 1])
    with Image.open(folder / "alpha.png") as image:
        rgb = np.asarray(image.convert("RGB").resize((IMAGE_SIZE,) * 2, Image.Resampling.BILINEAR))
    assert np.array_equal(decode_image((folder / "alpha.png").read_bytes(), IMAGE_SIZE)[0], rgb)


def test_workers_give_the_same_rows(
    folder: Path, model: TinyNet, reference: Any, tmp_path: Path
) -> None:
    explain_dataset(
        folder, model, tmp_path / "o", layer=model.features, **{**OPTIONS, "num_workers": 1}
    )
    assert without_timings(read_results(tmp_path / "o")) == without_timings(reference)


def test_target_and_other_methods(folder: Path, model: TinyNet, tmp_path: Path) -> None:
    explain_dataset(folder, model, tmp_path / "ab", method="feature_ablation", target=2, **OPTIONS)
    rows = [r for r in read_results(tmp_path / "ab").to_pylist() if r["status"] == "ok"]
    first = rows[0]
    photo, _ = decode_image((folder / first["path"]).read_bytes(), IMAGE_SIZE)
    x, mask = Normalize(0, 255)(photo)[None], segment(photo, **SEGMENTATION)
    expected = captum_attribute("feature_ablation", model, x, mask, target=2)[0]
    assert np.allclose(first["scores"], expected.numpy(), atol=1e-6)
    assert all(r["target"] == 2 for r in rows)

    params = {"n_samples": 20}
    explain_dataset(
        folder, model, tmp_path / "lime", method="lime", method_params=params, **OPTIONS
    )
    lime_rows = read_results(tmp_path / "lime").to_pylist()
    row = lime_rows[3]
    photo, _ = decode_image((folder / row["path"]).read_bytes(), IMAGE_SIZE)
    x, mask = Normalize(0, 255)(photo)[None], segment(photo, **SEGMENTATION)
    expected = captum_attribute("lime", model, x, mask, n_samples=20, seed=0 + row["id"])[0]
    assert np.allclose(row["scores"], expected.numpy(), atol=1e-5)
    assert json.loads(row["params"])["n_samples"] == 20


def test_gradcam_and_attribution_instance(folder: Path, model: TinyNet, tmp_path: Path) -> None:
    from captum.attr import InputXGradient

    explain_dataset(
        folder, model, tmp_path / "g", method="gradcam", layer=model.features, **OPTIONS
    )
    explain_dataset(folder, model, tmp_path / "ixg", method=InputXGradient(model), **OPTIONS)
    row_g = read_results(tmp_path / "g").to_pylist()[0]
    row_i = read_results(tmp_path / "ixg").to_pylist()[0]
    photo, _ = decode_image((folder / row_g["path"]).read_bytes(), IMAGE_SIZE)
    x, mask = Normalize(0, 255)(photo)[None], segment(photo, **SEGMENTATION)
    gradcam = SeCam(model, model.features).attribute(
        x, feature_mask=mask, base="grad_cam", return_input_shape=False
    )
    assert np.allclose(row_g["scores"], gradcam[0].numpy(), atol=1e-6)
    from captum_secam.segmentation import segment_means

    pixel = InputXGradient(model).attribute(x.clone(), target=row_i["target"])
    assert np.allclose(row_i["scores"], segment_means(pixel.detach(), mask)[0].numpy(), atol=1e-6)
    assert row_i["method"] == "InputXGradient"


def test_torch_dataset_input(model: TinyNet, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    photos = [blocky_photo(rng, 30 + i, 40) for i in range(3)]

    class Photos(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> Any:
            if i == 1:  # a C×H×W tensor in [0, 1] with a label, as torchvision gives
                return torch.from_numpy(photos[i]).permute(2, 0, 1).float() / 255, 7
            return photos[i]

    explain_dataset(Photos(), model, tmp_path / "ds", layer=model.features, **OPTIONS)
    rows = read_results(tmp_path / "ds").to_pylist()
    assert [r["path"] for r in rows] == [None, None, None]
    assert [r["status"] for r in rows] == ["ok"] * 3
    with pytest.raises(ValueError, match="pass photo="):
        draw_overlay(tmp_path / "ds", 0)
    ax = draw_overlay(tmp_path / "ds", 0, photo=photos[0])
    assert ax.get_title().startswith("secam")


def test_model_left_as_found(folder: Path, tmp_path: Path) -> None:
    model = tiny_model()
    model.train()
    model.conv1.eval()
    explain_dataset(
        [str(folder / "img0.png")], model, tmp_path / "o", layer=model.features, **OPTIONS
    )
    assert model.training and not model.conv1.training and model.conv2.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    model.fc.bias.requires_grad_(False)
    explain_dataset(
        [str(folder / "img0.png")], model, tmp_path / "o2", layer=model.features, **OPTIONS
    )
    assert not model.fc.bias.requires_grad and model.fc.weight.requires_grad
    assert not model._forward_hooks


# ------------------------------------------------------------------------------------------
# Resume, refusal, empty input
# ------------------------------------------------------------------------------------------


def test_rerun_skips_finished_work(folder: Path, model: TinyNet, tmp_path: Path) -> None:
    out = tmp_path / "o"
    first = explain_dataset(folder, model, out, layer=model.features, **OPTIONS)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    again = explain_dataset(folder, model, out, layer=model.features, **OPTIONS)
    assert (first.n_explained, first.n_failed, first.n_skipped) == (N_GOOD, 2, 0)
    assert (again.n_explained, again.n_skipped, again.shards_written) == (0, N_GOOD + 2, 0)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert read_manifest(out)["complete"] is True
    os.remove(out / "part-00001.parquet")  # a lost shard is recomputed
    third = explain_dataset(folder, model, out, layer=model.features, **OPTIONS)
    assert third.shards_written == 1 and third.n_explained + third.n_failed == 4


def test_other_run_on_same_output_is_refused(folder: Path, model: TinyNet, tmp_path: Path) -> None:
    out = tmp_path / "o"
    explain_dataset(folder, model, out, layer=model.features, **OPTIONS)
    with pytest.raises(DatasetConfigError, match="method: 'secam' -> 'gradcam'"):
        explain_dataset(folder, model, out, method="gradcam", layer=model.features, **OPTIONS)
    with pytest.raises(DatasetConfigError, match="relu_attributions"):
        explain_dataset(
            folder,
            model,
            out,
            layer=model.features,
            method_params={"relu_attributions": True},
            **OPTIONS,
        )
    seg = {**SEGMENTATION, "n_segments": 12}
    with pytest.raises(DatasetConfigError, match="segmentation"):
        explain_dataset(
            folder, model, out, layer=model.features, **{**OPTIONS, "segmentation": seg}
        )
    other = tiny_model(seed=1)
    with pytest.raises(DatasetConfigError, match="model"):
        explain_dataset(folder, other, out, layer=other.features, **OPTIONS)
    with pytest.raises(DatasetConfigError, match="shard_size"):
        explain_dataset(folder, model, out, layer=model.features, **{**OPTIONS, "shard_size": 5})
    with pytest.raises(DatasetConfigError, match="images"):
        explain_dataset([str(folder / "img0.png")], model, out, layer=model.features, **OPTIONS)


def test_empty_and_foreign_folders(model: TinyNet, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image files"):
        explain_dataset(empty, model, tmp_path / "o", layer=model.features)
    (empty / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="1 other files ignored"):
        explain_dataset(empty, model, tmp_path / "o", layer=model.features)
    assert not (tmp_path / "o").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.csv").write_text("a,b")
    photo = tmp_path / "p.png"
    from PIL import Image

    Image.fromarray(blocky_photo(np.random.default_rng(0), 20, 20)).save(photo)
    with pytest.raises(ValueError, match=r"not empty and has no manifest\.json"):
        explain_dataset([str(photo)], model, foreign, layer=model.features, **OPTIONS)
    with pytest.raises(ValueError, match="is a file"):
        explain_dataset([str(photo)], model, photo, layer=model.features, **OPTIONS)


def test_validation_errors(folder: Path, model: TinyNet, tmp_path: Path) -> None:
    out = tmp_path / "o"
    img = str(folder / "img0.png")
    run = dict(OPTIONS)
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"batch_size": 0}, ValueError, "batch_size must be an integer >= 1"),
        ({"top_k": 0}, ValueError, "top_k"),
        ({"num_workers": -1}, ValueError, "num_workers"),
        ({"image_size": 4}, ValueError, "image_size"),
        ({"shard_size": 0}, ValueError, "shard_size"),
        ({"method": "xrai"}, ValueError, "unknown method 'xrai'"),
        (
            {"method_params": {"n_samples": 5}},
            ValueError,
            r"unknown parameter\(s\) \['n_samples'\]",
        ),
        ({"method_params": {"interpolate_mode": object()}}, ValueError, "JSON values"),
        ({"layer": None}, ValueError, "needs the layer"),
        ({"layer": nn.ReLU()}, ValueError, "not part of the model"),
        ({"target": 1.5}, ValueError, "class index"),
        ({"device": "meta"}, ValueError, "move it first"),
    ]
    for change, error, message in cases:
        kwargs = {"layer": model.features, **run, **change}
        with pytest.raises(error, match=message):
            explain_dataset(folder, model, out, **kwargs)
    with pytest.raises(ValueError, match=r"out of range for (a model with )?5 classes"):
        explain_dataset(folder, model, tmp_path / "t", layer=model.features, target=9, **run)
    with pytest.raises(ValueError, match="duplicates"):
        explain_dataset([img, img], model, out, layer=model.features, **run)
    with pytest.raises(ValueError, match="do not exist"):
        explain_dataset([img, img + ".missing"], model, out, layer=model.features, **run)
    with pytest.raises(ValueError, match="is empty"):
        explain_dataset([], model, out, layer=model.features, **run)
    with pytest.raises(ValueError, match="is not a folder"):
        explain_dataset(img, model, out, layer=model.features, **run)
    with pytest.raises(TypeError, match="images must be"):
        explain_dataset(3, model, out, layer=model.features, **run)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"nn\.Module"):
        explain_dataset(folder, lambda x: x, out, **run)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="preprocess must return a C×32×32"):
        explain_dataset(
            [img],
            model,
            tmp_path / "p",
            layer=model.features,
            preprocess=lambda photo: torch.zeros(3, 8, 8),
            **run,
        )
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalize(0, 0)


# ------------------------------------------------------------------------------------------
# kill -9 at several points, then resume
# ------------------------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    import captum_secam.dataset.store as store
    from captum_secam.dataset import explain_dataset
    from _dataset_helpers import TinyNet, IMAGE_SIZE, SEGMENTATION

    crash_call, when = {crash_call!r}, {when!r}
    calls = [0]
    real = store.atomic_replace

    def dying_replace(src, dst):
        calls[0] += 1
        if calls[0] == crash_call and when == "before":
            os._exit(9)          # like kill -9: no cleanup, no finally blocks
        real(src, dst)
        if calls[0] == crash_call and when == "after":
            os._exit(9)
        if when == "slow":
            import time; time.sleep(0.3)

    store.atomic_replace = dying_replace
    model = TinyNet()
    model.load_state_dict(torch.load({weights!r}, weights_only=True))
    explain_dataset({folder!r}, model.eval(), {out!r}, layer=model.features,
                    image_size=IMAGE_SIZE, segmentation=SEGMENTATION, num_workers={workers},
                    batch_size=3, shard_size=4)
    """
)


def _child(
    tmp_path: Path,
    folder: Path,
    model: TinyNet,
    out: Path,
    crash_call: int,
    when: str,
    workers: int = 0,
) -> Any:
    weights = tmp_path / "weights.pt"
    if not weights.exists():
        torch.save(model.state_dict(), weights)
    code = _CHILD.format(
        tests=TESTS_DIR,
        crash_call=crash_call,
        when=when,
        weights=str(weights),
        folder=str(folder),
        out=str(out),
        workers=workers,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], env=env)


class _Crash(BaseException):
    """Stops the job at an exact point (BaseException: nothing in the job may catch it)."""


_POINTS = [
    (1, "before"),  # the first manifest is in its temporary file, never renamed
    (2, "before"),  # shard 0 complete in its temporary file, not yet renamed
    (4, "after"),  # shard 1 renamed, the manifest does not list it yet
    (5, "after"),  # shard 1 listed in the manifest
]
_SKIPPED_AFTER = {1: 0, 2: 0, 4: 4, 5: 8}


def _expected_files() -> list[str]:
    shards = [f"part-0000{i}.parquet" for i in range(3)]
    return [".lock", "manifest.json", *shards]


@pytest.mark.parametrize(("crash_call", "when"), _POINTS)
def test_resume_after_crash_in_process(
    tmp_path: Path,
    folder: Path,
    model: TinyNet,
    reference: Any,
    monkeypatch: pytest.MonkeyPatch,
    crash_call: int,
    when: str,
) -> None:
    """Stop at each write point; the files left are what kill -9 there leaves."""
    import captum_secam.dataset.store as store

    calls = [0]
    real = store.atomic_replace

    def crashing_replace(src: str, dst: str) -> None:
        calls[0] += 1
        if calls[0] == crash_call and when == "before":
            raise _Crash
        real(src, dst)
        if calls[0] == crash_call:
            raise _Crash

    out = tmp_path / "out"
    monkeypatch.setattr(store, "atomic_replace", crashing_replace)
    with pytest.raises(_Crash):
        explain_dataset(folder, model, out, layer=model.features, **OPTIONS)
    monkeypatch.setattr(store, "atomic_replace", real)
    summary = explain_dataset(folder, model, out, layer=model.features, **OPTIONS)
    assert summary.n_skipped == _SKIPPED_AFTER[crash_call]
    assert without_timings(read_results(out)) == without_timings(reference)
    assert sorted(os.listdir(out)) == _expected_files()


def test_resume_after_kill_9_between_rename_and_manifest(
    tmp_path: Path, folder: Path, model: TinyNet, reference: Any
) -> None:
    """A real process ends by os._exit right after shard 1's rename (no cleanup at all)."""
    out = tmp_path / "out"
    child = _child(tmp_path, folder, model, out, crash_call=4, when="after")
    assert child.wait(timeout=120) == 9
    assert len(read_manifest(out)["shards"]) == 1
    summary = explain_dataset(folder, model, out, layer=model.features, **OPTIONS)
    assert summary.n_skipped == 4
    assert without_timings(read_results(out)) == without_timings(reference)
    assert sorted(os.listdir(out)) == _expected_files()


def test_resume_after_real_sigkill(
    tmp_path: Path, folder: Path, model: TinyNet, reference: Any
) -> None:
    out = tmp_path / "out"
    # With a DataLoader worker: the worker may outlive the killed job for a moment.
    child = _child(tmp_path, folder, model, out, crash_call=-1, when="slow", workers=1)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if read_manifest(out)["shards"]:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    listed = len(read_manifest(out)["shards"])
    assert 1 <= listed <= 3
    explain_dataset(folder, model, out, layer=model.features, **OPTIONS)
    table = read_results(out)
    ids = table.column("id").to_pylist()
    assert ids == sorted(set(ids)) == list(range(N_GOOD + 2))  # no missing, no duplicate
    assert without_timings(table) == without_timings(reference)


# ------------------------------------------------------------------------------------------
# Reader, mask codec, CLI
# ------------------------------------------------------------------------------------------


def test_reader_round_trip(folder: Path, model: TinyNet, tmp_path: Path) -> None:
    out = tmp_path / "o"
    explain_dataset(folder, model, out, layer=model.features, **OPTIONS)
    table = read_results(out)
    assert table.num_rows == N_GOOD + 2
    ok = table.column("status").to_pylist().index("ok")
    small = read_results(out, columns=["id", "scores"])
    assert small.column_names == ["id", "scores"]
    assert small.column("scores")[ok].as_py() == table.column("scores")[ok].as_py()
    frame = read_results(out, as_pandas=True)
    assert list(frame["id"]) == list(range(N_GOOD + 2))
    with pytest.raises(ValueError, match="unknown column"):
        read_results(out, columns=["nope"])
    with pytest.raises(FileNotFoundError, match="not the output of explain_dataset"):
        read_results(tmp_path)
    broken = table.column("path").to_pylist().index("broken.jpg")
    with pytest.raises(ValueError, match="was not explained: OSError"):
        row_explanation(table, broken)
    with pytest.raises(IndexError):
        row_explanation(table, 99)
    ax = draw_overlay(out, ok, table=table, class_names=list("abcde"))
    assert "segments" in ax.get_title()
    ax.get_figure().savefig(tmp_path / "overlay.png")
    assert (tmp_path / "overlay.png").stat().st_size > 1000


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 9), st.integers(1, 9), st.sampled_from([3, 255, 256, 4000]), st.integers(0, 99)
)
def test_mask_png_round_trip(height: int, width: int, n_ids: int, seed: int) -> None:
    labels = np.random.default_rng(seed).integers(0, n_ids, (height, width))
    assert np.array_equal(decode_mask_png(encode_mask_png(labels)), labels)


def test_mask_png_errors() -> None:
    with pytest.raises(ValueError, match="H×W"):
        encode_mask_png(np.zeros((2, 2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=">= 0"):
        encode_mask_png(-np.ones((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="65536"):
        encode_mask_png(np.full((2, 2), 70000))


class _DemoLike(nn.Module):
    """Stands in for EfficientNet-Lite0 in the CLI test: a ``_bn1`` layer, 1000 classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self._bn1 = nn.ReLU()
        self.fc = nn.Linear(4, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self._bn1(self.conv(x)).mean(dim=(2, 3)))


def test_cli(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    import captum_secam.demo_model as demo
    from captum_secam.cli import main

    monkeypatch.setattr(demo, "load_efficientnet_lite0", lambda: _DemoLike().eval())
    out = str(tmp_path / "o")
    args = ["explain-dataset", str(folder), "--out", out, "--workers", "0", "--no-progress"]
    assert main([*args, "--batch-size", "4", "--n-segments", "6"]) == 0
    text = capsys.readouterr().out
    assert f"{N_GOOD + 2} images; this run explained {N_GOOD}, failed 2" in text
    assert "failed: broken.jpg: OSError" in text and "ignored 1 files" in text
    assert read_results(out).num_rows == N_GOOD + 2
    assert main([*args, "--batch-size", "2", "--n-segments", "6"]) == 0
    assert "skipped 11 already done" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main([*args, "--method", "gradcam", "--n-segments", "6"])
    assert refused.value.code == 2
    assert "holds the results of another run" in capsys.readouterr().err
    for bad in (["--batch-size", "0"], ["--method", "nope"], ["--samples", "5"]):
        with pytest.raises(SystemExit) as error:
            main([*args, *bad])
        assert error.value.code == 2
    with pytest.raises(SystemExit):
        main(["explain-dataset", str(tmp_path / "missing"), "--out", out])


def test_second_writer_is_refused(folder: Path, model: TinyNet, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            f"f = open({str(out / '.lock')!r}, 'w'); fcntl.lockf(f, fcntl.LOCK_EX)\n"
            "print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match="another job is writing"):
            explain_dataset(folder, model, out, layer=model.features, **OPTIONS)
    finally:
        holder.kill()
        holder.wait()
    explain_dataset(folder, model, out, layer=model.features, **OPTIONS)  # free again
