"""CAE training data: conversion, class-pairing sampler, loaders, ImageFolder, AMP, channels.

The sampler's order is a function of (seed, step): the same for any number of workers, and a
run resumed at a step boundary continues it exactly. The in-process path of earlier versions
is pinned to the values it gave before the loader existed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from captum_secam.cae import ClassAssociationEmbedding, train_cae
from captum_secam.cae.data import (
    ClassPairBatchSampler,
    PairItems,
    collate_pairs,
    default_transform,
    image_folder,
    make_pair_loader,
    to_image_tensor,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int = 40, classes: int = 3, channels: int = 1, size: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    y = torch.arange(n) % classes
    x = 0.1 * torch.rand(n, channels, size, size, generator=g)
    for i in range(n):
        r = int(y[i]) * 5
        x[i, :, r : r + 4, 2:14] += 0.8
    return TensorDataset(x.clamp(0, 1), y)


def _cae(classes: int = 3, channels: int = 1, size: int = 16) -> ClassAssociationEmbedding:
    torch.manual_seed(0)
    return ClassAssociationEmbedding(
        size, channels, classes, class_code_dim=4, base_channels=4, mlp_dim=8, disc_channels=4
    )


def _equal_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


# ---------------------------------------------------------------- the default path is pinned
def test_in_process_path_gives_the_results_of_earlier_versions() -> None:
    """The values below come from the trainer before the loader existed (same seed, data and
    weights, and that version's recipe: no edit mask, swap class weight 5); the shipped
    checkpoints were trained on this path."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_cae_training import make_cae, make_data

    pinned = {
        0.0: [16.374046325683594, 16.513595581054688, 16.40393829345703, 16.27650260925293],
        0.1: [16.384889602661133, 16.591732025146484, 16.086814880371094, 15.960700035095215],
    }
    sums = {0.0: 838.0678649017646, 0.1: 838.0984970853933}
    for noise, g_total in pinned.items():
        cae = make_cae(class_edit_mask=False)
        hist = train_cae(
            cae,
            make_data(),
            loss_weights={"class": 5.0, "edit_sparsity": 0.0},
            steps=4,
            batch_size=4,
            seed=3,
            progress=False,
            discriminator_warmup=5,
            discriminator_noise=noise,
        )
        assert hist.losses["g_total"] == pytest.approx(g_total, rel=1e-6, abs=0)
        total = float(sum(v.double().abs().sum() for v in cae.state_dict().values()))
        assert total == pytest.approx(sums[noise], rel=1e-9)
        assert cae.training_info.get("sampler") is None  # the record of a plain run is unchanged


# ---------------------------------------------------------------- conversion
def test_to_image_tensor_converts_pil_arrays_and_uint8() -> None:
    rgb = Image.fromarray(np.full((4, 5, 3), [255, 0, 51], dtype=np.uint8))
    x = to_image_tensor(rgb)
    assert x.shape == (3, 4, 5) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([1.0, 0.0, 0.2]))
    grey = to_image_tensor(rgb, channels=1)
    assert grey.shape == (1, 4, 5)
    assert to_image_tensor(Image.new("RGBA", (3, 3))).shape == (4, 3, 3)
    arr = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    torch.testing.assert_close(to_image_tensor(arr)[:, 1, 0], torch.tensor([6, 7, 8]) / 255.0)
    u8 = torch.full((2, 3, 3), 255, dtype=torch.uint8)
    assert torch.equal(to_image_tensor(u8), torch.ones(2, 3, 3))
    f = torch.rand(2, 3, 3)
    assert to_image_tensor(f) is f


@pytest.mark.parametrize(
    ("image", "match"),
    [
        ("not an image", "dataset images must be"),
        (torch.zeros(1, 2, 2, dtype=torch.int32), "float in \\[0, 1\\] or uint8"),
        (np.zeros((2, 2, 2, 2), dtype=np.uint8), "numpy images must be uint8"),
        (np.zeros((2, 2), dtype=np.int64), "numpy images must be uint8"),
    ],
)
def test_to_image_tensor_rejects_other_types(image: object, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        to_image_tensor(image)


def test_pil_with_unsupported_channels_and_mixed_sizes_are_rejected() -> None:
    with pytest.raises(TypeError, match="1, 3 or 4 channels"):
        to_image_tensor(Image.new("RGB", (2, 2)), channels=2)
    with pytest.raises(ValueError, match="different shapes"):
        collate_pairs([(torch.zeros(1, 4, 4), 0), (torch.zeros(1, 5, 4), 1)])


def test_wrong_dataset_types_get_a_clear_error() -> None:
    with pytest.raises(TypeError, match="map-style dataset"):
        train_cae(_cae(), 42, steps=1, progress=False)

    class Strings(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> tuple[str, int]:
            return "x", i % 2

    with pytest.raises(TypeError, match=r"torchvision\.transforms\.ToTensor"):
        train_cae(_cae(2), Strings(), steps=1, progress=False)


# ---------------------------------------------------------------- the sampler
def test_sampler_pairs_different_classes_and_is_seeded() -> None:
    labels = torch.arange(30) % 3
    s = ClassPairBatchSampler(labels, 8, steps=6, seed=4, warmup_steps=2)
    batches = list(s)
    assert len(batches) == len(s) == 8
    assert [b[0][0] for b in batches] == [-1, -2, 0, 1, 2, 3, 4, 5]
    for keys in batches[2:]:
        idx = torch.tensor([k[2] for k in keys])
        assert bool((labels[idx[:8]] != labels[idx[8:]]).all())
    assert {int(labels[k[2]]) for b in batches[2:] for k in b[8:]} == {0, 1, 2}
    again = list(ClassPairBatchSampler(labels, 8, steps=6, seed=4, warmup_steps=2))
    assert again == batches
    other = list(ClassPairBatchSampler(labels, 8, steps=6, seed=5, warmup_steps=2))
    assert other != batches


def test_sampler_resumes_at_a_step_boundary_and_splits_ranks() -> None:
    labels = torch.arange(30) % 2
    full = list(ClassPairBatchSampler(labels, 4, steps=6, seed=1, warmup_steps=3))
    resumed = list(ClassPairBatchSampler(labels, 4, steps=6, seed=1, start=4))
    assert resumed == full[3 + 4 :]
    # 2 ranks × 2 hold exactly the global batch of 1 process × 4, slot for slot
    r0, r1 = (
        list(ClassPairBatchSampler(labels, 2, 6, seed=1, num_replicas=2, rank=r)) for r in (0, 1)
    )
    one = list(ClassPairBatchSampler(labels, 4, 6, seed=1))
    for a, b, whole in zip(r0, r1, one, strict=True):
        assert sorted(a + b) == sorted(whole)
        assert a[:2] == whole[:2] and b[:2] == whole[2:4]  # the a halves, in order
    with pytest.raises(ValueError, match="rank must be"):
        ClassPairBatchSampler(labels, 2, 6, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="two classes"):
        ClassPairBatchSampler(torch.zeros(5), 2, 6)


def test_loader_order_and_augmentation_do_not_depend_on_workers() -> None:
    ds = _data()
    aug = default_transform(16, resize_ratio=20 / 16)
    sampler = ClassPairBatchSampler(ds.tensors[1], 4, steps=3, seed=2)
    kw = dict(transform=aug, seed=2, channels=1)
    main = [x for x, _ in make_pair_loader(ds, sampler, num_workers=0, **kw)]  # type: ignore[arg-type]
    workers = [x for x, _ in make_pair_loader(ds, sampler, num_workers=2, **kw)]  # type: ignore[arg-type]
    assert len(main) == 3
    for a, b in zip(main, workers, strict=True):
        assert torch.equal(a, b)
    # the augmentation does act (crops differ from the plain images), and leaves the main
    # process's random state untouched
    state = torch.get_rng_state()
    items = PairItems(ds, aug, seed=2)
    x0 = items[(0, 0, 0)][0]
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(x0, ds.tensors[0][0])
    assert torch.equal(x0, items[(0, 0, 0)][0]) and not torch.equal(x0, items[(1, 0, 0)][0])


# ---------------------------------------------------------------- training through the loader
def test_loader_training_resumes_exactly_at_a_step_boundary(tmp_path: Path) -> None:
    kw = dict(
        batch_size=4,
        progress=False,
        use_loader=True,
        discriminator_warmup=2,
        lr_schedule="constant",
        transform=default_transform(16, resize_ratio=20 / 16),
    )
    full = _cae()
    h_full = train_cae(full, _data(), steps=5, **kw)  # type: ignore[arg-type]
    train_cae(_cae(), _data(), steps=3, checkpoint_dir=tmp_path, **kw)  # type: ignore[arg-type]
    resumed = _cae()
    h_res = train_cae(resumed, _data(), steps=5, checkpoint_dir=tmp_path, num_workers=1, **kw)  # type: ignore[arg-type]
    assert h_res.losses["recon"] == h_full.losses["recon"]
    assert _equal_weights(full, resumed)
    assert resumed.training_info["sampler"] == "sampler"
    assert 0.0 <= resumed.training_info["data_wait_fraction"] < 1.0


def test_use_loader_false_conflicts_and_dataloader_options() -> None:
    with pytest.raises(ValueError, match="use_loader=False"):
        train_cae(_cae(), _data(), steps=1, num_workers=1, use_loader=False, progress=False)
    loader = DataLoader(_data(), batch_size=8, shuffle=True)
    with pytest.raises(ValueError, match="on the DataLoader itself"):
        train_cae(_cae(), loader, steps=1, num_workers=2, progress=False)


def test_a_dataloader_trains_with_pairs_from_its_batches() -> None:
    loader = DataLoader(
        _data(), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    cae = _cae()
    hist = train_cae(cae, loader, steps=7, discriminator_warmup=1, progress=False)
    assert hist.steps == 7 and cae.centroids is not None
    assert cae.training_info["sampler"] == "dataloader"
    one_class = DataLoader(
        TensorDataset(torch.rand(4, 1, 16, 16), torch.zeros(4).long()), batch_size=4
    )
    with pytest.raises(ValueError, match="one class only"):
        train_cae(_cae(), one_class, steps=1, discriminator_warmup=0, progress=False)


def test_four_channel_data_trains() -> None:
    cae = _cae(channels=4)
    hist = train_cae(
        cae,
        _data(channels=4),
        steps=30,
        batch_size=8,
        lr=2e-3,
        discriminator_warmup=0,
        progress=False,
    )
    assert cae.decode(*cae.encode(torch.rand(2, 4, 16, 16))).shape == (2, 4, 16, 16)
    assert hist.mean("recon", last=5) < 0.7 * sum(hist.losses["recon"][:5]) / 5


def _write_pngs(root: Path, size: int = 12) -> None:
    rng = np.random.default_rng(0)
    for k, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(6):
            arr = rng.integers(0, 60, (size, size + 2, 3)).astype(np.uint8)
            arr[:, k * 6 : k * 6 + 4] = 240
            Image.fromarray(arr).save(root / name / f"{i}.png")


def test_image_folder_of_pngs_trains_out_of_the_box(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    _write_pngs(tmp_path)
    ds = image_folder(tmp_path, 8, channels=3)
    x, y = ds[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y == 0
    torch.manual_seed(0)
    cae = ClassAssociationEmbedding(
        8, 3, 2, class_code_dim=2, base_channels=4, mlp_dim=8, disc_channels=4
    )
    hist = train_cae(
        cae, ds, steps=2, batch_size=4, discriminator_warmup=1, num_workers=1, progress=False
    )
    assert hist.steps == 2 and cae.centroids is not None
    # a plain ImageFolder (PIL images) with a transform trains too, in the main process
    raw = ImageFolder(str(tmp_path))
    cae1 = ClassAssociationEmbedding(
        8, 1, 2, class_code_dim=2, base_channels=4, mlp_dim=8, disc_channels=4
    )
    train_cae(
        cae1,
        raw,
        steps=1,
        batch_size=2,
        discriminator_warmup=0,
        transform=default_transform(8, augment=False),
        progress=False,
    )
    assert cae1.centroids is not None
    with pytest.raises(FileNotFoundError, match="ImageFolder data"):
        image_folder(tmp_path / "missing", 8)


# ---------------------------------------------------------------- speed options
def test_cpu_autocast_bf16_trains_close_to_float32() -> None:
    kw = dict(steps=2, batch_size=4, seed=0, discriminator_warmup=1, progress=False)
    fp32, bf16 = _cae(), _cae()
    h32 = train_cae(fp32, _data(), **kw)  # type: ignore[arg-type]
    h16 = train_cae(bf16, _data(), amp="bf16", **kw)  # type: ignore[arg-type]
    assert h16.losses["recon"] != h32.losses["recon"]  # autocast did run in bf16
    assert h16.losses["recon"] == pytest.approx(h32.losses["recon"], rel=0.05)
    assert all(p.dtype == torch.float32 for p in bf16.parameters())  # master weights stay fp32
    assert bf16.training_info["amp"] == "bf16"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with a grad scaler needs CUDA")
def test_cuda_fp16_with_grad_scaler() -> None:  # pragma: no cover - no GPU here
    cae = _cae().cuda()
    hist = train_cae(cae, _data(), steps=2, batch_size=4, amp="fp16", progress=False)
    assert all(np.isfinite(hist.losses["g_total"]))


def test_channels_last_matches_the_default_format() -> None:
    # float64: in float32, Adam turns the round-off gradients of the biases that instance
    # norm cancels (true gradient 0) into +-lr steps, which differ between memory formats
    kw = dict(steps=2, batch_size=4, seed=0, discriminator_warmup=1, progress=False)
    a, b = _cae().double(), _cae().double()
    train_cae(a, _data(), **kw)  # type: ignore[arg-type]
    train_cae(b, _data(), channels_last=True, **kw)  # type: ignore[arg-type]
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-8, rtol=1e-6, msg=k)
    w = b.class_encoder.body[0].weight
    assert w.is_contiguous()  # put back in the default format


def test_step_schedule_and_weight_decay() -> None:
    kw = dict(steps=3, batch_size=4, seed=1, discriminator_warmup=0, progress=False)
    seen: list[float] = []

    def factor(step: int, steps: int) -> float:
        seen.append(step / steps)
        return 1.0

    const, custom, decayed = _cae(), _cae(), _cae()
    train_cae(const, _data(), lr_schedule="constant", **kw)  # type: ignore[arg-type]
    train_cae(custom, _data(), lr_schedule=factor, **kw)  # type: ignore[arg-type]
    assert seen == [0.0, 1 / 3, 2 / 3] and _equal_weights(const, custom)
    step = _cae()
    train_cae(step, _data(), lr_schedule="step", lr_step_size=1, lr_gamma=0.0, **kw)  # type: ignore[arg-type]
    one = _cae()
    train_cae(one, _data(), lr_schedule="constant", **{**kw, "steps": 1})  # type: ignore[arg-type]
    assert _equal_weights(step, one)  # gamma 0: only the first step moves the weights
    train_cae(decayed, _data(), lr_schedule="constant", weight_decay=0.1, **kw)  # type: ignore[arg-type]
    assert not _equal_weights(const, decayed)
    with pytest.raises(ValueError, match="lr_step_size"):
        train_cae(_cae(), _data(), lr_schedule="step", **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="amp must be"):
        train_cae(_cae(), _data(), amp="int8", **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight_decay"):
        train_cae(_cae(), _data(), weight_decay=-1.0, **kw)  # type: ignore[arg-type]
