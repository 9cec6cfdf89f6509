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

* ``class`` 10 (reference 1): the swap class loss is the only force that makes the decoder obey
  the class code;
* ``code_class`` 1: a linear probe ``W`` must read the label from the class code,
  ``CE(W·c, y)``, so the class codes of different classes stay apart (without it they
  collapse to a constant in a short run);
* ``class_code_center`` 1: the within-class share of the class codes' variance, so the class
  code carries the class and not the individual's look (the decoder must take the look from
  the individual code);
* ``swap_proximity`` 3: ``|x_ab − â|`` with ``â`` detached -- a swap changes its individual's
  image only as much as the class needs (the proximity term of counterfactual explanations);
* ``edit_sparsity`` 1: the mean area of the decoder's edit mask (``CaeConfig.class_edit_mask``,
  on by default), so the class code rewrites a small region and the rest of the image comes
  from the individual code alone;
* ``discriminator_warmup=300``: class-only steps of the discriminator and of the class-code
  probe before the swap training, so the class loss teaches the decoder from the first step.

Optional, 0 by default: ``conditional_adversarial`` / ``d_conditional``, a projection-style
class-conditional real/fake score (the swap must look like a real image *of its class*);
``recon_class``, the class head's cross-entropy on the reconstructions (they must keep their
class; one more discriminator pass per step); and ``discriminator_noise``, instance noise on
the discriminator's inputs.

The external classifier being explained is not used in training.

**Scale** (see ``docs/howto/train-cae.md``): ``train_cae`` reads a map-style dataset (tensors,
PIL images, ``torchvision.datasets.ImageFolder``) in the main process, or through a
``DataLoader`` with workers, pinned memory and the seeded, resumable
:class:`~captum_secam.cae.data.ClassPairBatchSampler`; it takes ``transform=`` augmentation,
``amp="bf16"``/``"fp16"`` mixed precision, ``compile=True``, ``channels_last=True``, an LR
schedule and weight decay, and runs data-parallel under ``torchrun``
(:mod:`captum_secam.cae.distributed`). Named recipes are in :mod:`captum_secam.cae.presets`.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from captum_secam.cae.data import LoaderSource, SamplerSource, StreamSource
from captum_secam.cae.distributed import (
    DistributedContext,
    average_gradients,
    broadcast_module,
    gather_with_grad,
    mean_across_ranks,
)
from captum_secam.cae.model import ClassAssociationEmbedding
from captum_secam.cae.presets import REFERENCE_LOSS_WEIGHTS, CaePreset, get_preset

if TYPE_CHECKING:
    from captum_secam.cae.monitor import TrainingMonitor

__all__ = [
    "DEFAULT_LOSS_WEIGHTS",
    "REFERENCE_LOSS_WEIGHTS",
    "TrainingHistory",
    "dataset_labels",
    "train_cae",
]


DEFAULT_LOSS_WEIGHTS: dict[str, float] = {
    **REFERENCE_LOSS_WEIGHTS,
    "class": 10.0,
    "code_class": 1.0,
    "class_code_center": 1.0,
    "swap_proximity": 3.0,
    "edit_sparsity": 1.0,
}
"""The default recipe (module docstring): the reference plus the terms that separate class
from individual in a short run."""

_CKPT_NAME = "cae_training_checkpoint.pt"


@dataclass
class TrainingHistory:
    """Per-step losses recorded by :func:`train_cae` (one list entry per step; the optional
    ``d_warmup_class`` list has one entry per discriminator warm-up step), the training time
    and the time spent waiting for data."""

    losses: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    steps: int = 0
    data_seconds: float = 0.0
    """Seconds this run's training steps waited for their batches (not checkpointed)."""
    step_times: list[tuple[float, float]] = field(default_factory=list)
    """``(seconds of the step, of which waiting for data)`` for each step of this run."""

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


def _rng_state(gen: torch.Generator) -> Tensor:
    return gen.get_state()


_SCHEDULES = ("linear", "constant", "step")
_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _lr_factor(schedule: Any, step: int, steps: int, step_size: int | None, gamma: float) -> float:
    """The learning-rate multiplier at ``step`` (a function of the step alone: resume-safe)."""
    if callable(schedule):
        return float(schedule(step, steps))
    if schedule == "linear":
        return 1.0 - step / steps
    if schedule == "step":
        assert step_size is not None
        return float(gamma ** (step // step_size))
    return 1.0


def _check_arguments(
    steps: int,
    batch_size: int,
    discriminator_warmup: Any,
    lr_schedule: Any,
    lr_step_size: int | None,
    amp: str | None,
    weight_decay: float,
    num_workers: int,
) -> None:
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    if not callable(lr_schedule) and lr_schedule not in _SCHEDULES:
        raise ValueError(
            f"lr_schedule must be one of {_SCHEDULES} or a function (step, steps) -> factor, "
            f"got {lr_schedule!r}."
        )
    if lr_schedule == "step" and (lr_step_size is None or lr_step_size < 1):
        raise ValueError("lr_schedule='step' needs lr_step_size >= 1 (steps between decays).")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if (
        isinstance(discriminator_warmup, bool)
        or not isinstance(discriminator_warmup, int)
        or discriminator_warmup < 0
    ):
        raise ValueError(f"discriminator_warmup must be an int >= 0, got {discriminator_warmup!r}.")
    if amp is not None and amp not in _AMP:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}.")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}.")


def _merge_weights(loss_weights: Mapping[str, float] | None) -> dict[str, float]:
    weights = dict(DEFAULT_LOSS_WEIGHTS)
    if loss_weights:
        unknown = set(loss_weights) - set(weights)
        if unknown:
            raise ValueError(f"unknown loss weights {sorted(unknown)}; known: {sorted(weights)}.")
        weights.update({k: float(v) for k, v in loss_weights.items()})
    return weights


def _checked_labels(cae: ClassAssociationEmbedding, dataset: Any, labels: Any) -> Tensor:
    n = len(dataset)
    if n < 2:
        raise ValueError("dataset must hold at least two images of two different classes.")
    lab = (
        torch.as_tensor(labels).long().flatten() if labels is not None else dataset_labels(dataset)
    )
    if lab.numel() != n:
        raise ValueError(f"labels has {lab.numel()} entries but the dataset has {n} items.")
    _check_label_values(cae, lab)
    return lab


def _check_label_values(cae: ClassAssociationEmbedding, lab: Tensor) -> None:
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


@dataclass
class _Engine:
    """How a step runs: mixed precision, gradient averaging over ranks, compiled networks.
    The default (``_Engine()``) is plain float32 in one process."""

    amp_dtype: torch.dtype | None = None
    device_type: str = "cpu"
    scalers: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1
    nets: dict[str, Callable[..., Any]] = field(default_factory=dict)

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)

    def net(self, cae: ClassAssociationEmbedding, name: str) -> Callable[..., Any]:
        fn = self.nets.get(name)
        return fn if fn is not None else getattr(cae, name)

    def optimise(
        self, name: str, loss: Tensor, opt: torch.optim.Optimizer, params: Sequence[Tensor]
    ) -> None:
        """zero_grad, backward (scaled for fp16), average over ranks, step."""
        scaler = self.scalers.get(name)
        opt.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if self.world_size > 1:
            average_gradients(params, self.world_size)  # type: ignore[arg-type]
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()

    def gather(self, x: Tensor) -> Tensor:
        return gather_with_grad(x) if self.world_size > 1 else x

    def reduce_values(self, values: Tensor) -> Tensor:
        return mean_across_ranks(values) if self.world_size > 1 else values


def _make_engine(
    cae: ClassAssociationEmbedding,
    dev: torch.device,
    amp: str | None,
    compile_networks: bool,
    world_size: int,
) -> _Engine:
    engine = _Engine(
        amp_dtype=_AMP[amp] if amp is not None else None,
        device_type=dev.type,
        world_size=world_size,
    )
    if amp == "fp16":  # bf16 has float32's range and needs no loss scaling
        engine.scalers = {g: torch.amp.GradScaler(dev.type) for g in ("g", "d", "w", "c")}
    if compile_networks:
        # compiled bound methods: the model itself (its state_dict keys) is left as it is
        engine.nets = {
            name: torch.compile(getattr(cae, name)) for name in ("encode", "decode", "discriminate")
        }
    return engine


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
    lr_schedule: str | Callable[[int, int], float] = "linear",
    lr_step_size: int | None = None,
    lr_gamma: float = 0.5,
    weight_decay: float = 0.0,
    num_workers: int = 0,
    pin_memory: bool | None = None,
    transform: Callable[[Any], Any] | None = None,
    use_loader: bool | None = None,
    amp: str | None = None,
    compile: bool = False,
    channels_last: bool = False,
    preset: CaePreset | str | None = None,
) -> TrainingHistory:
    """Train ``cae`` with the pairing / code-swap objective, then store class-code centroids.

    Args:
        cae: the model to train (modified in place, left in eval mode on ``device``).
        dataset: a map-style dataset yielding ``(image, int label)`` -- the image a float
            C×H×W tensor in ``[0, 1]``, a ``uint8`` tensor/array or a PIL image (e.g. a
            ``torchvision.datasets.ImageFolder``) -- with at least two classes and labels
            ``0..K-1``; or a ``DataLoader`` yielding ``(images, labels)`` batches, whose
            batches are used as they come (each image is paired with an image of another
            class of its batch; ``batch_size``, ``num_workers``, ``transform`` are the
            loader's own).
        steps: total number of optimisation steps (including steps of a resumed run).
        batch_size: images ``a`` per step and process (each paired with one image ``b``);
            with ``N`` processes the global batch is ``N·batch_size``.
        lr: Adam learning rate for generator and discriminator.
        betas: Adam betas.
        seed: seeds the pairing sampler; the same seed, data and initial weights give
            identical weights.
        device: where to train (default: the device of ``cae``'s parameters; under
            ``torchrun`` with CUDA, the GPU ``LOCAL_RANK``).
        progress: show a tqdm bar with running losses and the share of time spent waiting
            for data (rank 0 only).
        checkpoint_dir: if given, save ``cae_training_checkpoint.pt`` (tensors only, loaded with
            ``weights_only=True``) every ``checkpoint_every`` steps and at the end (rank 0).
        checkpoint_every: checkpoint period in steps.
        resume: continue from the checkpoint in ``checkpoint_dir`` if present (also with
            another number of processes).
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
            Under ``torchrun`` it runs on rank 0 and its decision to stop reaches all ranks.
        discriminator_noise: standard deviation of Gaussian instance noise added to the
            discriminator's inputs (0: none, as in the reference).
        lr_schedule: the learning-rate factor of both optimisers: ``"linear"`` (default:
            from ``lr`` to 0 over ``steps``, which settles the adversarial game; a run cut by
            ``time_limit`` stops before the end of the decay), ``"step"`` (times
            ``lr_gamma`` every ``lr_step_size`` steps, the authors' schedule),
            ``"constant"`` (the reference's short runs) or a function
            ``(step, steps) -> factor`` (e.g. a cosine:
            ``lambda t, n: 0.5 * (1 + math.cos(math.pi * t / n))``).
        lr_step_size, lr_gamma: period and factor of the ``"step"`` schedule.
        weight_decay: L2 penalty of both Adam optimisers (the authors use 1e-4).
        num_workers: loader worker processes that read, convert and augment the images
            while the model trains (0: in the main process).
        pin_memory: page-locked host batches for faster copies to the GPU (default: on
            CUDA).
        transform: applied to each image before conversion (PIL image or tensor in, image
            out), e.g. :func:`captum_secam.cae.data.default_transform` (resize, random crop,
            random flip). Its randomness is seeded per step and slot, so runs repeat.
        use_loader: draw the pairs with :class:`~captum_secam.cae.data.ClassPairBatchSampler`
            through a ``DataLoader``. ``None`` (default) does so when ``num_workers > 0``, a
            ``transform`` is given or several processes train; otherwise the images are read
            in the main process in the order of earlier versions (same results for the same
            seed). The two orders are different draws of the same distribution.
        amp: mixed precision: ``"bf16"`` (CUDA or CPU autocast) or ``"fp16"`` (with gradient
            scaling); ``None`` trains in float32.
        compile: run the encoders, the decoder and the discriminator through
            ``torch.compile`` (slow first steps; the model object is not changed).
        channels_last: train in the channels-last memory format (faster convolutions on
            recent GPUs and some CPUs); the model is put back in the default format after
            training.
        preset: the :class:`~captum_secam.cae.presets.CaePreset` (or its name) the model and
            these options come from; stored in ``training_info`` and in the checkpoint.

    Multiple processes: start the script with ``torchrun --nproc_per_node=N`` and call
    :func:`captum_secam.cae.distributed.init_distributed` first (or initialise the process
    group yourself); see :mod:`captum_secam.cae.distributed`.

    Returns:
        A :class:`TrainingHistory` with the per-step losses (averaged over the processes).

    Example:
        >>> ds = torch.utils.data.TensorDataset(torch.rand(64, 1, 28, 28), torch.arange(64) % 2)
        >>> cae = ClassAssociationEmbedding(28, 1, 2, base_channels=8)
        >>> hist = train_cae(cae, ds, steps=2, batch_size=4, progress=False)
    """
    _check_arguments(
        steps,
        batch_size,
        discriminator_warmup,
        lr_schedule,
        lr_step_size,
        amp,
        weight_decay,
        num_workers,
    )
    weights = _merge_weights(loss_weights)
    ctx = DistributedContext.current()
    dev = _training_device(cae, device, ctx)
    gen = torch.Generator().manual_seed(seed)
    source = _make_source(
        cae,
        dataset,
        labels,
        use_loader,
        num_workers,
        transform,
        pin_memory,
        batch_size,
        seed,
        gen,
        dev,
        ctx,
    )
    source.dtype = next(cae.parameters()).dtype  # float32, or float64 for exact checks
    cae.check_images(source.sample().to(source.dtype), "dataset images")
    cae.to(dev)
    if channels_last:
        cae.to(memory_format=torch.channels_last)
    cae.train()
    opt_g = torch.optim.Adam(
        cae.generator_parameters(), lr=lr, betas=betas, weight_decay=weight_decay
    )
    opt_d = torch.optim.Adam(
        cae.discriminator.parameters(), lr=lr, betas=betas, weight_decay=weight_decay
    )
    engine = _make_engine(cae, dev, amp, compile, ctx.world_size)
    history = TrainingHistory()
    start = 0
    ckpt_path = Path(checkpoint_dir) / _CKPT_NAME if checkpoint_dir is not None else None
    if ckpt_path is not None and resume and ckpt_path.is_file():
        start = _load_checkpoint(ckpt_path, cae, opt_g, opt_d, gen, history, dev, engine)
    if ctx.active:
        broadcast_module(cae)  # every rank starts from rank 0's weights
    preset_doc = get_preset(preset).to_json_dict() if preset is not None else None
    options = {
        "preset": preset_doc,
        "amp": amp,
        "world_size": ctx.world_size,
        "global_batch_size": batch_size * ctx.world_size,
        "sampler": source.kind,
    }

    def save_ckpt(step: int) -> None:
        if ckpt_path is not None and ctx.is_main:
            _save_checkpoint(ckpt_path, cae, opt_g, opt_d, gen, history, step, engine, options)

    warmup = discriminator_warmup if start == 0 else 0
    if isinstance(source, SamplerSource):
        source.open(start, steps, warmup)
    if warmup > 0:
        t_w = time.perf_counter()
        opt_code = opt_g if weights["code_class"] > 0 else None
        history.losses["d_warmup_class"] = _warm_up_discriminator(
            cae,
            source.warmup(warmup),
            opt_d,
            opt_code,
            warmup,
            progress and ctx.is_main,
            engine,
            channels_last,
        )
        history.seconds += time.perf_counter() - t_w
    try:
        _run_steps(
            cae,
            source,
            start,
            steps,
            history,
            weights,
            opt_g,
            opt_d,
            engine,
            monitor,
            ctx,
            lr=lr,
            schedule=(lr_schedule, lr_step_size, lr_gamma),
            noise=discriminator_noise,
            progress=progress,
            time_limit=time_limit,
            save=(save_ckpt, checkpoint_every if ckpt_path is not None else 0),
            channels_last=channels_last,
        )
    finally:
        if channels_last:
            cae.to(memory_format=torch.contiguous_format)
    if history.steps > start:
        save_ckpt(history.steps)  # the weights of the last step: a resumed run goes on from here
    if ctx.active:
        torch.distributed.barrier()
    cae.zero_grad(set_to_none=True)
    _store_centroids(cae, source.centroid_batches(seed, centroid_samples))
    cae.training_info = {
        "steps": history.steps,
        "batch_size": batch_size,
        "lr": lr,
        "betas": list(betas),
        "lr_schedule": lr_schedule if isinstance(lr_schedule, str) else "custom",
        "seed": seed,
        "loss_weights": weights,
        "seconds": round(history.seconds, 2),
        "time_limit": time_limit,
        # what ran (a resumed run does not warm up again), not what was asked for
        "discriminator_warmup": len(history.losses.get("d_warmup_class", [])),
        "device": str(dev),
        "final_losses": {k: round(history.mean(k, last=100), 5) for k in history.losses},
        **_extra_info(options, weight_decay, num_workers, compile, channels_last, history),
    }
    return history


def _extra_info(
    options: dict[str, Any],
    weight_decay: float,
    num_workers: int,
    compile_networks: bool,
    channels_last: bool,
    history: TrainingHistory,
) -> dict[str, Any]:
    """The options of this version (only those that differ from the earlier defaults, so
    the record of a plain run stays as it was)."""
    extra = {
        "weight_decay": weight_decay,
        "num_workers": num_workers,
        "compile": compile_networks,
        "channels_last": channels_last,
        **options,
    }
    defaults = {
        "weight_decay": 0.0,
        "num_workers": 0,
        "compile": False,
        "channels_last": False,
        "preset": None,
        "amp": None,
        "world_size": 1,
        "sampler": "stream",
    }
    out = {k: v for k, v in extra.items() if k not in defaults or defaults[k] != v}
    if out.get("global_batch_size") is not None and "world_size" not in out:
        out.pop("global_batch_size")
    if history.seconds > 0 and out:
        out["data_wait_fraction"] = round(history.data_seconds / max(history.seconds, 1e-9), 4)
    return out


def _training_device(
    cae: ClassAssociationEmbedding, device: str | torch.device | None, ctx: DistributedContext
) -> torch.device:
    if device is not None:
        return torch.device(device)
    if ctx.active and torch.cuda.is_available():
        return torch.device("cuda", ctx.local_rank)
    return next(cae.parameters()).device


def _make_source(
    cae: ClassAssociationEmbedding,
    dataset: Any,
    labels: Any,
    use_loader: bool | None,
    num_workers: int,
    transform: Callable[[Any], Any] | None,
    pin_memory: bool | None,
    batch_size: int,
    seed: int,
    gen: torch.Generator,
    dev: torch.device,
    ctx: DistributedContext,
) -> StreamSource | SamplerSource | LoaderSource:
    if isinstance(dataset, DataLoader):
        if num_workers or transform is not None or use_loader is False:
            raise ValueError(
                "with a DataLoader, set num_workers and transforms on the DataLoader itself "
                "(and use a DistributedSampler under torchrun); or pass its dataset instead."
            )
        return LoaderSource(dataset, gen, dev, cae.num_classes)
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise TypeError(
            f"dataset must be a map-style dataset (len() and [i]) or a DataLoader, got "
            f"{type(dataset).__name__}."
        )
    lab = _checked_labels(cae, dataset, labels)
    wants_loader = num_workers > 0 or transform is not None or ctx.active
    if use_loader is False and wants_loader:
        raise ValueError(
            "use_loader=False reads images in the main process; it cannot use num_workers, a "
            "transform or several processes."
        )
    if not (use_loader or wants_loader):
        return StreamSource(dataset, lab, batch_size, gen, dev)
    return SamplerSource(
        dataset,
        lab,
        batch_size=batch_size,
        seed=seed,
        dev=dev,
        transform=transform,
        channels=cae.in_channels,
        num_workers=num_workers,
        pin_memory=dev.type == "cuda" if pin_memory is None else pin_memory,
        ctx=ctx,
    )


def _run_steps(
    cae: ClassAssociationEmbedding,
    source: StreamSource | SamplerSource | LoaderSource,
    start: int,
    steps: int,
    history: TrainingHistory,
    weights: dict[str, float],
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    engine: _Engine,
    monitor: TrainingMonitor | None,
    ctx: DistributedContext,
    *,
    lr: float,
    schedule: tuple[Any, int | None, float],
    noise: float,
    progress: bool,
    time_limit: float | None,
    save: tuple[Callable[[int], None], int],
    channels_last: bool,
) -> None:
    """The training loop (steps ``start .. steps-1``), then the monitor's end hook."""
    main_monitor = monitor if ctx.is_main else None
    if main_monitor is not None:
        main_monitor.on_start(start)
    bar: Any = None
    if progress and steps > start and ctx.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc="CAE training", dynamic_ncols=True)
    running: dict[str, float] = {}
    save_ckpt, every = save
    t0 = time.perf_counter()
    seconds0 = history.seconds
    batches = source.pairs(start, steps)
    try:
        for step in range(start, steps):
            factor = _lr_factor(schedule[0], step, steps, schedule[1], schedule[2])
            for group in (*opt_g.param_groups, *opt_d.param_groups):
                group["lr"] = lr * factor  # a function of the step alone: resume-safe
            t_data = time.perf_counter()
            xa, xb, ya_d, yb_d = next(batches)
            if channels_last:
                xa = xa.contiguous(memory_format=torch.channels_last)
                xb = xb.contiguous(memory_format=torch.channels_last)
            waited = time.perf_counter() - t_data
            history.data_seconds += waited
            losses = _train_step(
                cae,
                xa,
                xb,
                ya_d,
                yb_d,
                opt_g,
                opt_d,
                weights,
                noise,
                source.noise_generator(step),
                engine,
            )
            for k, v in losses.items():
                history.losses.setdefault(k, []).append(v)
                running[k] = v if k not in running else 0.95 * running[k] + 0.05 * v
            history.steps = step + 1
            history.seconds = seconds0 + time.perf_counter() - t0
            history.step_times.append((time.perf_counter() - t_data, waited))
            if bar is not None:
                bar.update(1)
                shown = {k: f"{running[k]:.3f}" for k in ("g_total", "recon", "class", "d_total")}
                if source.kind != "stream":
                    share = history.data_seconds / max(history.seconds - seconds0, 1e-9)
                    shown["data"] = f"{100 * share:.0f}%"
                bar.set_postfix(shown)
            if every and (step + 1) % every == 0:
                save_ckpt(step + 1)
            stop = main_monitor is not None and main_monitor.on_step(step + 1, losses, cae)
            stop = stop or (time_limit is not None and history.seconds >= time_limit)
            if _agree(stop, ctx):
                break
    finally:
        if bar is not None:
            bar.close()
    if main_monitor is not None:
        main_monitor.on_end(history.steps, cae)
    if ctx.active and monitor is not None:
        broadcast_module(cae)  # the monitor may have restored its best weights on rank 0


def _agree(stop: bool, ctx: DistributedContext) -> bool:
    """Rank 0's decision to stop, for every rank (clocks and monitors differ per rank)."""
    if not ctx.active:
        return stop
    flag = torch.tensor([1.0 if stop else 0.0])
    torch.distributed.broadcast(flag, 0)
    return bool(flag.item())


def _store_centroids(
    cae: ClassAssociationEmbedding, batches: Iterator[tuple[Tensor, Tensor]]
) -> None:
    """Set the centroids to the per-class mean class codes of ``batches``."""
    cae.eval()
    codes, labs = [], []
    with torch.no_grad():
        for x, y in batches:
            codes.append(cae.encode_class(x).cpu())
            labs.append(y.cpu())
    all_codes = torch.cat(codes)
    lab_o = torch.cat(labs)
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
            stacklevel=3,
        )
        cents[missing] = all_codes.mean(0)
    cae.set_centroids(cents)


def _save_checkpoint(
    path: Path,
    cae: ClassAssociationEmbedding,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    gen: torch.Generator,
    history: TrainingHistory,
    step: int,
    engine: _Engine,
    options: dict[str, Any],
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    doc: dict[str, Any] = {
        "model": cae.state_dict(),
        "opt_g": opt_g.state_dict(),
        "opt_d": opt_d.state_dict(),
        "rng": _rng_state(gen),
        "step": torch.tensor(step),
        "seconds": torch.tensor(history.seconds),
        "history": json.dumps(history.losses),
        "options": json.dumps(options),
    }
    for name, scaler in engine.scalers.items():
        doc[f"scaler_{name}"] = scaler.state_dict()
    torch.save(doc, tmp)
    tmp.replace(path)  # atomic: a run killed while saving keeps the previous checkpoint


def _warm_up_discriminator(
    cae: ClassAssociationEmbedding,
    batches: Iterator[tuple[Tensor, Tensor]],
    opt_d: torch.optim.Optimizer,
    opt_code: torch.optim.Optimizer | None,
    steps: int,
    progress: bool,
    engine: _Engine | None = None,
    channels_last: bool = False,
) -> list[float]:
    """Class cross-entropy steps of the discriminator on real images (and, with ``opt_code``,
    of the class encoder's linear probe); returns the discriminator's losses."""
    engine = engine if engine is not None else _Engine()
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="discriminator warm-up", dynamic_ncols=True)
    losses: list[float] = []
    d_params = list(cae.discriminator.parameters())
    for x, y in batches:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with engine.autocast():
            _, cls = engine.net(cae, "discriminate")(x)
            loss = F.cross_entropy(cls.float(), y)
        engine.optimise("w", loss, opt_d, d_params)
        if opt_code is not None:  # the class encoder learns to read the class as well
            with engine.autocast():
                code_loss = F.cross_entropy(cae.class_code_head(cae.encode_class(x)).float(), y)
            engine.optimise("c", code_loss, opt_code, cae.generator_parameters())
        losses.append(float(engine.reduce_values(loss.detach()[None])[0]))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError("discriminator warm-up diverged; lower lr or check images.")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return losses


def _generator_losses(
    cae: ClassAssociationEmbedding,
    xa: Tensor,
    xb: Tensor,
    ya: Tensor,
    yb: Tensor,
    noise: float,
    gen: torch.Generator | None,
    engine: _Engine,
    recon_class: bool = False,
) -> tuple[dict[str, Tensor], Tensor]:
    """The generator's loss terms for one batch of pairs, and the swapped images
    (``recon_class``: also score the reconstructions with the class head, one more
    discriminator pass)."""
    encode, decode = engine.net(cae, "encode"), engine.net(cae, "decode")
    n = xa.shape[0]
    real = torch.ones(n, dtype=torch.long, device=xa.device)
    x = torch.cat([xa, xb])
    s, c = encode(x)
    s_a, s_b = s[:n], s[n:]
    c_a, c_b = c[:n], c[n:]
    if cae.config.class_edit_mask:
        decode_masked = engine.net(cae, "decode_with_mask")
        rec, rec_mask = decode_masked(s, c)
        swaps, swap_mask = decode_masked(torch.cat([s_a, s_b]), torch.cat([c_b, c_a]))
        edit_area = torch.cat([rec_mask, swap_mask]).mean()
    else:
        rec = decode(s, c)
        x_ab = decode(s_a, c_b)  # a's individual code, b's class
        x_ba = decode(s_b, c_a)
        swaps = torch.cat([x_ab, x_ba])
        edit_area = torch.zeros((), device=x.device)
    s2, c2 = encode(swaps)
    cyc = decode(s2, c)  # (s_ab', c_a) -> a ; (s_ba', c_b) -> b
    y_swap = torch.cat([yb, ya])  # the class each swap should show (its class-code donor's)
    discriminate = engine.net(cae, "discriminate")
    rf, cls = discriminate(_noisy(swaps, noise, gen))
    y_real = torch.cat([ya, yb])
    if recon_class:
        recon_class_loss = F.cross_entropy(discriminate(_noisy(rec, noise, gen))[1], y_real)
    else:
        recon_class_loss = torch.zeros((), device=x.device)
    terms = {
        "recon": F.l1_loss(rec, x),
        "class_code": F.l1_loss(c2, torch.cat([c_b, c_a])),
        "individual_code": F.l1_loss(s2, s),
        "cycle": F.l1_loss(cyc, x),
        "adversarial": F.cross_entropy(rf, torch.cat([real, real])),
        "class": F.cross_entropy(cls, torch.cat([yb, ya])),
        # optional (not in the reference): a linear probe must read the label from the class
        # code, which keeps the class codes of different classes apart (no collapse of Ec)
        "code_class": F.cross_entropy(cae.class_code_head(c), y_real),
        # optional (not in the reference): class codes of one class gather around their
        # mean, so the class code cannot carry the individual's look (scale-free: within /
        # total spread); a batch statistic, so the codes of all ranks are gathered
        "class_code_center": _within_class_spread(
            engine.gather(c), engine.gather(y_real), cae.num_classes
        ),
        # optional (not in the reference): a swap changes its individual's image only as much
        # as the class needs (the proximity term of counterfactual explanations)
        "swap_proximity": F.l1_loss(swaps, rec.detach()),
        # optional (not in the reference): a class-conditional real/fake score (projection
        # discriminator) -- the swap must look like a *real image of its class*, which a
        # pattern that merely fools the class head does not
        "conditional_adversarial": F.softplus(-_conditional_score(rf, cls, y_swap)).mean(),
        # optional (not in the reference; needs ``class_edit_mask``): the mean area of the
        # decoder's edit masks, so the class code changes a small region, not the whole image
        "edit_sparsity": edit_area,
        # optional (not in the reference): the reconstruction must keep its class for the
        # discriminator's class head, so a small class feature (a mark) is not blurred away
        # -- a counterfactual can only remove what the reconstruction shows
        "recon_class": recon_class_loss,
    }
    return terms, swaps


_G_TERMS = (
    "recon",
    "class_code",
    "individual_code",
    "cycle",
    "adversarial",
    "class",
    "code_class",
    "class_code_center",
    "swap_proximity",
    "conditional_adversarial",
    "edit_sparsity",
    "recon_class",
)


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
    engine: _Engine | None = None,
) -> dict[str, float]:
    engine = engine if engine is not None else _Engine()
    n = xa.shape[0]
    # ---------------- generator (encoders + decoder)
    with engine.autocast():
        terms, swaps = _generator_losses(
            cae, xa, xb, ya, yb, noise, gen, engine, recon_class=w["recon_class"] != 0
        )
    terms = {k: v.float() for k, v in terms.items()}
    g_total = w["recon"] * terms["recon"]
    for k in _G_TERMS[1:]:
        g_total = g_total + w[k] * terms[k]
    engine.optimise("g", g_total, opt_g, cae.generator_parameters())
    # ---------------- discriminator
    real = torch.ones(n, dtype=torch.long, device=xa.device)
    fake = torch.zeros(n, dtype=torch.long, device=xa.device)
    x = torch.cat([xa, xb])
    y_real = torch.cat([ya, yb])
    y_swap = torch.cat([yb, ya])
    discriminate = engine.net(cae, "discriminate")
    with engine.autocast():
        rf_real, cls_real = discriminate(_noisy(x, noise, gen))
        rf_fake, cls_fake = discriminate(_noisy(swaps.detach(), noise, gen))
    rf_real, cls_real, rf_fake, cls_fake = (
        t.float() for t in (rf_real, cls_real, rf_fake, cls_fake)
    )
    l_d_rf = F.cross_entropy(rf_real, torch.cat([real, real])) + F.cross_entropy(
        rf_fake, torch.cat([fake, fake])
    )
    l_d_cls = F.cross_entropy(cls_real, y_real)
    l_d_cond = (
        F.softplus(-_conditional_score(rf_real, cls_real, y_real)).mean()
        + F.softplus(_conditional_score(rf_fake, cls_fake, y_swap)).mean()
        # a real image paired with another class is "fake" too (matching-aware; under several
        # processes the pairing is within each rank's batch)
        + F.softplus(_conditional_score(rf_real, cls_real, y_real.flip(0))).mean()
    )
    d_total = w["d_real_fake"] * l_d_rf + w["d_class"] * l_d_cls + w["d_conditional"] * l_d_cond
    engine.optimise("d", d_total, opt_d, list(cae.discriminator.parameters()))
    out = {
        "g_total": g_total,
        **terms,
        "d_total": d_total,
        "d_real_fake": l_d_rf,
        "d_class": l_d_cls,
        "d_conditional": l_d_cond,
    }
    stacked = engine.reduce_values(torch.stack([v.detach() for v in out.values()]))
    vals = dict(zip(out, stacked.tolist(), strict=True))
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


def _within_class_spread(codes: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Within-class share of the class codes' total variance (0 = every class is one point).
    ``num_classes`` is given rather than read from the labels: no device sync per step."""
    total = (codes - codes.mean(0)).pow(2).sum(1).mean()
    onehot = F.one_hot(labels, num_classes).to(codes.dtype)
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
    engine: _Engine | None = None,
) -> int:
    ck = torch.load(path, map_location=dev, weights_only=True)
    cae.load_state_dict(ck["model"])
    opt_g.load_state_dict(ck["opt_g"])
    opt_d.load_state_dict(ck["opt_d"])
    gen.set_state(ck["rng"].cpu())
    history.losses = {k: list(v) for k, v in json.loads(ck["history"]).items()}
    history.seconds = float(ck["seconds"])
    for name, scaler in (engine.scalers if engine is not None else {}).items():
        if f"scaler_{name}" in ck:
            scaler.load_state_dict(ck[f"scaler_{name}"])
    step = int(ck["step"])
    history.steps = step
    return step
