"""Data-parallel CAE training with ``torch.distributed`` (``torchrun --nproc_per_node=N``).

Every process holds the whole model, trains on its slice of each step's global batch (see
:class:`~captum_secam.cae.data.ClassPairBatchSampler`) and averages the gradients of every
parameter with an all-reduce before each optimiser step -- the synchronisation of
``DistributedDataParallel``. The ``DistributedDataParallel`` wrapper itself is not used: a CAE
step calls the encoders, the decoder and the discriminator several times and steps two
optimisers, which the wrapper's one-forward-one-backward contract does not fit.

With equal per-rank batches, a mean over each rank's batch averaged over the ranks is the mean
over the global batch, so N ranks × batch B follow 1 process × batch N·B. The one batch
statistic of the objective (the within-class spread of the class codes) is computed on the
class codes gathered from all ranks with a gather whose backward sums the gradients, which
again gives the single-process gradient after averaging. The networks use instance and group
normalisation only (per image), so no ``SyncBatchNorm`` is needed.

Rank 0 writes checkpoints, logs and the progress bar; all ranks read a checkpoint to resume,
whatever the world size was when it was written.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistributedContext",
    "average_gradients",
    "broadcast_module",
    "gather_with_grad",
    "init_distributed",
    "mean_across_ranks",
]


@dataclass(frozen=True)
class DistributedContext:
    """The process group as training sees it (``world_size == 1``: a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints and logs (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether more than one process trains."""
        return self.world_size > 1

    @classmethod
    def current(cls) -> DistributedContext:
        """The initialised default process group, or a single process when there is none."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return cls(dist.get_rank(), dist.get_world_size(), local)


def init_distributed(backend: str | None = None) -> DistributedContext:
    """Initialise the default process group from ``torchrun``'s environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``...); a no-op for a plain ``python`` run.

    The backend defaults to NCCL when CUDA is available, gloo otherwise; on CUDA, each process
    uses the GPU ``LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        return DistributedContext.current()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistributedContext()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return DistributedContext.current()


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy every parameter and buffer of rank ``src`` to the other ranks."""
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src)


def average_gradients(params: Iterable[nn.Parameter], world_size: int) -> None:
    """Replace each ``.grad`` by its mean over the ranks (one flattened all-reduce).

    Parameters without a gradient keep none (every rank runs the same graph, so the set is
    the same on all ranks): Adam then skips them, as it does in one process.
    """
    ps = [p for p in params if p.grad is not None]
    if not ps:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in ps if p.grad is not None])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in ps:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def mean_across_ranks(values: Tensor) -> Tensor:
    """The mean over the ranks of a float tensor (for logged losses)."""
    out = values.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.n = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)  # every rank's loss depends on every rank's slice
        n = ctx.n
        rank = dist.get_rank()
        return total[rank * n : (rank + 1) * n]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` (equal first dimension on every rank) from all ranks, rank order.

    The backward sums the gradients of all ranks for this rank's slice, so a loss computed on
    the gathered tensor by every rank, with gradients averaged afterwards
    (:func:`average_gradients`), gets the gradient of the same loss in one process.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out: Tensor = _GatherWithGrad.apply(x)
    return out
