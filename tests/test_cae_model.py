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


# the reference layout (the defaults before the small-CPU recipe)
REFERENCE_LAYOUT: dict = dict(n_downsample=2, adain_upsampling=False, pooling="mean")


@pytest.mark.parametrize(
    ("kw", "code_shape"),
    [
        (dict(), (8, 8, 8)),  # the recipe: one down-sampling step, 4·2 channels at 8×8
        (REFERENCE_LAYOUT, (16, 4, 4)),  # two steps: 4·4 channels at 4×4
    ],
    ids=["recipe", "reference"],
)
def test_encode_decode_shapes_and_range(kw: dict, code_shape: tuple[int, int, int]) -> None:
    cae = tiny_cae(**kw)
    x = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        s, c = cae.encode(x)
        y = cae.decode(s, c)
        rf, cls = cae.discriminate(x)
    assert s.shape == (5, *cae.individual_code_shape) == (5, *code_shape)
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
        (dict(image_size=30, n_downsample=2), "divisible"),
        (dict(image_size=15), "divisible"),  # the default single step needs even sizes
        (dict(pooling="max"), "pooling must be one of"),
        (dict(disc_downsample=0), "disc_downsample must be >= 1"),
        (dict(disc_downsample=5), "disc_downsample must be >= 1 and leave at least 1 px"),
        (dict(in_channels=0), "in_channels must be an int >= 1"),
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


# --------------------------------------------------------------------------- new options
def _shapes(cae: ClassAssociationEmbedding) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in cae.state_dict().items()}


def test_mean_max_pooling_doubles_the_pooled_width() -> None:
    mean, mean_max = _shapes(tiny_cae(pooling="mean")), _shapes(tiny_cae(pooling="mean_max"))
    assert mean.keys() == mean_max.keys()
    # class encoder: 4 stride-2 steps of a 4-channel stem -> 8, 16, 16, 16 channels; the 1×1
    # projection to the 4-number class code reads 16 (mean) or 2·16 (mean and max) channels
    assert mean["class_encoder.proj.weight"] == (4, 16, 1, 1)
    assert mean_max["class_encoder.proj.weight"] == (4, 32, 1, 1)
    # discriminator: 2 stride-2 steps -> 4, 8 channels; the head's first linear layer reads
    # 8 (mean) or 16 (mean and max) features and keeps 8 hidden units
    assert mean["discriminator.head.0.weight"] == (8, 8)
    assert mean_max["discriminator.head.0.weight"] == (8, 16)
    assert mean["discriminator.head.2.weight"] == mean_max["discriminator.head.2.weight"] == (5, 8)
    # nothing else changes
    changed = {k for k in mean if mean[k] != mean_max[k]}
    assert changed == {"class_encoder.proj.weight", "discriminator.head.0.weight"}
    x = torch.rand(3, 1, 16, 16)
    cae = tiny_cae(pooling="mean_max")
    with torch.no_grad():
        assert cae.encode_class(x).shape == (3, 4)
        rf, cls = cae.discriminate(x)
    assert rf.shape == (3, 2) and cls.shape == (3, 3)


def test_mean_max_pooling_sees_a_local_feature_the_mean_misses() -> None:
    """Max pooling tells apart two feature maps with the same mean."""
    from captum_secam.cae.model import _pool

    a = torch.zeros(1, 2, 4, 4)
    a[0, :, 1, 2] = 16.0  # one bright spot
    b = torch.ones(1, 2, 4, 4)  # spread out, same mean
    torch.testing.assert_close(_pool(a, "mean"), _pool(b, "mean"))
    assert _pool(a, "mean_max").tolist() == [[1.0, 1.0, 16.0, 16.0]]
    assert _pool(b, "mean_max").tolist() == [[1.0, 1.0, 1.0, 1.0]]


def test_disc_downsample_sets_the_stride_two_steps_of_the_discriminator() -> None:
    cae = tiny_cae(disc_downsample=3)
    convs = [m for m in cae.discriminator.body if isinstance(m, torch.nn.Conv2d)]
    assert [m.stride for m in convs] == [(2, 2)] * 3
    assert [(m.in_channels, m.out_channels) for m in convs] == [(1, 4), (4, 8), (8, 16)]
    assert all(b.conv1.in_channels == 16 for b in cae.discriminator.res)
    assert tuple(cae.discriminator.head[0].weight.shape) == (16, 32)  # mean_max: 2·16 in
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert cae.discriminator.body(x * 2 - 1).shape == (2, 16, 2, 2)  # 16 px / 2**3
        rf, cls = cae.discriminate(x)
    assert rf.shape == (2, 2) and cls.shape == (2, 3)
    # the default keeps two steps
    default = [m for m in tiny_cae().discriminator.body if isinstance(m, torch.nn.Conv2d)]
    assert len(default) == 2 and tiny_cae().config.disc_downsample == 2


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(REFERENCE_LAYOUT, disc_downsample=3, class_names=["a", "b", "c"])],
    ids=["recipe", "reference-3-step-disc"],
)
def test_from_config_rebuilds_the_architecture(kw: dict) -> None:
    cae = tiny_cae(**kw)
    rebuilt = ClassAssociationEmbedding.from_config(cae.config)
    assert rebuilt.config == cae.config
    assert _shapes(rebuilt) == _shapes(cae)
    assert list(rebuilt.state_dict()) == list(cae.state_dict())
    assert rebuilt.class_names == cae.class_names
    assert rebuilt.centroids is None  # a new, untrained model
    # the same weights give the same outputs: the architecture, not only the shapes, agrees
    rebuilt.load_state_dict(cae.state_dict())
    rebuilt.eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), cae(x), rtol=0, atol=0)
        torch.testing.assert_close(rebuilt.discriminate(x), cae.discriminate(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("pooling", "disc_downsample"), [("mean", 3), ("mean_max", 2), ("mean_max", 3)]
)
def test_save_load_keeps_pooling_and_disc_downsample(
    tmp_path: Path, pooling: str, disc_downsample: int
) -> None:
    cae = tiny_cae(pooling=pooling, disc_downsample=disc_downsample)
    cae.save(tmp_path / "m")
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["config"]["pooling"] == pooling
    assert doc["config"]["disc_downsample"] == disc_downsample
    loaded = ClassAssociationEmbedding.load(tmp_path / "m")
    assert loaded.config.pooling == pooling
    assert loaded.config.disc_downsample == disc_downsample
    assert loaded.config == cae.config
    assert _shapes(loaded) == _shapes(cae)
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), cae(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded.discriminate(x), cae.discriminate(x), rtol=0, atol=0)


def test_old_config_without_the_new_keys_still_loads() -> None:
    """A config written before ``pooling`` / ``disc_downsample`` existed gets their defaults."""
    old = {
        "image_size": [16, 16],
        "in_channels": 1,
        "num_classes": 3,
        "class_code_dim": 4,
        "base_channels": 4,
        "n_downsample": 2,
        "n_res_blocks": 1,
        "class_downsample": 4,
        "mlp_dim": 8,
        "disc_channels": 4,
        "disc_res_blocks": 1,
        "up_kernel": 3,
        "adain_upsampling": False,
        "class_names": ["a", "b", "c"],
    }
    cfg = CaeConfig.from_json_dict(old)
    # files from before these options were built the reference way: mean pooling, 2 steps
    assert cfg.pooling == "mean" != CaeConfig.__dataclass_fields__["pooling"].default
    assert cfg.disc_downsample == 2
    assert cfg.image_size == (16, 16) and cfg.class_names == ("a", "b", "c")
    assert cfg.n_downsample == 2 and not cfg.adain_upsampling  # the given keys are kept
    cae = ClassAssociationEmbedding.from_config(cfg)
    assert cae.config == cfg
    assert cae.individual_code_shape == (16, 4, 4)
    # and the filled-in config round-trips through JSON with the new keys present
    d = cfg.to_json_dict()
    assert d["pooling"] == "mean" and d["disc_downsample"] == 2
    assert CaeConfig.from_json_dict(d) == cfg


def test_checkpoint_written_before_the_new_options_still_loads(tmp_path: Path) -> None:
    """A file pair from version 0.1.0 has no ``pooling`` / ``disc_downsample`` keys; its hash is
    over the config as stored, and the model is rebuilt the way it was trained."""
    import hashlib
    import json

    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    cae = ClassAssociationEmbedding(
        16,
        1,
        2,
        class_code_dim=2,
        base_channels=4,
        n_downsample=2,
        pooling="mean",
        mlp_dim=8,
        disc_channels=4,
    )
    wpath, cpath = cae.save(tmp_path / "old")
    doc = json.loads(cpath.read_text())
    for key in ("pooling", "disc_downsample"):
        del doc["config"][key]
    cpath.write_text(json.dumps(doc))
    digest = hashlib.sha256(json.dumps(doc["config"], sort_keys=True).encode()).hexdigest()
    meta = {"format": "captum_secam.cae", "version": "1", "config_sha256": digest}
    save_file(load_file(str(wpath)), str(wpath), metadata=meta)
    old = ClassAssociationEmbedding.load(tmp_path / "old")
    assert old.config.pooling == "mean" and old.config.disc_downsample == 2
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(old.encode_class(x), cae.eval().encode_class(x))


@pytest.mark.parametrize("layout", [dict(), REFERENCE_LAYOUT], ids=["recipe", "reference"])
def test_edit_mask_changes_only_inside_the_mask(layout: dict) -> None:
    """With ``class_edit_mask`` the class code acts through A: where the mask is 0 the image is
    B(s) whatever the class code, so two class codes differ by at most the masks' share."""
    cae = tiny_cae(class_edit_mask=True, **layout)
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        s, c = cae.encode(x)
        image, mask = cae.decode_with_mask(s, c)
        other, other_mask = cae.decode_with_mask(s, c.flip(0) * 3.0)
        base = (torch.tanh(cae.decoder.base(s)) + 1.0) * 0.5
    assert mask is not None and other_mask is not None
    assert mask.shape == (4, 1, 16, 16) and float(mask.min()) > 0.0 and float(mask.max()) < 1.0
    torch.testing.assert_close(image, cae.decode(s, c), rtol=0, atol=0)
    # x = A·C + (1 − A)·B with C in [0, 1]: |x − B| ≤ A pixel by pixel
    assert bool(((image - base).abs() <= mask + 1e-6).all())
    assert bool(((image - other).abs() <= mask + other_mask + 1e-6).all())
    assert not torch.allclose(image, other)  # the class code still matters inside the mask
    # the mask starts mostly closed (logit bias -2: A ≈ 0.12), so B(s) learns the image first
    assert 0.05 < float(mask.mean()) < 0.3


def test_edit_mask_is_on_by_default_and_round_trips(tmp_path: Path) -> None:
    assert tiny_cae().config.class_edit_mask is True  # the default recipe
    plain = tiny_cae(class_edit_mask=False)
    assert plain.config.class_edit_mask is False and plain.decoder.base is None
    with torch.no_grad():
        s, c = plain.encode(torch.rand(2, 1, 16, 16))
        assert plain.decode_with_mask(s, c)[1] is None
    cae = tiny_cae(class_edit_mask=True)
    assert set(cae.state_dict()) - set(plain.state_dict()) == {
        k for k in cae.state_dict() if k.startswith("decoder.base.")
    }
    cae.save(tmp_path / "m")
    loaded = ClassAssociationEmbedding.load(tmp_path / "m")
    assert loaded.config.class_edit_mask is True and loaded.config == cae.config
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), cae(x), rtol=0, atol=0)
    # a file written before the option existed loads as a plain decoder
    doc = cae.config.to_json_dict()
    del doc["class_edit_mask"]
    assert CaeConfig.from_json_dict(doc).class_edit_mask is False
