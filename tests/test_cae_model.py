"""ClassAssociationEmbedding: shapes, validation, save/load round trip and mismatch errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from captum_secam.cae import CaeConfig, ClassAssociationEmbedding
from captum_secam.cae.model import cae_paths

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cae(**kw: object) -> ClassAssociationEmbedding:
    torch.manual_seed(0)
    args: dict = dict(base_channels=4, n_res_blocks=1, mlp_dim=8, disc_channels=4, up_kernel=3)
    args.update(kw)
    return ClassAssociationEmbedding(16, 1, 3, class_code_dim=4, **args).eval()


def test_encode_decode_shapes_and_range() -> None:
    cae = tiny_cae()
    x = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        s, c = cae.encode(x)
        y = cae.decode(s, c)
        rf, cls = cae.discriminate(x)
    assert s.shape == (5, *cae.individual_code_shape) == (5, 16, 4, 4)
    assert c.shape == (5, 4)
    assert y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert rf.shape == (5, 2) and cls.shape == (5, 3)


def test_unchanged_codes_decode_to_reconstruction() -> None:
    cae = tiny_cae()
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        s, c = cae.encode(x)
        torch.testing.assert_close(cae.decode(s, c), cae(x), rtol=0, atol=0)


def test_class_code_changes_the_image() -> None:
    cae = tiny_cae()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        s, c = cae.encode(x)
        assert not torch.allclose(cae.decode(s, c), cae.decode(s, c + 1.0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(image_size=30), "divisible"),
        (dict(in_channels=2), "in_channels must be 1 or 3"),
        (dict(num_classes=1), "num_classes must be >= 2"),
        (dict(class_names=["a", "b"]), "one name per class"),
        (dict(up_kernel=4), "up_kernel must be odd"),
        (dict(image_size=(16, 16, 1)), "image_size must be an int"),
    ],
)
def test_bad_config(kwargs: dict, match: str) -> None:
    base: dict = dict(image_size=16, in_channels=1, num_classes=3)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ClassAssociationEmbedding(**base)


def test_rgb_and_non_square_sizes() -> None:
    cae = ClassAssociationEmbedding((32, 48), 3, 4, base_channels=4, n_res_blocks=1, mlp_dim=8)
    x = torch.rand(2, 3, 32, 48)
    assert cae(x).shape == x.shape


@pytest.mark.parametrize(
    ("x", "exc", "match"),
    [
        (torch.rand(1, 16, 16), ValueError, "4-D"),
        (torch.rand(1, 3, 16, 16), ValueError, "3 channels but this CAE was built for 1"),
        (torch.rand(1, 1, 28, 28), ValueError, "built for 16×16"),
        (torch.rand(1, 1, 16, 16) * 255, ValueError, r"\[0, 1\]"),
        (torch.full((1, 1, 16, 16), float("nan")), ValueError, "NaN"),
        (torch.zeros(1, 1, 16, 16, dtype=torch.uint8), TypeError, "float"),
    ],
)
def test_check_images(x: torch.Tensor, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        tiny_cae().check_images(x)


def test_save_load_round_trip(tmp_path: Path) -> None:
    cae = tiny_cae(class_names=["a", "b", "c"])
    cae.set_centroids(torch.arange(12, dtype=torch.float32).view(3, 4))
    w, c = cae.save(tmp_path / "model.safetensors")
    assert (w.name, c.name) == ("model.safetensors", "model.json")
    loaded = ClassAssociationEmbedding.load(tmp_path / "model")
    assert loaded.config == cae.config
    assert loaded.class_names == ("a", "b", "c")
    assert loaded.centroids is not None
    torch.testing.assert_close(loaded.centroids, cae.centroids)
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), cae(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded.discriminate(x)[1], cae.discriminate(x)[1])
    assert not loaded.training


def test_save_without_discriminator(tmp_path: Path) -> None:
    cae = tiny_cae()
    cae.save(tmp_path / "m", include_discriminator=False)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert not any(k.startswith("discriminator.") for k in f.keys())
    loaded = ClassAssociationEmbedding.load(tmp_path / "m")
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), cae(x), rtol=0, atol=0)
    assert loaded.centroids is None


def test_load_rejects_config_that_does_not_match_weights(tmp_path: Path) -> None:
    tiny_cae().save(tmp_path / "m")
    doc = json.loads((tmp_path / "m.json").read_text())
    doc["config"]["base_channels"] = 8
    (tmp_path / "m.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="different config"):
        ClassAssociationEmbedding.load(tmp_path / "m")


def test_load_rejects_swapped_weights(tmp_path: Path) -> None:
    tiny_cae().save(tmp_path / "a")
    tiny_cae(base_channels=8).save(tmp_path / "b")
    (tmp_path / "b.safetensors").replace(tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="different config"):
        ClassAssociationEmbedding.load(tmp_path / "a")


def test_load_rejects_missing_tensor_even_with_matching_hash(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    cae = tiny_cae()
    w, _ = cae.save(tmp_path / "m")
    state = load_file(str(w))
    state.pop("decoder.mlp.0.weight")
    meta = {"format": "captum_secam.cae", "version": "1", "config_sha256": cae.config.sha256()}
    save_file(state, str(w), metadata=meta)
    with pytest.raises(ValueError, match="missing"):
        ClassAssociationEmbedding.load(tmp_path / "m")


def test_load_rejects_wrong_shape(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    cae = tiny_cae()
    w, _ = cae.save(tmp_path / "m")
    state = load_file(str(w))
    state["decoder.mlp.0.weight"] = torch.zeros(3, 3)
    meta = {"format": "captum_secam.cae", "version": "1", "config_sha256": cae.config.sha256()}
    save_file(state, str(w), metadata=meta)
    with pytest.raises(ValueError, match="shape"):
        ClassAssociationEmbedding.load(tmp_path / "m")


def test_load_errors_for_missing_or_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="safetensors"):
        ClassAssociationEmbedding.load(tmp_path / "nothing")
    tiny_cae().save(tmp_path / "m")
    (tmp_path / "m.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a captum_secam CAE config"):
        ClassAssociationEmbedding.load(tmp_path / "m")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ClassAssociationEmbedding.load(tmp_path / "m")


def test_config_rejects_unknown_keys() -> None:
    d = tiny_cae().config.to_json_dict()
    d["pickle"] = "x"
    with pytest.raises(ValueError, match="Unknown CAE config keys"):
        CaeConfig.from_json_dict(d)


def test_cae_paths() -> None:
    assert cae_paths("a/b") == cae_paths("a/b.json") == cae_paths("a/b.safetensors")


def test_centroids_validation_and_compute() -> None:
    cae = tiny_cae()
    with pytest.raises(ValueError, match="3×4"):
        cae.set_centroids(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        cae.set_centroids(torch.full((3, 4), float("nan")))
    x = torch.rand(9, 1, 16, 16)
    y = torch.tensor([0, 1, 2] * 3)
    cents = cae.compute_centroids(x, y)
    with torch.no_grad():
        codes = cae.encode_class(x)
    torch.testing.assert_close(cents[1], codes[y == 1].mean(0))
    with pytest.raises(ValueError, match=r"classes \[2\] have no images"):
        cae.compute_centroids(x[:2], y[:2])


def test_adain_upsampling_variant_round_trip(tmp_path: Path) -> None:
    cae = tiny_cae(adain_upsampling=True)
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        s, c = cae.encode(x)
        y = cae.decode(s, c)
        assert y.shape == x.shape
        assert not torch.allclose(y, cae.decode(s, c + 1.0))
    cae.save(tmp_path / "m")
    loaded = ClassAssociationEmbedding.load(tmp_path / "m")
    assert loaded.config.adain_upsampling
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), cae(x), rtol=0, atol=0)
    # a reference-decoder config cannot load these weights
    doc = json.loads((tmp_path / "m.json").read_text())
    doc["config"]["adain_upsampling"] = False
    (tmp_path / "m.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="different config"):
        ClassAssociationEmbedding.load(tmp_path / "m")
