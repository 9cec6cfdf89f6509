"""TrainingMonitor: CSV logs, validation reports, snapshots, early stopping, resume."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from captum_secam.cae import ClassAssociationEmbedding, TrainingMonitor, train_cae
from captum_secam.cae.monitor import disentanglement_score

pytestmark = pytest.mark.usefixtures("one_thread")


class _Brightness(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        m = x.mean((1, 2, 3))
        return torch.stack([0.5 - m, m - 0.5], 1) * 10


def _data(n: int = 32) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = (0.25 + 0.5 * y.float()[:, None, None, None]) + 0.1 * torch.rand(n, 1, 16, 16, generator=g)
    return x.clamp(0, 1), y


def _cae() -> ClassAssociationEmbedding:
    torch.manual_seed(0)
    return ClassAssociationEmbedding(
        16,
        1,
        2,
        class_code_dim=2,
        base_channels=4,
        n_res_blocks=1,
        mlp_dim=8,
        disc_channels=4,
        up_kernel=3,
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_monitor_logs_validates_and_snapshots(tmp_path: Path) -> None:
    x, y = _data()
    monitor = TrainingMonitor(
        tmp_path,
        classifier=_Brightness(),
        images=x,
        labels=y,
        validate_every=2,
        log_every=1,
        snapshot_images=2,
        tensorboard=False,
        report_kwargs={"explain": 0, "n_candidates": 3},
    )
    ds = torch.utils.data.TensorDataset(x, y)
    train_cae(_cae(), ds, steps=4, batch_size=4, progress=False, monitor=monitor)
    losses = _rows(tmp_path / "losses.csv")
    assert [int(r["step"]) for r in losses] == [1, 2, 3, 4]
    assert {"recon", "class", "d_total"} <= set(losses[0])
    val = _rows(tmp_path / "validation.csv")
    assert [int(r["step"]) for r in val] == [2, 4]
    assert [step for step, _ in monitor.reports] == [2, 4]
    rep = monitor.reports[-1][1]
    assert float(val[-1]["swap_success"]) == pytest.approx(rep.swap_success, abs=1e-5)
    assert float(val[-1]["score"]) == pytest.approx(disentanglement_score(rep), abs=1e-5)
    assert sorted(p.name for p in tmp_path.glob("swap_grid_*.png")) == [
        "swap_grid_000002.png",
        "swap_grid_000004.png",
    ]


def test_validation_explains_before_the_model_has_centroids(tmp_path: Path) -> None:
    x, y = _data()
    cae = _cae()
    assert cae.centroids is None  # as during training
    monitor = TrainingMonitor(
        tmp_path,
        classifier=_Brightness(),
        images=x,
        labels=y,
        snapshot_images=0,
        tensorboard=False,
        report_kwargs={"explain": 8, "n_candidates": 3},
    )
    monitor.validate(1, cae)
    assert monitor.reports[0][1].n_explained == 8
    assert cae.centroids is None  # the validation centroids were not left on the model


class _Spy(TrainingMonitor):
    """Validates with a scripted score sequence and remembers the weights at each validation."""

    def __init__(self, log_dir: Path, scores: list[float], **kwargs: object) -> None:
        x, y = _data()
        values = iter(scores)
        super().__init__(
            log_dir,
            classifier=_Brightness(),
            images=x,
            labels=y,
            validate_every=1,
            snapshot_images=0,
            score=lambda report: next(values),
            tensorboard=False,
            report_kwargs={"explain": 0, "n_candidates": 3},
            **kwargs,  # type: ignore[arg-type]
        )
        self.states: list[dict[str, Tensor]] = []

    def validate(self, step: int, cae: ClassAssociationEmbedding) -> bool:
        self.states.append({k: v.clone() for k, v in cae.state_dict().items()})
        return super().validate(step, cae)


def _train_with(monitor: TrainingMonitor, steps: int) -> tuple[ClassAssociationEmbedding, int]:
    x, y = _data()
    cae = _cae()
    hist = train_cae(
        cae,
        torch.utils.data.TensorDataset(x, y),
        steps=steps,
        batch_size=4,
        progress=False,
        discriminator_warmup=0,
        monitor=monitor,
    )
    return cae, hist.steps


def test_early_stopping_restores_the_best_weights(tmp_path: Path) -> None:
    monitor = _Spy(tmp_path, [0.9, 0.5, 0.4, 0.3, 0.2], patience=2)
    cae, steps = _train_with(monitor, 10)
    assert steps == 3  # best at step 1, then two validations without improvement
    assert monitor.best_step == 1
    for k, v in cae.state_dict().items():
        assert torch.equal(v, monitor.states[0][k]), k


def test_restore_best_without_stopping_early(tmp_path: Path) -> None:
    monitor = _Spy(tmp_path, [0.2, 0.9, 0.5], restore_best=True)
    cae, steps = _train_with(monitor, 3)
    assert steps == 3 and monitor.best_step == 2
    for k, v in cae.state_dict().items():
        assert torch.equal(v, monitor.states[1][k]), k
    with pytest.raises(ValueError, match="restore_best"):
        TrainingMonitor(tmp_path, restore_best=True, tensorboard=False)


def test_resume_drops_rows_of_the_interrupted_run(tmp_path: Path) -> None:
    x, y = _data()
    ds = torch.utils.data.TensorDataset(x, y)
    ckpt = tmp_path / "ckpt"

    class Crash(TrainingMonitor):
        def on_step(self, step: int, losses: dict, cae: ClassAssociationEmbedding) -> bool:
            out = super().on_step(step, losses, cae)
            if step == 3:
                raise KeyboardInterrupt  # dies after logging step 3, checkpoint from step 2
            return out

    with pytest.raises(KeyboardInterrupt):
        train_cae(
            _cae(),
            ds,
            steps=4,
            batch_size=4,
            progress=False,
            checkpoint_dir=ckpt,
            checkpoint_every=2,
            monitor=Crash(tmp_path / "log", log_every=1, tensorboard=False),
        )
    log = tmp_path / "log" / "losses.csv"
    assert [int(r["step"]) for r in _rows(log)] == [1, 2, 3]
    train_cae(
        _cae(),
        ds,
        steps=4,
        batch_size=4,
        progress=False,
        checkpoint_dir=ckpt,
        checkpoint_every=2,
        monitor=TrainingMonitor(tmp_path / "log", log_every=1, tensorboard=False),
    )
    assert [int(r["step"]) for r in _rows(log)] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"validate_every": 0}, "validate_every must be an int >= 1"),
        ({"log_every": True}, "log_every must be an int >= 1"),
        ({"patience": 0}, "patience must be None or an int >= 1"),
        ({"classifier": _Brightness()}, "needs images and labels"),
        ({"patience": 2}, "early stopping"),
    ],
)
def test_monitor_rejects_bad_options(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainingMonitor(tmp_path, tensorboard=False, **kwargs)


def test_the_final_step_is_always_validated(tmp_path: Path) -> None:
    monitor = _Spy(tmp_path, [0.1, 0.2], restore_best=True)
    monitor.validate_every = 2
    _, steps = _train_with(monitor, 3)
    assert steps == 3
    assert [step for step, _ in monitor.reports] == [2, 3]  # 3 is not a multiple of 2
    assert monitor.best_step == 3
