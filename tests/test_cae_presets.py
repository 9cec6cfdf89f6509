"""Presets (plain config objects saved with the checkpoint) and the ``train-cae`` command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from captum_secam.cae import ClassAssociationEmbedding, train_cae
from captum_secam.cae.presets import PRESETS, CaePreset, get_preset
from captum_secam.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _count(params: object) -> int:
    return sum(p.numel() for p in params)  # type: ignore[attr-defined]


def test_paper_preset_is_the_authors_architecture() -> None:
    cfg = get_preset("paper").model_config(256, 3, 2)
    assert (cfg.base_channels, cfg.n_downsample, cfg.n_res_blocks) == (64, 2, 6)
    assert (cfg.disc_downsample, cfg.disc_channels, cfg.mlp_dim, cfg.up_kernel) == (4, 64, 256, 5)
    cae = ClassAssociationEmbedding.from_config(cfg)
    n_gen, n_disc = _count(cae.generator_parameters()), _count(cae.discriminator.parameters())
    assert 19.5e6 < n_gen < 21e6  # "about 20 M generator parameters"
    assert 12e6 < n_disc < 13e6
    assert cae.individual_code_shape == (256, 64, 64)
    # the discriminator has 4 stride-2 layers: 256 px -> 16 px
    strided = [m for m in cae.discriminator.body if isinstance(m, torch.nn.Conv2d)]
    assert [m.stride for m in strided] == [(2, 2)] * 4
    with torch.no_grad():
        rf, cls = cae.discriminator.body(torch.zeros(1, 3, 256, 256)).shape, None
    assert rf[-2:] == (16, 16) and cls is None


def test_discriminator_depth_is_configurable_and_small_is_the_default_recipe() -> None:
    small = get_preset("small").model_config(32, 1, 3)
    assert small == ClassAssociationEmbedding(32, 1, 3).config  # the CaeConfig defaults
    deep = get_preset("small").model_config(32, 1, 3, disc_downsample=3)
    strided = [m for m in ClassAssociationEmbedding.from_config(deep).discriminator.body]
    assert sum(isinstance(m, torch.nn.Conv2d) for m in strided) == 3
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="unknown architecture keys"):
        CaePreset("bad", architecture={"image_size": 4})
    with pytest.raises(ValueError, match="unknown preset keys"):
        CaePreset.from_json_dict({"name": "x", "bogus": 1})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name: str) -> None:
    preset = PRESETS[name]
    again = CaePreset.from_json_dict(json.loads(json.dumps(preset.to_json_dict())))
    assert again == preset


def test_a_preset_is_saved_with_the_model_and_the_checkpoint(tmp_path: Path) -> None:
    preset = CaePreset(
        "tiny",
        architecture={"base_channels": 4, "mlp_dim": 8, "disc_channels": 4, "class_code_dim": 4},
        training={"batch_size": 4, "lr": 1e-3, "weight_decay": 1e-4},
    )
    cfg = preset.model_config(16, 1, 2, class_names=("a", "b"))
    torch.manual_seed(0)
    cae = ClassAssociationEmbedding.from_config(cfg)
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.rand(12, 1, 16, 16, generator=g), torch.arange(12) % 2)
    train_cae(
        cae,
        ds,
        steps=2,
        discriminator_warmup=0,
        progress=False,
        preset=preset,
        checkpoint_dir=tmp_path,
        **preset.training,  # type: ignore[arg-type]
    )
    cae.save(tmp_path / "cae")
    loaded = ClassAssociationEmbedding.load(tmp_path / "cae")
    assert loaded.config == cfg
    assert CaePreset.from_json_dict(loaded.training_info["preset"]) == preset
    assert loaded.training_info["weight_decay"] == 1e-4
    ck = torch.load(tmp_path / "cae_training_checkpoint.pt", weights_only=True)
    assert json.loads(ck["options"])["preset"]["name"] == "tiny"


def _image_folder(root: Path, size: int = 20) -> None:
    rng = np.random.default_rng(0)
    for k, name in enumerate(["left", "right"]):
        (root / name).mkdir(parents=True)
        for i in range(8):
            arr = rng.integers(0, 50, (size, size, 3)).astype(np.uint8)
            arr[:, k * 10 : k * 10 + 6] = 230
            Image.fromarray(arr).save(root / name / f"{i}.png")


def test_train_cae_command_trains_validates_snapshots_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = tmp_path / "data", tmp_path / "run"
    _image_folder(data)
    args = [
        "train-cae",
        str(data),
        "--preset",
        "small",
        "--out",
        str(out),
        "--image-size",
        "16",
        "--batch-size",
        "4",
        "--workers",
        "1",
        "--validate-every",
        "2",
        "--checkpoint-every",
        "2",
        "--val-fraction",
        "0.25",
        "--no-progress",
        "--warmup",
        "2",
    ]
    assert main([*args, "--steps", "2"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    cae = ClassAssociationEmbedding.load(out / "cae")
    assert cae.class_names == ("left", "right") and cae.image_size == (16, 16)
    assert cae.training_info["preset"]["name"] == "small"
    with (out / "logs" / "validation.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["2"] and 0.0 <= float(rows[0]["swap_success"]) <= 1.0
    assert (out / "logs" / "swap_grid_000002.png").is_file()
    # the same command with more steps resumes from the checkpoint
    assert main([*args, "--steps", "4"]) == 0
    resumed = ClassAssociationEmbedding.load(out / "cae")
    assert resumed.training_info["steps"] == 4
    # the warm-up of the first run is kept, not repeated
    assert resumed.training_info["discriminator_warmup"] == 2
    with pytest.raises(SystemExit):
        main(["train-cae", str(tmp_path / "nothing"), "--out", str(out)])
    assert "is not a folder" in capsys.readouterr().err
