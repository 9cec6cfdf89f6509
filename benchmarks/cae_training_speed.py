"""CAE training speed: loader workers vs the in-process reader, channels-last, torch.compile,
DDP equivalence, and the FLOP-based projection of the ``paper`` preset at 256².

Data: a file-based ImageFolder of PNGs written to a temporary folder from Fashion-MNIST
(T-shirt vs coat, upsampled to 9/8 of the training size and stored as RGB), read with
resize + random crop + random flip augmentation (:func:`captum_secam.cae.data.image_folder`).

For each size (64², 128²; 3 channels, batch 16) it trains a few steps of

* ``in-process``: today's path (``num_workers=0``): the main process decodes, augments and
  stacks the images between steps;
* ``workers``: the class-pairing sampler through a DataLoader with ``--workers`` workers;
* ``workers + channels-last`` and (64² only, ``--compile``) ``workers + torch.compile``;

and reports the median step time (the first step, with worker start-up and compilation, is
left out), steps/s relative to ``in-process``, and the fraction of the step time spent waiting
for data, measured inside the training loop (``history.step_times``).

Then two gloo processes × batch 4 against one process × batch 8 (5 steps, same samples): the
max parameter difference, in float64 and in float32. Finally the FLOPs of one training step
of the ``paper`` preset at 256² (``FlopCounterMode`` on the meta device, no compute) and the
projected time of a paper-size run (200k steps, batch 1).

Run: ``python benchmarks/cae_training_speed.py`` (one thread for torch; about 10 minutes on
a 2-core machine at the default width 8, see ``--width``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _fashion_pngs(root: Path, size: int, per_class: int) -> None:
    """T-shirt (0) vs coat (4) test images as RGB PNGs of ``size·9/8`` px."""
    from PIL import Image

    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    stored = size * 9 // 8
    for name, k in (("tshirt", 0), ("coat", 4)):
        (root / name).mkdir(parents=True)
        for i, idx in enumerate(np.nonzero(labels == k)[0][:per_class]):
            img = Image.fromarray(images[idx]).resize((stored, stored), Image.BILINEAR)
            img.convert("RGB").save(root / name / f"{i:04d}.png")


def _cae(size: int, width: int) -> Any:
    from captum_secam.cae import ClassAssociationEmbedding

    torch.manual_seed(0)
    return ClassAssociationEmbedding(
        size, 3, 2, base_channels=width, disc_channels=width, mlp_dim=64
    )


class _CpuClock:
    """A monitor that notes the main process's CPU time after every step: on a shared
    machine, CPU seconds per step are what a configuration costs, whatever the contention."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_start(self, step: int) -> None:
        self.marks.append(time.process_time())

    def on_step(self, step: int, losses: Any, cae: Any) -> bool:
        self.marks.append(time.process_time())
        return False

    def on_end(self, step: int, cae: Any) -> None: ...


def _run(ds: Any, size: int, width: int, steps: int, **kw: Any) -> dict[str, float]:
    from captum_secam.cae import train_cae

    cae = _cae(size, width)
    clock = _CpuClock()
    t = time.perf_counter()
    hist = train_cae(
        cae,
        ds,
        steps=steps,
        batch_size=16,
        discriminator_warmup=0,
        progress=False,
        centroid_samples=32,
        monitor=clock,  # type: ignore[arg-type]
        **kw,
    )
    total = time.perf_counter() - t
    timed = hist.step_times[1:]  # the first step pays for worker start-up / compilation
    step = statistics.median(s for s, _ in timed)
    wait = sum(w for _, w in timed) / sum(s for s, _ in timed)
    cpu = statistics.median(b - a for a, b in zip(clock.marks[1:-1], clock.marks[2:], strict=True))
    return {
        "step_s": step,
        "cpu_s": cpu,
        "wait": wait,
        "first_s": hist.step_times[0][0],
        "total_s": total,
    }


def speed(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    from captum_secam.cae.data import image_folder

    rows = []
    for size in (64, 128):
        root = tmp / f"fashion{size}"
        _fashion_pngs(root, size, per_class=120)
        ds = image_folder(root, size, channels=3, augment=True)
        labels = torch.tensor(ds.targets)
        configs: list[tuple[str, dict[str, Any]]] = [
            ("in-process (today)", {}),
            (f"{args.workers} workers", {"num_workers": args.workers}),
            ("workers + channels-last", {"num_workers": args.workers, "channels_last": True}),
        ]
        if args.compile and size == 64:  # compiling takes minutes here: one size
            configs.append(("workers + compile", {"num_workers": args.workers, "compile": True}))
        base: dict[str, float] = {}
        for name, kw in configs:
            steps = args.steps + (2 if kw.get("compile") else 0)
            r = _run(ds, size, args.width, steps, labels=labels, **kw)
            base = base or r
            rows.append(
                {
                    "size": size,
                    "config": name,
                    **r,
                    "speedup_wall": base["step_s"] / r["step_s"],
                    "speedup_cpu": base["cpu_s"] / r["cpu_s"],
                }
            )
            print(
                f"{size:4d}²  {name:24s} wall {r['step_s']:6.2f} s/step ({1 / r['step_s']:.3f} "
                f"steps/s, x{base['step_s'] / r['step_s']:4.2f})  main-process CPU "
                f"{r['cpu_s']:6.2f} s/step (x{base['cpu_s'] / r['cpu_s']:4.2f})  data wait "
                f"{100 * r['wait']:4.1f} %  first step {r['first_s']:5.1f} s  [median of "
                f"{steps - 1}]",
                flush=True,
            )
    return rows


# ---------------------------------------------------------------- DDP equivalence
def _ddp_data() -> Any:
    g = torch.Generator().manual_seed(1)
    y = torch.arange(40) % 3
    x = 0.1 * torch.rand(40, 1, 16, 16, generator=g)
    for i in range(40):
        x[i, 0, int(y[i]) * 5 : int(y[i]) * 5 + 4, 2:14] += 0.8
    return torch.utils.data.TensorDataset(x.clamp(0, 1), y)


def _ddp_cae(dtype: torch.dtype) -> Any:
    from captum_secam.cae import ClassAssociationEmbedding

    torch.manual_seed(0)
    cae = ClassAssociationEmbedding(
        16, 1, 3, class_code_dim=4, base_channels=4, mlp_dim=8, disc_channels=4
    )
    return cae.to(dtype)


_DDP_KW = dict(seed=3, progress=False, use_loader=True, discriminator_warmup=2, lr=1e-3)


def _ddp_worker(rank: int, port: int, out: str, dtype: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    from captum_secam.cae import train_cae

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        cae = _ddp_cae(getattr(torch, dtype))
        train_cae(cae, _ddp_data(), steps=5, batch_size=4, **_DDP_KW)  # type: ignore[arg-type]
        if rank == 0:
            state = {k: v.contiguous() for k, v in cae.state_dict().items()}
            save_file(state, f"{out}/{dtype}.safetensors")
    finally:
        dist.destroy_process_group()


def ddp(tmp: Path) -> dict[str, float]:
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    from captum_secam.cae import train_cae

    out = {}
    for dtype in ("float64", "float32"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(
            _ddp_worker, args=(port, str(tmp), dtype), nprocs=2, join=True, start_method="fork"
        )
        two = load_file(f"{tmp}/{dtype}.safetensors")
        one = _ddp_cae(getattr(torch, dtype))
        train_cae(one, _ddp_data(), steps=5, batch_size=8, **_DDP_KW)  # type: ignore[arg-type]
        diffs = {
            k: float((v.double() - two[k].double()).abs().max())
            for k, v in one.state_dict().items()
        }
        # biases of convolutions followed by instance norm: the output does not depend on them
        # (true gradient 0), so Adam's steps on their round-off gradients are noise
        cancelled = [
            k
            for k in diffs
            if k.endswith(".bias")
            and k.startswith(("individual_encoder.", "decoder.res.", "decoder.up_convs."))
        ]
        out[dtype] = max(diffs.values())
        out[f"{dtype}_other"] = max(v for k, v in diffs.items() if k not in cancelled)
        worst = max((v, k) for k, v in diffs.items() if k not in cancelled)
        print(
            f"DDP 2 gloo ranks x 4 vs 1 process x 8, 5 steps, {dtype}: max |Δparam| "
            f"{out[dtype]:.3g} (all), {out[f'{dtype}_other']:.3g} (without the biases that "
            f"instance norm cancels; largest: {worst[1]})",
            flush=True,
        )
    return out


# ---------------------------------------------------------------- paper preset FLOPs
def paper_flops() -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from captum_secam.cae import ClassAssociationEmbedding, get_preset
    from captum_secam.cae.training import _Engine, _generator_losses

    with torch.device("meta"):
        cae = ClassAssociationEmbedding.from_config(get_preset("paper").model_config(256, 3, 2))
        xa, xb = torch.rand(1, 3, 256, 256), torch.rand(1, 3, 256, 256)
        ya, yb = torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:  # one training step, batch 1: generator and discriminator passes
        terms, swaps = _generator_losses(cae, xa, xb, ya, yb, 0.0, None, _Engine())
        torch.stack(list(terms.values())).sum().backward()
        rf_r, cls_r = cae.discriminate(torch.cat([xa, xb]))
        rf_f, cls_f = cae.discriminate(swaps.detach())
        (rf_r.sum() + cls_r.sum() + rf_f.sum() + cls_f.sum()).backward()
    return float(counter.get_total_flops())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4, help="steps per config (first not timed)")
    p.add_argument("--width", type=int, default=8, help="base_channels = disc_channels")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ddp", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} torch thread(s), {os.cpu_count()} CPU cores "
        f"(shared with other jobs: timings include contention), CUDA: "
        f"{torch.cuda.is_available()}; width {args.width}, batch 16, {args.steps} steps/config",
        flush=True,
    )
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.ddp:
            results["ddp"] = ddp(Path(tmp))
        results["speed"] = speed(args, Path(tmp))
    flops = paper_flops()
    run = 200_000 * flops
    results["paper_flops_per_step"] = flops
    print(
        f"paper preset, 256², batch 1: {flops / 1e12:.2f} TFLOP per training step; "
        f"200k steps = {run / 1e18:.2f} EFLOP"
    )
    for tflops in (25, 50, 100, 200):
        print(f"  at {tflops:3d} TFLOP/s sustained: {run / (tflops * 1e12) / 3600:6.1f} h")
    cpu = [r for r in results["speed"] if r["config"].startswith("in-process")]
    if cpu:
        print(
            "  (no GPU is lent to this run; the CPU here trains the width-"
            f"{args.width} model at {1 / cpu[0]['step_s']:.2f} steps/s at 64²)"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
