"""Data-parallel CAE training: 2 gloo processes × batch B equal 1 process × batch 2B.

Real ``torch.distributed`` (gloo, two processes started with ``torch.multiprocessing.spawn``),
no mocks. The two runs see the same samples (the class-pairing sampler draws one global batch
per step and gives each rank its slice), so after 5 steps their weights agree to float
round-off; a checkpoint written by the 2-process run resumes in one process.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch.utils.data import TensorDataset

from captum_secam.cae import ClassAssociationEmbedding, train_cae
from captum_secam.cae.distributed import DistributedContext, gather_with_grad

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH = 4  # per rank
KW = dict(
    seed=3,
    progress=False,
    use_loader=True,
    discriminator_warmup=2,
    lr=1e-3,
    lr_schedule="constant",
    centroid_samples=None,
)


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    y = torch.arange(40) % 3
    x = 0.1 * torch.rand(40, 1, 16, 16, generator=g)
    for i in range(40):
        r = int(y[i]) * 5
        x[i, 0, r : r + 4, 2:14] += 0.8
    return TensorDataset(x.clamp(0, 1), y)


def _cae(seed: int = 0, dtype: torch.dtype = torch.float64) -> ClassAssociationEmbedding:
    torch.manual_seed(seed)
    cae = ClassAssociationEmbedding(
        16, 1, 3, class_code_dim=4, base_channels=4, mlp_dim=8, disc_channels=4
    )
    return cae.to(dtype)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, out: str, steps: int, dtype: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ctx = DistributedContext.current()
        assert (ctx.rank, ctx.world_size, ctx.is_main) == (rank, world, rank == 0)
        # the gather's backward sums every rank's gradient for this rank's slice
        x = torch.full((2,), float(rank + 1), requires_grad=True)
        (gather_with_grad(x) ** 2).sum().backward()
        assert torch.equal(x.grad, torch.full((2,), 2.0 * (rank + 1) * world))  # type: ignore[arg-type]
        # different initial weights on rank 1: rank 0's are broadcast
        cae = _cae(0 if rank == 0 else 100, getattr(torch, dtype))
        hist = train_cae(
            cae,
            _data(),
            steps=steps,
            batch_size=BATCH,
            checkpoint_dir=Path(out) / "ckpt",
            **KW,  # type: ignore[arg-type]
        )
        state = {k: v.contiguous() for k, v in cae.state_dict().items()}
        save_file(state, str(Path(out) / f"rank{rank}.safetensors"))
        if rank == 0:
            info = {"losses": hist.losses, "training_info": cae.training_info}
            (Path(out) / "history.json").write_text(json.dumps(info))
    finally:
        dist.destroy_process_group()


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    # fork: the children need not import torch again (spawn costs ~10 s on a busy machine)
    mp.start_processes(
        _worker,
        args=(2, _free_port(), str(out), 5, "float64"),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    return out


def test_two_ranks_equal_one_process_with_twice_the_batch(two_rank_run: Path) -> None:
    ranks = [load_file(str(two_rank_run / f"rank{r}.safetensors")) for r in (0, 1)]
    assert _max_diff(ranks[0], ranks[1]) == 0.0  # the ranks stay in lock step
    single = _cae()
    hist = train_cae(single, _data(), steps=5, batch_size=2 * BATCH, **KW)  # type: ignore[arg-type]
    state = single.state_dict()
    assert _max_diff(ranks[0], state) <= 1e-5
    # the weights did move (the comparison is not between two untrained models)
    assert _max_diff(state, _cae().state_dict()) > 1e-3
    doc = json.loads((two_rank_run / "history.json").read_text())
    # the logged losses are the means over both ranks = the single process's losses
    for k in ("recon", "class_code_center", "d_total"):
        assert doc["losses"][k] == pytest.approx(hist.losses[k], rel=1e-4, abs=1e-6), k
    assert doc["losses"]["d_warmup_class"] == pytest.approx(hist.losses["d_warmup_class"], rel=1e-4)
    info = doc["training_info"]
    assert info["world_size"] == 2 and info["global_batch_size"] == 2 * BATCH
    assert info["sampler"] == "sampler"
    torch.testing.assert_close(
        torch.tensor(single.centroids.tolist()), torch.tensor(single.centroids.tolist())
    )


def test_a_two_rank_checkpoint_resumes_in_one_process(two_rank_run: Path, tmp_path: Path) -> None:
    """Resume across a change of world size: 2 ranks × 4 for 5 steps, then 1 process × 8
    for 2 more steps, equals 1 process × 8 for 7 steps."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "cae_training_checkpoint.pt").write_bytes(
        (two_rank_run / "ckpt" / "cae_training_checkpoint.pt").read_bytes()
    )
    resumed = _cae()
    h_res = train_cae(
        resumed,
        _data(),
        steps=7,
        batch_size=2 * BATCH,
        checkpoint_dir=ckpt,
        **KW,  # type: ignore[arg-type]
    )
    full = _cae()
    h_full = train_cae(full, _data(), steps=7, batch_size=2 * BATCH, **KW)  # type: ignore[arg-type]
    assert h_res.steps == 7 and len(h_res.losses["recon"]) == 7
    assert _max_diff(resumed.state_dict(), full.state_dict()) <= 1e-5
    assert h_res.losses["recon"][5:] == pytest.approx(h_full.losses["recon"][5:], rel=1e-4)
