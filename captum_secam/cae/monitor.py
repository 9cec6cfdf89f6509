"""Watch CAE training: loss and validation logs, swap-grid snapshots, early stopping.

Pass a :class:`TrainingMonitor` to :func:`~captum_secam.cae.train_cae` as ``monitor=``. Every
``log_every`` steps it appends the losses to ``<log_dir>/losses.csv``; every ``validate_every``
steps it runs :func:`~captum_secam.cae.evaluate_cae` on a held-out split, appends the report to
``<log_dir>/validation.csv`` and saves a swap grid ``<log_dir>/swap_grid_<step>.png``. With
TensorBoard installed (``pip install tensorboard``) the same numbers also go to
``<log_dir>/tensorboard``. With ``patience`` set, training stops once the validation score has
not improved for that many validations, and the best weights are put back (``restore_best=True``
puts them back at the end without stopping early). The best weights are kept in memory: a
resumed run compares from its own first validation on.
"""

from __future__ import annotations

import copy
import csv
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from captum_secam.cae.evaluation import CaeReport, evaluate_cae
from captum_secam.cae.model import ClassAssociationEmbedding

__all__ = ["TrainingMonitor", "disentanglement_score"]


def disentanglement_score(report: CaeReport) -> float:
    """``swap_success × identity_kept``: high only when the class code sets the class *and*
    the individual code keeps the look (a copying or a prototype decoder scores low)."""
    return report.swap_success * report.identity_kept


class TrainingMonitor:
    """Logs, validation reports, snapshots and early stopping for :func:`train_cae`.

    Args:
        log_dir: folder for ``losses.csv``, ``validation.csv``, ``swap_grid_*.png`` (and
            ``tensorboard/``); created if missing.
        classifier: the external classifier used by the validation report (``None``: losses
            only).
        images, labels: held-out validation images (N×C×H×W in ``[0, 1]``) and labels.
        regions: optional N×1×H×W ground-truth regions (localisation in the report).
        validate_every: steps between validation reports.
        log_every: steps between rows of ``losses.csv``.
        snapshot_images: images per class in the swap-grid snapshots (0: no snapshots).
        patience: stop after this many validations without a better score (``None``: never).
        restore_best: at the end of training, put back the weights of the best validation
            score (always with ``patience``). GAN training oscillates: the last step is not
            always the best one.
        score: validation score to maximise (default :func:`disentanglement_score`).
        tensorboard: also write TensorBoard scalars (``None``: if ``tensorboard`` is
            installed).
        report_kwargs: extra keyword arguments for :func:`evaluate_cae` (e.g. ``explain=100``).

    Example:
        >>> from captum_secam.cae.fashion_mnist import load_pretrained, load_samples
        >>> clf, cae = load_pretrained("coats")
        >>> xv, yv = load_samples("coats")  # held-out images for the validation report
        >>> monitor = TrainingMonitor("runs/cae", classifier=clf, images=xv, labels=yv)
        >>> history = train_cae(cae, dataset, steps=2000, monitor=monitor)  # doctest: +SKIP
        >>> monitor.reports[-1].swap_success  # doctest: +SKIP
    """

    def __init__(
        self,
        log_dir: str | Path,
        *,
        classifier: Callable[[Tensor], Tensor] | None = None,
        images: Tensor | None = None,
        labels: Tensor | None = None,
        regions: Tensor | None = None,
        validate_every: int = 250,
        log_every: int = 10,
        snapshot_images: int = 3,
        patience: int | None = None,
        restore_best: bool = False,
        score: Callable[[CaeReport], float] = disentanglement_score,
        tensorboard: bool | None = None,
        report_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        for name, value in (("validate_every", validate_every), ("log_every", log_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        if patience is not None and (not isinstance(patience, int) or patience < 1):
            raise ValueError(f"patience must be None or an int >= 1, got {patience!r}.")
        validating = classifier is not None
        if validating and (images is None or labels is None):
            raise ValueError("validation needs images and labels along with the classifier.")
        if (patience is not None or restore_best) and not validating:
            raise ValueError(
                "early stopping (patience, restore_best) needs a classifier, images and labels."
            )
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.classifier = classifier
        self.images, self.labels, self.regions = images, labels, regions
        self.validate_every, self.log_every = validate_every, log_every
        self.snapshot_images = snapshot_images
        self.patience, self.score = patience, score
        self.restore_best = restore_best or patience is not None
        self.report_kwargs = dict(report_kwargs or {"explain": 100})
        self.reports: list[tuple[int, CaeReport]] = []
        self.best_score = -math.inf
        self.best_step = 0
        self.best_state: dict[str, Tensor] | None = None
        self._stale = 0
        self._writer = _tensorboard_writer(self.log_dir, tensorboard)

    # ------------------------------------------------------------------ hooks of train_cae
    def on_start(self, step: int) -> None:
        """Called by :func:`train_cae` before the first step (``step > 0`` when resuming):
        drops log rows written after ``step`` by an interrupted run, so no step is logged
        twice."""
        for name in ("losses.csv", "validation.csv"):
            _truncate_csv(self.log_dir / name, step)

    def on_step(
        self, step: int, losses: Mapping[str, float], cae: ClassAssociationEmbedding
    ) -> bool:
        """Called by :func:`train_cae` after each step; returns ``True`` to stop training."""
        if step % self.log_every == 0:
            _append_csv(self.log_dir / "losses.csv", {"step": step, **losses})
            self._scalars("loss", step, losses)
        if self.classifier is None or step % self.validate_every != 0:
            return False
        return self.validate(step, cae)

    def validate(self, step: int, cae: ClassAssociationEmbedding) -> bool:
        """Run the report now; returns ``True`` when early stopping says stop."""
        assert self.classifier is not None and self.images is not None
        assert self.labels is not None
        # the model gets its centroids when training ends: until then the explanations walk
        # toward the class-code centroids of the validation images
        saved = cae.centroids
        try:
            if saved is None:
                cae.compute_centroids(self.images, self.labels)
            report = evaluate_cae(
                cae,
                self.classifier,
                self.images,
                self.labels,
                regions=self.regions,
                **self.report_kwargs,
            )
        finally:
            cae.centroids = saved
        self.reports.append((step, report))
        value = self.score(report)
        row = {"step": step, **report.as_dict(), "score": value}
        _append_csv(self.log_dir / "validation.csv", row)
        self._scalars("validation", step, row)
        if self.snapshot_images:
            self._snapshot(step, cae)
        if value > self.best_score:
            self.best_score, self.best_step, self._stale = value, step, 0
            if self.restore_best:
                self.best_state = copy.deepcopy(cae.state_dict())
            return False
        self._stale += 1
        return self.patience is not None and self._stale >= self.patience

    def on_end(self, step: int, cae: ClassAssociationEmbedding) -> None:
        """Called once by :func:`train_cae` after the last step: validate the final weights
        (unless that step was just validated), restore the best weights (with
        ``restore_best`` or ``patience``) and close the TensorBoard writer."""
        validated = self.reports and self.reports[-1][0] == step
        if self.classifier is not None and step > 0 and not validated:
            self.validate(step, cae)
        if self.best_state is not None:
            cae.load_state_dict(self.best_state)
        if self._writer is not None:
            self._writer.close()

    # ------------------------------------------------------------------ helpers
    def _scalars(self, group: str, step: int, values: Mapping[str, Any]) -> None:
        if self._writer is None:
            return
        for key, value in values.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(f"{group}/{key}", value, step)

    def _snapshot(self, step: int, cae: ClassAssociationEmbedding) -> None:
        from captum_secam.cae.figures import plot_swap_grid

        assert self.images is not None and self.labels is not None
        picks = [
            torch.nonzero(self.labels == k).flatten()[: self.snapshot_images]
            for k in torch.unique(self.labels).tolist()
        ]
        idx = torch.cat(picks)
        fig = plot_swap_grid(
            cae,
            self.images[idx],
            self.images[idx],
            classifier=self.classifier,
            class_names=cae.class_names,
        )
        fig.suptitle(f"swap grid at step {step}")
        fig.savefig(self.log_dir / f"swap_grid_{step:06d}.png", dpi=80)


def _append_csv(path: Path, row: Mapping[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _truncate_csv(path: Path, step: int) -> None:
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    kept = [r for r in rows if int(r["step"]) <= step]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)


def _tensorboard_writer(log_dir: Path, wanted: bool | None) -> Any:
    if wanted is False:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # tensorboard is optional
        if wanted:
            raise ImportError(
                "tensorboard=True needs the tensorboard package: pip install tensorboard"
            ) from err
        return None
    return SummaryWriter(str(log_dir / "tensorboard"))
