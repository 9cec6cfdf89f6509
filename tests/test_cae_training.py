"""train_cae: loss decreases, seeded reproducibility, resume, centroids, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from captum_secam.cae import ClassAssociationEmbedding, train_cae

pytestmark = pytest.mark.usefixtures("one_thread")


def make_data(n: int = 48, classes: int = 3) -> TensorDataset:
    """Class k = a bright bar at row band k; a little noise; values in [0, 1]."""
    g = torch.Generator().manual_seed(1)
    y = torch.arange(n) % classes
    x = 0.1 * torch.rand(n, 1, 16, 16, generator=g)
    for i in range(n):
        r = int(y[i]) * 5
        x[i, 0, r : r + 4, 2:14] += 0.8
    return TensorDataset(x.clamp(0, 1), y)


def make_cae(classes: int = 3) -> ClassAssociationEmbedding:
    torch.manual_seed(0)
    return ClassAssociationEmbedding(
        16,
        1,
        classes,
        class_code_dim=4,
        base_channels=4,
        n_res_blocks=1,
        mlp_dim=8,
        disc_channels=4,
        up_kernel=3,
    )


def test_training_lowers_the_loss_and_sets_centroids() -> None:
    cae = make_cae()
    hist = train_cae(cae, make_data(), steps=40, batch_size=8, lr=2e-3, progress=False)
    assert hist.steps == 40 and len(hist.losses["recon"]) == 40
    assert hist.mean("recon", last=5) < 0.6 * sum(hist.losses["recon"][:5]) / 5
    assert hist.mean("g_total", last=5) < sum(hist.losses["g_total"][:5]) / 5
    assert cae.centroids is not None and cae.centroids.shape == (3, 4)
    assert not cae.training
    assert all(p.grad is None for p in cae.parameters())
    # centroids are the per-class means of the class codes
    ds = make_data()
    x, y = ds.tensors
    with torch.no_grad():
        codes = cae.encode_class(x)
    torch.testing.assert_close(cae.centroids[2], codes[y == 2].mean(0), atol=1e-5, rtol=1e-5)
    assert cae.training_info["steps"] == 40


def test_seeded_training_is_reproducible() -> None:
    a, b = make_cae(), make_cae()
    train_cae(a, make_data(), steps=3, batch_size=4, seed=7, progress=False)
    train_cae(b, make_data(), steps=3, batch_size=4, seed=7, progress=False)
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), k
    c = make_cae()
    train_cae(c, make_data(), steps=3, batch_size=4, seed=8, progress=False)
    assert not torch.equal(a.decoder.mlp[0].weight, c.decoder.mlp[0].weight)


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    full = make_cae()
    h_full = train_cae(full, make_data(), steps=4, batch_size=4, progress=False)
    part = make_cae()
    train_cae(part, make_data(), steps=2, batch_size=4, progress=False, checkpoint_dir=tmp_path)
    assert (tmp_path / "cae_training_checkpoint.pt").is_file()
    resumed = make_cae()
    h_res = train_cae(
        resumed, make_data(), steps=4, batch_size=4, progress=False, checkpoint_dir=tmp_path
    )
    assert h_res.steps == 4 and len(h_res.losses["recon"]) == 4
    assert h_res.losses["recon"] == pytest.approx(h_full.losses["recon"], rel=1e-5)
    for (k, pa), pb in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, msg=k)


def test_discriminator_warmup_teaches_the_class_head_only() -> None:
    """Warm-up steps lower the discriminator's class loss on real images and leave the
    generator (encoders + decoder) untouched; a resumed run does not warm up again."""
    x, y = make_data().tensors
    cae = make_cae()
    gen_before = {k: v.clone() for k, v in cae.state_dict().items() if "discriminator" not in k}
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(cae.discriminate(x)[1], y)
    hist = train_cae(
        cae, make_data(), steps=0, batch_size=8, lr=2e-3, progress=False, discriminator_warmup=30
    )
    assert len(hist.losses["d_warmup_class"]) == 30
    with torch.no_grad():
        after = torch.nn.functional.cross_entropy(cae.discriminate(x)[1], y)
    assert float(after) < 0.5 * float(before)
    for k, v in cae.state_dict().items():
        if "discriminator" not in k:
            assert torch.equal(v, gen_before[k]), k
    assert cae.training_info["discriminator_warmup"] == 30


def test_resumed_run_does_not_warm_up_again(tmp_path: Path) -> None:
    kw = dict(batch_size=4, progress=False, discriminator_warmup=5, checkpoint_dir=tmp_path)
    full = make_cae()
    h_full = train_cae(
        full, make_data(), steps=4, batch_size=4, progress=False, discriminator_warmup=5
    )
    train_cae(make_cae(), make_data(), steps=2, **kw)  # type: ignore[arg-type]
    resumed = make_cae()
    h_res = train_cae(resumed, make_data(), steps=4, **kw)  # type: ignore[arg-type]
    assert len(h_res.losses["d_warmup_class"]) == 5
    assert resumed.training_info["discriminator_warmup"] == 5
    assert h_res.losses["recon"] == pytest.approx(h_full.losses["recon"], rel=1e-5)


def test_pairs_always_draw_two_different_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    from captum_secam.cae import training

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = training._train_step

    def spy(cae, xa, xb, ya, yb, *a):  # type: ignore[no-untyped-def]
        seen.append((ya.clone(), yb.clone()))
        return real(cae, xa, xb, ya, yb, *a)

    monkeypatch.setattr(training, "_train_step", spy)
    train_cae(make_cae(4), make_data(classes=4), steps=3, batch_size=16, progress=False)
    ya = torch.cat([s[0] for s in seen])
    yb = torch.cat([s[1] for s in seen])
    assert bool((ya != yb).all())
    assert set(yb.tolist()) == {0, 1, 2, 3}


def test_dataset_with_one_class_is_rejected() -> None:
    x = torch.rand(8, 1, 16, 16)
    ds = TensorDataset(x, torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="at least two classes"):
        train_cae(make_cae(), ds, steps=1, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(steps=-1), "steps must be >= 0"),
        (dict(steps=1, batch_size=0), "batch_size"),
        (dict(steps=1, loss_weights={"bogus": 1.0}), "unknown loss weights"),
        (dict(steps=1, discriminator_warmup=-1), "discriminator_warmup must be an int >= 0"),
        (dict(steps=1, discriminator_warmup=2.5), "discriminator_warmup must be an int >= 0"),
        (dict(steps=1, discriminator_warmup=True), "discriminator_warmup must be an int >= 0"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        train_cae(make_cae(), make_data(), progress=False, **kwargs)


def test_labels_out_of_range_and_wrong_images() -> None:
    x, y = make_data().tensors
    with pytest.raises(ValueError, match=r"labels must be in 0..2"):
        train_cae(make_cae(), TensorDataset(x, y + 1), steps=1, progress=False)
    with pytest.raises(ValueError, match="built for 16×16"):
        train_cae(make_cae(), TensorDataset(torch.rand(6, 1, 8, 8), y[:6]), steps=1, progress=False)


def test_plain_dataset_without_tensors_attribute() -> None:
    ds = make_data()

    class Plain(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(ds)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return ds.tensors[0][i], int(ds.tensors[1][i])

    a, b = make_cae(), make_cae()
    train_cae(a, Plain(), steps=2, batch_size=4, progress=False)
    train_cae(b, ds, steps=2, batch_size=4, progress=False)
    torch.testing.assert_close(a.decoder.mlp[0].weight, b.decoder.mlp[0].weight)


def test_optional_class_code_probe_loss() -> None:
    from captum_secam.cae import DEFAULT_LOSS_WEIGHTS

    assert DEFAULT_LOSS_WEIGHTS["code_class"] == 0.0  # not part of the reference objective
    off, on = make_cae(), make_cae()
    w0 = off.class_code_head.weight.detach().clone()
    h_off = train_cae(off, make_data(), steps=2, batch_size=4, progress=False)
    h_on = train_cae(
        on, make_data(), steps=2, batch_size=4, progress=False, loss_weights={"code_class": 1.0}
    )
    # with weight 0 the probe gets no gradient; with weight 1 it is trained
    assert torch.equal(off.class_code_head.weight, w0)
    assert not torch.equal(on.class_code_head.weight, w0)
    assert h_on.losses["code_class"][0] == pytest.approx(h_off.losses["code_class"][0])
    assert on.training_info["loss_weights"]["code_class"] == 1.0


def test_time_limit_stops_early() -> None:
    cae = make_cae()
    hist = train_cae(cae, make_data(), steps=50, batch_size=4, progress=False, time_limit=0.0)
    assert hist.steps == 1 and len(hist.losses["recon"]) == 1
    assert cae.training_info["steps"] == 1 and cae.centroids is not None
