"""The ``captum-secam`` command line (real EfficientNet-Lite0; small sample counts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from captum_secam import cli

pytest.importorskip("efficientnet_lite_pytorch", reason='needs the "demo" extra')


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


def test_explain_target_by_name(tmp_path: Path) -> None:
    result = cli.explain_photo(
        "chelsea", methods=("secam",), target="tabby", out=str(tmp_path / "t.png")
    )
    assert result.target == 281 and result.class_name == "tabby"
    assert set(result.attributions) == {"SeCam"}


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


def test_cae_explains_a_shipped_fashion_mnist_image(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "cae.png"
    assert cli.main(["cae", "--index", "3", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[1] > 3 * image.shape[0]  # one row of panels
    assert float(np.std(image)) > 0.05  # not a blank figure


def test_cae_rejects_an_index_outside_the_shipped_samples() -> None:
    with pytest.raises(SystemExit, match=r"0\.\.99"):
        cli.main(["cae", "--index", "100"])
