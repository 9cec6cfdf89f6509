"""Pairing / code-swap training of a :class:`ClassAssociationEmbedding` for K classes.

Each step draws a batch of images ``a`` and, for every ``a``, an image ``b`` of a different class
(the other class is drawn uniformly among the classes present). With
``(s_a, c_a) = E(a)``, ``(s_b, c_b) = E(b)``:

* reconstructions ``â = G(s_a, c_a)``, ``b̂ = G(s_b, c_b)``;
* swaps ``x_ab = G(s_a, c_b)`` (a's individual look with b's class) and ``x_ba = G(s_b, c_a)``;
* re-encoding ``(s_ab', c_ab') = E(x_ab)``, ``(s_ba', c_ba') = E(x_ba)``;
* cycles ``x_aba = G(s_ab', c_a)``, ``x_bab = G(s_ba', c_b)``.

Generator loss (L1 everywhere; reference weights of the authors' code)::

    10·(|â−a| + |b̂−b|) + 1·(|c_ab'−c_b| + |c_ba'−c_a|) + 1·(|s_ab'−s_a| + |s_ba'−s_b|)
    + 10·(|x_aba−a| + |x_bab−b|) + 1·adv(x_ab, x_ba) + 1·CE(D_cls(x_ab), y_b) + CE(D_cls(x_ba), y_a)

Discriminator loss: ``1·`` real/fake cross-entropy (real images vs. swaps) ``+ 2·`` class
cross-entropy on real images. Adam, ``betas=(0.5, 0.999)``. These are
:data:`REFERENCE_LOSS_WEIGHTS`.

**The default recipe** (:data:`DEFAULT_LOSS_WEIGHTS`, ``lr=3e-4``, batch 16, 300 warm-up steps;
measured in ``docs/cae.md``) adds terms that make a short CPU run separate class from
individual, where the reference weights give a decoder that copies its individual donor:

* ``class`` 5 (reference 1): the swap class loss is the only force that makes the decoder obey
  the class code;
* ``code_class`` 1: a linear probe ``W`` must read the label from the class code,
  ``CE(W·c, y)``, so the class codes of different classes stay apart (without it they
  collapse to a constant in a short run);
* ``class_code_center`` 1: the within-class share of the class codes' variance, so the class
  code carries the class and not the individual's look (the decoder must take the look from
  the individual code);
* ``swap_proximity`` 3: ``|x_ab − â|`` with ``â`` detached -- a swap changes its individual's
  image only as much as the class needs (the proximity term of counterfactual explanations);
* ``discriminator_warmup=300``: class-only steps of the discriminator and of the class-code
  probe before the swap training, so the class loss teaches the decoder from the first step.

Optional, 0 by default: ``conditional_adversarial`` / ``d_conditional``, a projection-style
class-conditional real/fake score (the swap must look like a real image *of its class*), and
``discriminator_noise``, instance noise on the discriminator's inputs.

The external classifier being explained is not used in training.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_secam.cae.model import ClassAssociationEmbedding

if TYPE_CHECKING:
    from captum_secam.cae.monitor import TrainingMonitor

__all__ = [
    "DEFAULT_LOSS_WEIGHTS",
    "REFERENCE_LOSS_WEIGHTS",
    "TrainingHistory",
    "dataset_labels",
    "train_cae",
]

REFERENCE_LOSS_WEIGHTS: dict[str, float] = {
    "recon": 10.0,
    "class_code": 1.0,
    "individual_code": 1.0,
    "cycle": 10.0,
    "adversarial": 1.0,
    "class": 1.0,
    "code_class": 0.0,
    "class_code_center": 0.0,
    "swap_proximity": 0.0,
    "conditional_adversarial": 0.0,
    "d_real_fake": 1.0,
    "d_class": 2.0,
    "d_conditional": 0.0,
}
"""The authors' weights (their public code); the terms they do not have are 0."""

DEFAULT_LOSS_WEIGHTS: dict[str, float] = {
    **REFERENCE_LOSS_WEIGHTS,
    "class": 5.0,
    "code_class": 1.0,
    "class_code_center": 1.0,
    "swap_proximity": 3.0,
}
"""The default recipe (module docstring): the reference plus the terms that separate class
from individual in a short run."""

_CKPT_NAME = "cae_training_checkpoint.pt"


@dataclass
class TrainingHistory:
    """Per-step losses recorded by :func:`train_cae` (one list entry per step; the optional
    ``d_warmup_class`` list has one entry per discriminator warm-up step)."""

    losses: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    steps: int = 0

    def mean(self, name: str, last: int | None = None) -> float:
        """Mean of loss ``name`` over the ``last`` steps (all steps by default)."""
        vals = self.losses[name][-last:] if last else self.losses[name]
        return float(sum(vals) / max(len(vals), 1))


def dataset_labels(dataset: Any) -> Tensor:
    """Integer labels of a dataset yielding ``(image, label)``.

    Uses ``dataset.targets`` / ``dataset.labels`` or the tensors of a ``TensorDataset`` when
    available, otherwise reads every item once.
    """
    for attr in ("targets", "labels"):
        lab = getattr(dataset, attr, None)
        if lab is not None and len(lab) == len(dataset):
            return torch.as_tensor(lab).long().flatten()
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, tuple) and len(tensors) >= 2:
        return torch.as_tensor(tensors[1]).long().flatten()
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)


def _fetch(dataset: Any, idx: Tensor) -> Tensor:
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, tuple) and len(tensors) >= 1 and isinstance(tensors[0], Tensor):
        return tensors[0][idx]
    return torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in idx])


def _rng_state(gen: torch.Generator) -> Tensor:
    return gen.get_state()


def train_cae(
    cae: ClassAssociationEmbedding,
    dataset: Any,
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 3e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 500,
    resume: bool = True,
    loss_weights: Mapping[str, float] | None = None,
    centroid_samples: int | None = 10000,
    labels: Sequence[int] | Tensor | None = None,
    time_limit: float | None = None,
    discriminator_warmup: int = 300,
    monitor: TrainingMonitor | None = None,
    discriminator_noise: float = 0.0,
    lr_schedule: str = "linear",
) -> TrainingHistory:
    """Train ``cae`` with the pairing / code-swap objective, then store class-code centroids.

    Args:
        cae: the model to train (modified in place, left in eval mode on ``device``).
        dataset: a map-style dataset yielding ``(image C×H×W float in [0, 1], int label)``
            with at least two classes; labels must be ``0..K-1``.
        steps: total number of optimisation steps (including steps of a resumed run).
        batch_size: images ``a`` per step (each paired with one image ``b``).
        lr: Adam learning rate for generator and discriminator.
        betas: Adam betas.
        seed: seeds the pairing sampler; the same seed, data and initial weights give
            identical weights.
        device: where to train (default: the device of ``cae``'s parameters).
        progress: show a tqdm bar with running losses.
        checkpoint_dir: if given, save ``cae_training_checkpoint.pt`` (tensors only, loaded with
            ``weights_only=True``) every ``checkpoint_every`` steps and at the end.
        checkpoint_every: checkpoint period in steps.
        resume: continue from the checkpoint in ``checkpoint_dir`` if present.
        loss_weights: overrides of :data:`DEFAULT_LOSS_WEIGHTS`.
        centroid_samples: images (first ones of a seeded permutation) used for the centroids;
            ``None`` uses the whole dataset.
        labels: labels of ``dataset`` if known (skips reading every item).
        time_limit: stop early once this many seconds of training (including those of a
            resumed run) have passed; ``history.steps`` tells how many steps ran. Runs cut by
            the clock are not reproducible across machines.
        discriminator_warmup: before the first step of a fresh run, train only the
            discriminator's class head (and its shared trunk) -- and, when ``code_class`` is
            weighted, the class encoder with its linear probe -- on real images for this many
            steps of ``2·batch_size`` images (not in the reference, 0 there). A short run
            otherwise starts with a discriminator that cannot tell the classes apart, so the
            class loss on the swapped images teaches the decoder little about the class code.
            Its time counts toward ``time_limit`` (which is checked after each training step),
            and its losses are kept in the checkpoint, so a resumed run does not repeat it.
        monitor: a :class:`~captum_secam.cae.TrainingMonitor` that logs losses to CSV (and
            TensorBoard), runs the validation report every few steps, saves swap-grid
            snapshots and may stop training early (then the best weights are restored).
        discriminator_noise: standard deviation of Gaussian instance noise added to the
            discriminator's inputs (0: none, as in the reference).
        lr_schedule: ``"linear"`` (default: both learning rates fall linearly from ``lr`` to 0
            over ``steps``, which settles the adversarial game; a run cut by ``time_limit``
            stops before the end of the decay) or ``"constant"`` (the reference).

    Returns:
        A :class:`TrainingHistory` with the per-step losses.

    Example:
        >>> ds = torch.utils.data.TensorDataset(torch.rand(64, 1, 28, 28), torch.arange(64) % 2)
        >>> cae = ClassAssociationEmbedding(28, 1, 2, base_channels=8)
        >>> hist = train_cae(cae, ds, steps=2, batch_size=4, progress=False)
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    if lr_schedule not in ("linear", "constant"):
        raise ValueError(f"lr_schedule must be 'linear' or 'constant', got {lr_schedule!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if (
        isinstance(discriminator_warmup, bool)
        or not isinstance(discriminator_warmup, int)
        or discriminator_warmup < 0
    ):
        raise ValueError(f"discriminator_warmup must be an int >= 0, got {discriminator_warmup!r}.")
    weights = dict(DEFAULT_LOSS_WEIGHTS)
    if loss_weights:
        unknown = set(loss_weights) - set(weights)
        if unknown:
            raise ValueError(f"unknown loss weights {sorted(unknown)}; known: {sorted(weights)}.")
        weights.update({k: float(v) for k, v in loss_weights.items()})
    n = len(dataset)
    if n < 2:
        raise ValueError("dataset must hold at least two images of two different classes.")
    lab = (
        torch.as_tensor(labels).long().flatten() if labels is not None else dataset_labels(dataset)
    )
    if lab.numel() != n:
        raise ValueError(f"labels has {lab.numel()} entries but the dataset has {n} items.")
    present = torch.unique(lab)
    if present.numel() < 2:
        raise ValueError(
            f"dataset has only class {present.tolist()}; CAE training pairs images of two "
            "different classes, so it needs at least two classes."
        )
    if int(lab.min()) < 0 or int(lab.max()) >= cae.num_classes:
        raise ValueError(
            f"labels must be in 0..{cae.num_classes - 1} (the CAE's num_classes), got "
            f"{int(lab.min())}..{int(lab.max())}."
        )
    sample = _fetch(dataset, torch.tensor([0]))
    cae.check_images(sample, "dataset images")

    dev = torch.device(device) if device is not None else next(cae.parameters()).device
    cae.to(dev)
    cae.train()
    by_class = {int(k): torch.nonzero(lab == k).flatten() for k in present}
    classes = present.clone()

    opt_g = torch.optim.Adam(cae.generator_parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(cae.discriminator.parameters(), lr=lr, betas=betas)
    gen = torch.Generator().manual_seed(seed)
    history = TrainingHistory()
    start = 0
    ckpt_path = Path(checkpoint_dir) / _CKPT_NAME if checkpoint_dir is not None else None
    if ckpt_path is not None and resume and ckpt_path.is_file():
        start = _load_checkpoint(ckpt_path, cae, opt_g, opt_d, gen, history, dev)

    def save_ckpt(step: int) -> None:
        if ckpt_path is None:
            return
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(
            {
                "model": cae.state_dict(),
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(),
                "rng": _rng_state(gen),
                "step": torch.tensor(step),
                "seconds": torch.tensor(history.seconds),
                "history": json.dumps(history.losses),
            },
            tmp,
        )
        tmp.replace(ckpt_path)

    if start == 0 and discriminator_warmup > 0:
        t_w = time.perf_counter()
        opt_code = opt_g if weights["code_class"] > 0 else None
        warm = _warm_up_discriminator(
            cae,
            dataset,
            n,
            lab,
            opt_d,
            opt_code,
            gen,
            discriminator_warmup,
            2 * batch_size,
            dev,
            progress,
        )
        history.losses["d_warmup_class"] = warm
        history.seconds += time.perf_counter() - t_w

    if monitor is not None:
        monitor.on_start(start)
    bar: Any = None
    if progress and steps > start:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc="CAE training", dynamic_ncols=True)
    running: dict[str, float] = {}
    t0 = time.perf_counter()
    seconds0 = history.seconds
    try:
        for step in range(start, steps):
            factor = 1.0 - step / steps if lr_schedule == "linear" else 1.0
            for group in (*opt_g.param_groups, *opt_d.param_groups):
                group["lr"] = lr * factor  # a function of the step alone: resume-safe
            idx_a = torch.randint(0, n, (batch_size,), generator=gen)
            ya = lab[idx_a]
            # other class: uniform among present classes != ya
            pos = torch.searchsorted(classes, ya)
            shift = torch.randint(1, classes.numel(), (batch_size,), generator=gen)
            yb = classes[(pos + shift) % classes.numel()]
            u = torch.rand(batch_size, generator=gen)
            idx_b = torch.stack(
                [
                    by_class[int(k)][int(ui * by_class[int(k)].numel())]
                    for k, ui in zip(yb, u, strict=True)
                ]
            )
            xa = _fetch(dataset, idx_a).to(dev, torch.float32)
            xb = _fetch(dataset, idx_b).to(dev, torch.float32)
            ya_d, yb_d = ya.to(dev), yb.to(dev)
            losses = _train_step(
                cae, xa, xb, ya_d, yb_d, opt_g, opt_d, weights, discriminator_noise, gen
            )
            for k, v in losses.items():
                history.losses.setdefault(k, []).append(v)
                running[k] = v if k not in running else 0.95 * running[k] + 0.05 * v
            history.steps = step + 1
            history.seconds = seconds0 + time.perf_counter() - t0
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    {k: f"{running[k]:.3f}" for k in ("g_total", "recon", "class", "d_total")}
                )
            if ckpt_path is not None and (step + 1) % checkpoint_every == 0:
                save_ckpt(step + 1)
            if monitor is not None and monitor.on_step(step + 1, losses, cae):
                break
            if time_limit is not None and history.seconds >= time_limit:
                break
    finally:
        if bar is not None:
            bar.close()
    if ckpt_path is not None and history.steps > start:
        save_ckpt(history.steps)  # the weights of the last step: a resumed run goes on from here
    if monitor is not None:
        monitor.on_end(history.steps, cae)
    cae.zero_grad(set_to_none=True)

    # centroids of the class codes
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    if centroid_samples is not None:
        order = order[:centroid_samples]
        # make sure every present class is represented
        for cls_id, idx in by_class.items():
            if not bool((lab[order] == cls_id).any()):
                order = torch.cat([order, idx[:1]])
    cae.eval()
    codes = []
    with torch.no_grad():
        for i in range(0, order.numel(), 256):
            xb_ = _fetch(dataset, order[i : i + 256]).to(dev, torch.float32)
            codes.append(cae.encode_class(xb_).cpu())
    all_codes = torch.cat(codes)
    lab_o = lab[order]
    cents = torch.zeros(cae.num_classes, cae.class_code_dim)
    missing: list[int] = []
    for cls_id in range(cae.num_classes):
        sel = lab_o == cls_id
        if bool(sel.any()):
            cents[cls_id] = all_codes[sel].mean(0)
        else:
            missing.append(cls_id)
    if missing:
        import warnings

        warnings.warn(
            f"classes {missing} have no training images; their centroids are set to the overall "
            "mean class code and should not be used as counterfactual targets.",
            stacklevel=2,
        )
        cents[missing] = all_codes.mean(0)
    cae.set_centroids(cents)
    cae.training_info = {
        "steps": history.steps,
        "batch_size": batch_size,
        "lr": lr,
        "betas": list(betas),
        "lr_schedule": lr_schedule,
        "seed": seed,
        "loss_weights": weights,
        "seconds": round(history.seconds, 2),
        "time_limit": time_limit,
        # what ran (a resumed run does not warm up again), not what was asked for
        "discriminator_warmup": len(history.losses.get("d_warmup_class", [])),
        "device": str(dev),
        "final_losses": {k: round(history.mean(k, last=100), 5) for k in history.losses},
    }
    return history


def _warm_up_discriminator(
    cae: ClassAssociationEmbedding,
    dataset: Any,
    n: int,
    lab: Tensor,
    opt_d: torch.optim.Optimizer,
    opt_code: torch.optim.Optimizer | None,
    gen: torch.Generator,
    steps: int,
    batch_size: int,
    dev: torch.device,
    progress: bool,
) -> list[float]:
    """Class cross-entropy steps of the discriminator on real images (and, with ``opt_code``,
    of the class encoder's linear probe); returns the discriminator's losses."""
    it: Any = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="discriminator warm-up", dynamic_ncols=True)
    losses: list[float] = []
    for _ in it:
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        x = _fetch(dataset, idx).to(dev, torch.float32)
        y = lab[idx].to(dev)
        _, cls = cae.discriminate(x)
        loss = F.cross_entropy(cls, y)
        opt_d.zero_grad(set_to_none=True)
        loss.backward()
        opt_d.step()
        if opt_code is not None:  # the class encoder learns to read the class as well
            code_loss = F.cross_entropy(cae.class_code_head(cae.encode_class(x)), y)
            opt_code.zero_grad(set_to_none=True)
            code_loss.backward()
            opt_code.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError("discriminator warm-up diverged; lower lr or check images.")
    return losses


def _train_step(
    cae: ClassAssociationEmbedding,
    xa: Tensor,
    xb: Tensor,
    ya: Tensor,
    yb: Tensor,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    w: Mapping[str, float],
    noise: float = 0.0,
    gen: torch.Generator | None = None,
) -> dict[str, float]:
    n = xa.shape[0]
    real = torch.ones(n, dtype=torch.long, device=xa.device)
    fake = torch.zeros(n, dtype=torch.long, device=xa.device)
    # ---------------- generator (encoders + decoder)
    x = torch.cat([xa, xb])
    s, c = cae.encode(x)
    s_a, s_b = s[:n], s[n:]
    c_a, c_b = c[:n], c[n:]
    rec = cae.decode(s, c)
    x_ab = cae.decode(s_a, c_b)  # a's individual code, b's class
    x_ba = cae.decode(s_b, c_a)
    swaps = torch.cat([x_ab, x_ba])
    s2, c2 = cae.encode(swaps)
    cyc = cae.decode(s2, c)  # (s_ab', c_a) -> a ; (s_ba', c_b) -> b
    y_swap = torch.cat([yb, ya])  # the class each swap should show (its class-code donor's)
    rf, cls = cae.discriminate(_noisy(swaps, noise, gen))
    l_recon = F.l1_loss(rec, x)
    l_cc = F.l1_loss(c2, torch.cat([c_b, c_a]))
    l_ic = F.l1_loss(s2, s)
    l_cyc = F.l1_loss(cyc, x)
    l_adv = F.cross_entropy(rf, torch.cat([real, real]))
    l_cls = F.cross_entropy(cls, torch.cat([yb, ya]))
    # optional (not in the reference): a linear probe must read the label from the class code,
    # which keeps the class codes of different classes apart (no collapse of Ec)
    l_code_cls = F.cross_entropy(cae.class_code_head(c), torch.cat([ya, yb]))
    # optional (not in the reference): class codes of one class gather around their mean, so
    # the class code cannot carry the individual's look (scale-free: within / total spread)
    l_center = _within_class_spread(c, torch.cat([ya, yb]))
    # optional (not in the reference): a swap changes its individual's image only as much as
    # the class needs (the proximity term of counterfactual explanations)
    l_prox = F.l1_loss(swaps, rec.detach())
    # optional (not in the reference): a class-conditional real/fake score (projection
    # discriminator) -- the swap must look like a *real image of its class*, which a pattern
    # that merely fools the class head does not
    l_cond = F.softplus(-_conditional_score(rf, cls, y_swap)).mean()
    g_total = (
        w["recon"] * l_recon
        + w["class_code"] * l_cc
        + w["individual_code"] * l_ic
        + w["cycle"] * l_cyc
        + w["adversarial"] * l_adv
        + w["class"] * l_cls
        + w["code_class"] * l_code_cls
        + w["class_code_center"] * l_center
        + w["swap_proximity"] * l_prox
        + w["conditional_adversarial"] * l_cond
    )
    opt_g.zero_grad(set_to_none=True)
    g_total.backward()
    opt_g.step()
    # ---------------- discriminator
    rf_real, cls_real = cae.discriminate(_noisy(x, noise, gen))
    rf_fake, cls_fake = cae.discriminate(_noisy(swaps.detach(), noise, gen))
    l_d_rf = F.cross_entropy(rf_real, torch.cat([real, real])) + F.cross_entropy(
        rf_fake, torch.cat([fake, fake])
    )
    l_d_cls = F.cross_entropy(cls_real, torch.cat([ya, yb]))
    y_real = torch.cat([ya, yb])
    l_d_cond = (
        F.softplus(-_conditional_score(rf_real, cls_real, y_real)).mean()
        + F.softplus(_conditional_score(rf_fake, cls_fake, y_swap)).mean()
        # a real image paired with another class is "fake" too (matching-aware)
        + F.softplus(_conditional_score(rf_real, cls_real, y_real.flip(0))).mean()
    )
    d_total = w["d_real_fake"] * l_d_rf + w["d_class"] * l_d_cls + w["d_conditional"] * l_d_cond
    opt_d.zero_grad(set_to_none=True)
    d_total.backward()
    opt_d.step()
    out = {
        "g_total": g_total,
        "recon": l_recon,
        "class_code": l_cc,
        "individual_code": l_ic,
        "cycle": l_cyc,
        "adversarial": l_adv,
        "class": l_cls,
        "code_class": l_code_cls,
        "class_code_center": l_center,
        "swap_proximity": l_prox,
        "conditional_adversarial": l_cond,
        "d_total": d_total,
        "d_real_fake": l_d_rf,
        "d_class": l_d_cls,
        "d_conditional": l_d_cond,
    }
    vals = {k: float(v.detach()) for k, v in out.items()}
    for k, v in vals.items():
        if not math.isfinite(v):
            raise FloatingPointError(
                f"CAE training diverged at loss {k!r} (= {v}); lower lr or check the images."
            )
    return vals


def _noisy(x: Tensor, sigma: float, gen: torch.Generator | None) -> Tensor:
    """Instance noise on the discriminator's inputs (hides patterns too faint to be real);
    drawn on the CPU from the training generator, so runs stay reproducible."""
    if sigma == 0:
        return x
    noise = torch.randn(x.shape, generator=gen).to(device=x.device, dtype=x.dtype)
    return (x + sigma * noise).clamp(0.0, 1.0)


def _conditional_score(rf: Tensor, cls: Tensor, y: Tensor) -> Tensor:
    """Projection-discriminator logit of "a real image of class y": real/fake margin + class
    logit of y."""
    return rf[:, 1] - rf[:, 0] + cls.gather(1, y[:, None])[:, 0]


def _within_class_spread(codes: Tensor, labels: Tensor) -> Tensor:
    """Within-class share of the class codes' total variance (0 = every class is one point)."""
    total = (codes - codes.mean(0)).pow(2).sum(1).mean()
    onehot = F.one_hot(labels, int(labels.max()) + 1).to(codes.dtype)
    means = (onehot.T @ codes) / onehot.sum(0).clamp_min(1.0)[:, None]
    within = (codes - means[labels]).pow(2).sum(1).mean()
    return within / (total + 1e-8)


def _load_checkpoint(
    path: Path,
    cae: ClassAssociationEmbedding,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    gen: torch.Generator,
    history: TrainingHistory,
    dev: torch.device,
) -> int:
    ck = torch.load(path, map_location=dev, weights_only=True)
    cae.load_state_dict(ck["model"])
    opt_g.load_state_dict(ck["opt_g"])
    opt_d.load_state_dict(ck["opt_d"])
    gen.set_state(ck["rng"].cpu())
    history.losses = {k: list(v) for k, v in json.loads(ck["history"]).items()}
    history.seconds = float(ck["seconds"])
    step = int(ck["step"])
    history.steps = step
    return step
