"""The ``captum-secam`` command line: ``explain`` / ``demo`` on the real EfficientNet-Lite0
(small sample counts; they need the ``demo`` extra) and ``cae`` on the shipped binary-task
models (whose quality may change: the ``cae`` tests check the figure and the printed summary
against the explanation actually computed, not particular outcomes).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest
import torch

from captum_secam import cli
from captum_secam.cae import fashion_mnist

needs_demo = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None,
    reason='needs the "demo" extra',
)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert float(image[..., :3].std()) > 0.05  # not a blank canvas
    return image


# ----------------------------------------------------------------------------------------------
# Argument errors: one line from argparse, exit code 2, no traceback
# ----------------------------------------------------------------------------------------------


@needs_demo
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explain", "no_such_photo.jpg"], "neither an image file nor a sample photo name"),
        (["explain", "chelsea", "--method", "occlusion"], "invalid choice: 'occlusion'"),
        (["explain", "chelsea", "--n-segments", "0"], "expected a positive integer, got 0"),
        (["explain", "chelsea", "--samples", "many"], "expected a positive integer"),
        (["explain"], "the following arguments are required: IMAGE"),
        ([], "the following arguments are required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_argument_errors(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert out == ""


@needs_demo
@pytest.mark.slow
def test_errors_found_after_parsing_are_usage_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run_cli(
        capsys,
        "explain",
        "chelsea",
        "--method",
        "secam",
        "--target",
        "unicorn",
        "--out",
        str(tmp_path / "x.png"),
    )
    assert code == 2 and "neither a class index nor an ImageNet class name" in err
    code, _, err = run_cli(
        capsys,
        "explain",
        "chelsea",
        "--method",
        "secam",
        "--n-segments",
        "3",
        "--top-k",
        "40",
        "--out",
        str(tmp_path / "x.png"),
    )
    assert code == 2 and "--top-k 40 but SLIC found only" in err
    assert not (tmp_path / "x.png").exists()


@needs_demo
def test_help_mentions_subcommands_and_runtime() -> None:
    parser = cli.build_parser()
    assert "explain" in parser.format_help() and "demo" in parser.format_help()
    explain_help = subprocess.run(
        [sys.executable, "-m", "captum_secam", "explain", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "under a minute on 2 CPU cores" in explain_help
    assert "--samples" in explain_help and "--top-k" in explain_help


# ----------------------------------------------------------------------------------------------
# End to end on the real model
# ----------------------------------------------------------------------------------------------


@needs_demo
def test_explain_secam_only_from_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import skimage.data
    import skimage.io

    photo_path = tmp_path / "my cat.png"
    skimage.io.imsave(photo_path, skimage.data.chelsea())
    out = tmp_path / "secam.png"
    code, stdout, _ = run_cli(
        capsys, "explain", str(photo_path), "--method", "secam", "--top-k", "2", "--out", str(out)
    )
    assert code == 0
    assert f"wrote {out}" in stdout
    assert "predicted class: Egyptian cat (ImageNet 285" in stdout
    assert "SeCam" in stdout and "Lime" not in stdout
    assert_png(out)


@needs_demo
def test_explain_target_by_name(tmp_path: Path) -> None:
    result = cli.explain_photo(
        "chelsea", methods=("secam",), target="tabby", out=str(tmp_path / "t.png")
    )
    assert result.target == 281 and result.class_name == "tabby"
    assert set(result.attributions) == {"SeCam"}


@needs_demo
@pytest.mark.slow
def test_explain_all_methods(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "all.png"
    code, stdout, _ = run_cli(
        capsys, "explain", "chelsea", "--samples", "16", "--top-k", "3", "--out", str(out)
    )
    assert code == 0
    for name in ("SeCam", "Captum LayerGradCam", "Captum Lime", "Captum KernelShap"):
        assert name in stdout
    assert "Egyptian cat" in stdout
    assert_png(out)


@needs_demo
@pytest.mark.slow
def test_explain_photo_results_are_sensible(tmp_path: Path) -> None:
    result = cli.explain_photo("chelsea", samples=24, top_k=4, out=str(tmp_path / "r.png"))
    mask = result.feature_mask
    assert result.class_name == "Egyptian cat"
    for name, attr in result.attributions.items():
        assert attr.shape[0] == 1 and attr.shape[2:] == (224, 224) and not attr.requires_grad
        assert torch.isfinite(attr).all()
        if name != "Captum LayerGradCam":
            # Segment methods are constant on each superpixel.
            for segment_id in range(int(mask.max()) + 1):
                values = attr[0, 0][mask[0, 0] == segment_id]
                assert float(values.max() - values.min()) < 1e-5
    for name, region in result.regions.items():
        selected = {int(s) for s in mask[region].unique()}
        assert len(selected) == 4, name
    assert result.timings["SeCam"] < result.timings["Captum Lime"]
    # The cat's face fills the photo's centre: SeCam's top segments lie mostly there.
    rows, cols = np.nonzero(result.regions["SeCam"][0, 0].numpy())
    assert 40 < rows.mean() < 184 and 40 < cols.mean() < 184


@needs_demo
@pytest.mark.slow
def test_demo_writes_the_chelsea_figure(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = cli.explain_photo

    def fewer_samples(image: str, **kwargs: object) -> cli.ExplainResult:
        calls.append((image, kwargs))
        return real(image, samples=16, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cli, "explain_photo", fewer_samples)
    out = tmp_path / "demo.png"
    code, stdout, _ = run_cli(capsys, "demo", "--out", str(out))
    assert code == 0
    assert calls == [("chelsea", {"out": str(out)})]
    assert f"wrote {out}" in stdout and "Egyptian cat" in stdout
    assert_png(out)


# ----------------------------------------------------------------------------------------------
# captum-secam cae (shipped binary-task models; no demo extra needed)
# ----------------------------------------------------------------------------------------------

CAE_NAMES = {"coats": ("Pullover", "Coat"), "planted": ("no mark", "mark")}


@pytest.fixture
def cae_runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict[str, Any], Any]]:
    """Record the keyword arguments and the result of each explanation the CLI computes."""
    calls: list[tuple[dict[str, Any], Any]] = []
    real = fashion_mnist._explain_sample

    def spy(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        calls.append(({"index": args[0], "out": args[1], **kwargs}, result))
        return result

    monkeypatch.setattr(fashion_mnist, "_explain_sample", spy)
    return calls


def test_cae_tasks_are_the_shipped_ones() -> None:
    assert cli.CAE_TASKS == fashion_mnist.PRETRAINED_TASKS
    assert set(cli.CAE_TASK_HELP) == set(cli.CAE_TASKS)


@pytest.mark.parametrize("task", ["coats", "planted"])
def test_cae_writes_the_figure_and_summarises_the_explanation(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    cae_runs: list[tuple[dict[str, Any], Any]],
    task: str,
) -> None:
    out = tmp_path / f"cae_{task}.png"
    code, stdout, err = run_cli(capsys, "cae", "--task", task, "--index", "3", "--out", str(out))
    assert code == 0 and "Traceback" not in err
    image = assert_png(out)
    assert image.shape[1] > 800 and image.shape[0] > 400
    assert len(cae_runs) == 1
    kwargs, result = cae_runs[0]
    assert kwargs["index"] == 3 and kwargs["task"] == task and kwargs["path"] == "linear"
    assert kwargs["min_confidence"] == 0.6 and kwargs["fit_steps"] == 30
    assert kwargs["t_end"] is None and kwargs["target"] is None
    res, names = result.explanation, result.class_names
    assert names == CAE_NAMES[task]
    lines = stdout.splitlines()
    assert len(lines) == 2 and lines[1] == f"wrote {out}"
    summary = lines[0]
    tgt, pred = int(res.target[0]), int(res.counterfactual_prediction[0])
    assert summary.startswith(f"{task} image 3 (true label {names[result.label]!r}): ")
    assert (
        f"explained {names[tgt]!r} -> counterfactual {names[pred]!r} "
        f"(p = {float(res.counterfactual_probability[0]):.2f})"
    ) in summary
    # both full class names appear whatever happened (explained class and the other one)
    assert f"{names[0]!r}" in summary and f"{names[1]!r}" in summary
    if bool(res.flipped[0]):
        assert summary.endswith(f"flipped at t* = {float(res.flip_position[0]):.2f}")
    else:
        assert "NOT flipped" in summary and "try --" in summary


def test_cae_options_reach_the_explanation(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    cae_runs: list[tuple[dict[str, Any], Any]],
) -> None:
    out = tmp_path / "opts.png"
    argv = ["cae", "--index", "5", "--target", "Coat", "--counterfactual-target", "0"]
    argv += ["--path", "gradient", "--t-end", "2.5", "--min-confidence", "none"]
    argv += ["--fit-steps", "2", "--out", str(out)]
    code, stdout, _ = run_cli(capsys, *argv)
    assert code == 0
    kwargs, result = cae_runs[0]
    assert kwargs["target"] == 1 and kwargs["counterfactual_target"] == 0
    assert kwargs["path"] == "gradient" and kwargs["t_end"] == 2.5
    assert kwargs["min_confidence"] is None and kwargs["fit_steps"] == 2
    assert int(result.explanation.target[0]) == 1
    assert "explained 'Coat' -> counterfactual " in stdout
    assert out.is_file()
    # names are case-insensitive, ids work too; "none" is accepted in any case
    args = cli.build_parser().parse_args(["cae", "--min-confidence", "None", "--target", "1"])
    assert args.min_confidence is None and args.target == "1" and args.task == "coats"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--index", "100"],
            "--index 100 is out of range; task 'coats' ships 100 test images: use 0..99",
        ),
        (["--index", "-1"], "expected a non-negative integer, got -1"),
        (["--index", "three"], "expected a non-negative integer, got 'three'"),
        (["--task", "shoes"], "invalid choice: 'shoes' (choose from 'coats', 'planted')"),
        (["--path", "curved"], "invalid choice: 'curved'"),
        (["--min-confidence", "1.5"], "expected a probability in [0, 1) or 'none'"),
        (["--min-confidence", "high"], "expected a probability in [0, 1) or 'none'"),
        (["--t-end", "0"], "expected a finite number > 0"),
        (["--t-end", "inf"], "expected a finite number > 0"),
        (["--fit-steps", "-2"], "expected a non-negative integer"),
        (
            ["--target", "boot"],
            "--target 'boot' is neither a class id nor a class name; the classes are "
            "0 = 'Pullover', 1 = 'Coat'",
        ),
        (["--target", "2"], "--target 2 is out of range; the classes are 0 = 'Pullover'"),
        (
            ["--task", "planted", "--counterfactual-target", "Pullover"],
            "the classes are 0 = 'no mark', 1 = 'mark'",
        ),
        (
            ["--target", "0", "--counterfactual-target", "pullover"],
            "--counterfactual-target 'Pullover' is the explained class (--target); move toward "
            "another class",
        ),
    ],
)
def test_cae_argument_errors_name_the_fix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    out = tmp_path / "never.png"
    code, stdout, err = run_cli(capsys, "cae", *argv, "--out", str(out))
    assert code == 2
    assert message in err
    assert "captum-secam cae: error:" in err and "Traceback" not in err
    assert stdout == "" and not out.exists()


def test_cae_counterfactual_target_equal_to_the_prediction(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sample = fashion_mnist.sample_task("coats")
    classifier, _ = fashion_mnist.load_pretrained("coats")
    with torch.no_grad():
        predicted = int(classifier(sample.images[:1]).argmax(1))
    name = ("Pullover", "Coat")[predicted]
    code, _, err = run_cli(
        capsys, "cae", "--counterfactual-target", name, "--out", str(tmp_path / "x.png")
    )
    assert code == 2
    assert f"--counterfactual-target {name!r} is the explained class (the classifier's" in err


def test_cae_help_lists_the_tasks_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run_cli(capsys, "cae", "--help")
    assert code == 0
    text = " ".join(stdout.split())
    for option in ("--task", "--index", "--path", "--t-end", "--min-confidence", "--fit-steps"):
        assert option in text
    assert "--target" in text and "--counterfactual-target" in text
    assert "'Pullover' (0) vs 'Coat' (1)" in text and "planted" in text
    assert "cae" in cli.build_parser().format_help()
