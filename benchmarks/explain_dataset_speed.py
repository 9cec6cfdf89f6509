"""Explain a folder of real photos: throughput, memory, kill/resume and Ray (one run).

EfficientNet-Lite0 with its real ImageNet weights, SeCam with the default SLIC-50 superpixels
(working size 128), images resized to 224×224. The photos are random crops of the shipped
benchmark photos (``_photos.load_benchmark_photos``), written as JPEG files to a temp folder.

Measured side by side, in one run:

Steps 1–3 run ``--repeats`` times, interleaved; the medians are reported.

1. ``loop``: a plain Python loop, one image at a time: read + decode + resize the file, then
   ``SeCam.attribute(x, return_input_shape=False)`` (it segments by itself, after the CAM).
2. ``cam-only``: Captum ``LayerGradCam`` on batches from the same DataLoader workers (decode
   and resize only, no segmentation, nothing written): the cost floor of any CAM job.
3. ``explain_dataset``: the job (workers decode, resize and segment; batched SeCam; Parquet).
4. Kill at ~50 % (SIGKILL of a subprocess once half the shards are listed), rerun, compare
   with the uninterrupted output of 3: missing and duplicate ids, differing rows.
5. Peak RSS of the job at 100 and at 1000 images (fresh subprocesses: VmHWM of the main
   process, ``getrusage(RUSAGE_CHILDREN)`` of its DataLoader worker).
6. ``explain_dataset_ray`` on a local Ray instance: images/s and the largest score difference
   from 3.

Usage::

    python benchmarks/explain_dataset_speed.py              # 200 images, 1 thread, 1 worker
    python benchmarks/explain_dataset_speed.py --n 400 --skip-ray
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _photos import load_benchmark_photos

from captum_secam import SeCam
from captum_secam.dataset import (
    Normalize,
    explain_dataset,
    explain_dataset_ray,
    read_manifest,
    read_results,
)
from captum_secam.dataset.job import _keep_list, _PreparedImages
from captum_secam.dataset.schema import TIMING_COLUMNS
from captum_secam.dataset.sources import ImageSource, decode_image
from captum_secam.demo_model import load_efficientnet_lite0

PREPROCESS = Normalize(127.0, 128.0)


def _layer(model: torch.nn.Module) -> torch.nn.Module:
    """EfficientNet-Lite0's last convolutional block (1280×7×7)."""
    return cast(torch.nn.Module, model._bn1)


def write_crops(folder: str, n: int, seed: int = 0) -> None:
    """``n`` random crops (40–100 % of each side) of the benchmark photos, as JPEG files."""
    rng = np.random.default_rng(seed)
    photos = [p for _, p in load_benchmark_photos()]
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        photo = photos[int(rng.integers(len(photos)))]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.4, 1.0)), int(w * rng.uniform(0.4, 1.0))
        r0, c0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = photo[r0 : r0 + ch, c0 : c0 + cw]
        Image.fromarray(crop).save(os.path.join(folder, f"crop_{i:05d}.jpg"), quality=90)


def run_loop(folder: str, model: torch.nn.Module) -> float:
    """Images/s of a plain loop over SeCam.attribute, one image at a time."""
    files = sorted(os.listdir(folder))
    secam = SeCam(model, _layer(model))
    start = time.perf_counter()
    for name in files:
        with open(os.path.join(folder, name), "rb") as handle:
            photo, _ = decode_image(handle.read(), 224)
        secam.attribute(PREPROCESS(photo)[None], return_input_shape=False)
    return len(files) / (time.perf_counter() - start)


def run_cam_only(folder: str, model: torch.nn.Module, workers: int, batch: int) -> float:
    """Images/s of batched LayerGradCam on DataLoader batches (decode + resize, no segments)."""
    from captum.attr import LayerAttribution, LayerGradCam

    source = ImageSource.from_input(folder)
    loader = torch.utils.data.DataLoader(
        _PreparedImages(source, 224, PREPROCESS, None),
        batch_size=batch,
        num_workers=workers,
        collate_fn=_keep_list,
    )
    cam = LayerGradCam(model, _layer(model))
    start = time.perf_counter()
    for items in loader:
        x = torch.stack([item.inputs for item in items])
        # One forward + one backward per batch, like SeCam (a fixed target: no extra pass).
        maps = cam.attribute(x, target=0)
        LayerAttribution.interpolate(maps.detach(), (224, 224), "bilinear")
    return len(source) / (time.perf_counter() - start)


def job_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "preprocess": PREPROCESS,
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "shard_size": args.shard_size,
    }


_CHILD = """
import json, resource, sys, time, torch
# ru_maxrss survives fork+exec (it would report the benchmark's own peak): reset the
# high-water mark and read VmHWM instead.
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
sys.path.insert(0, {bench!r})
torch.set_num_threads({threads})
from captum_secam.dataset import Normalize, explain_dataset
from captum_secam.demo_model import load_efficientnet_lite0
model = load_efficientnet_lite0()
images = {images!r}
summary = explain_dataset(images, model, {out!r}, layer=model._bn1,
                          preprocess=Normalize(127.0, 128.0), batch_size={batch},
                          num_workers={workers}, shard_size={shard})
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0]
print(json.dumps({{
    "self_kb": int(hwm.split()[1]),
    "children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    "seconds": summary.seconds, "n": summary.n_explained}}))
"""


def child(args: argparse.Namespace, images: Any, out: str) -> subprocess.Popen[str]:
    code = _CHILD.format(
        bench=os.path.dirname(os.path.abspath(__file__)),
        threads=args.threads,
        images=images,
        out=out,
        batch=args.batch_size,
        workers=args.workers,
        shard=args.shard_size,
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
    )


def kill_and_resume(args: argparse.Namespace, folder: str, out: str, reference: Any) -> dict:
    """SIGKILL a job once half of its shards are listed, resume it, compare."""
    proc = child(args, folder, out)
    n_shards = -(-args.n // args.shard_size)
    listed = 0
    while proc.poll() is None:
        try:
            listed = len(read_manifest(out)["shards"])
        except (FileNotFoundError, json.JSONDecodeError):
            listed = 0
        if listed >= n_shards // 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    killed_at = len(read_manifest(out)["shards"])
    model = load_efficientnet_lite0()
    explain_dataset(folder, model, out, layer=_layer(model), **job_kwargs(args))
    resumed = read_results(out)
    ids = resumed.column("id").to_pylist()
    a = resumed.drop_columns(list(TIMING_COLUMNS)).to_pylist()
    b = reference.drop_columns(list(TIMING_COLUMNS)).to_pylist()
    return {
        "killed_with_shards": f"{killed_at}/{n_shards}",
        "missing": len(set(range(args.n)) - set(ids)),
        "duplicates": len(ids) - len(set(ids)),
        "rows_differing": sum(x != y for x, y in zip(a, b, strict=False)) + abs(len(a) - len(b)),
    }


def peak_rss(args: argparse.Namespace, folder: str, n: int, tmp: str) -> dict[str, float]:
    files = [os.path.join(folder, f) for f in sorted(os.listdir(folder))[:n]]
    proc = child(args, files, os.path.join(tmp, f"rss_{n}"))
    stdout, _ = proc.communicate()
    result = json.loads(stdout.strip().splitlines()[-1])
    return {
        "main_mb": result["self_kb"] / 1024,
        "worker_mb": result["children_kb"] / 1024,
        "images_per_s": result["n"] / result["seconds"],
    }


def run_ray(args: argparse.Namespace, folder: str, out: str, reference: Any) -> dict[str, float]:
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        model = load_efficientnet_lite0()
        summary = explain_dataset_ray(
            folder,
            model,
            out,
            layer=_layer(model),
            preprocess=PREPROCESS,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            num_threads=args.threads,
        )
    finally:
        ray.shutdown()
    ours = read_results(out).to_pylist()
    ref = reference.to_pylist()
    worst = max(
        float(np.abs(np.subtract(a["scores"], b["scores"])).max())
        for a, b in zip(ours, ref, strict=True)
        if a["status"] == "ok"
    )
    return {"images_per_s": summary.images_per_second, "max_score_diff": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="images (default 200)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers (default 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved throughput runs")
    parser.add_argument("--rss-sizes", type=int, nargs=2, default=(100, 1000))
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="explain_dataset_speed_")
    folder = os.path.join(tmp, "photos")
    write_crops(folder, args.n)
    model = load_efficientnet_lite0()
    print(
        f"{args.n} JPEG crops in {folder}; torch threads {args.threads}, "
        f"workers {args.workers}, batch {args.batch_size}, {os.cpu_count()} CPUs"
    )

    results: dict[str, Any] = {"load_average_start": os.getloadavg()[0]}
    speeds: dict[str, list[float]] = {"loop": [], "cam_only": [], "job": []}
    for repeat in range(args.repeats):  # interleaved, so drifting load hits all three alike
        speeds["loop"].append(run_loop(folder, model))
        speeds["cam_only"].append(run_cam_only(folder, model, args.workers, args.batch_size))
        out = os.path.join(tmp, f"job{repeat}")
        summary = explain_dataset(folder, model, out, layer=_layer(model), **job_kwargs(args))
        speeds["job"].append(summary.images_per_second)
    results["images_per_s_runs"] = speeds
    for name, values in speeds.items():
        results[f"{name}_images_per_s"] = float(np.median(values))
    reference = read_results(os.path.join(tmp, "job0"))
    shards = [f for f in os.listdir(os.path.join(tmp, "job0")) if f.endswith(".parquet")]
    size = sum(os.path.getsize(os.path.join(tmp, "job0", f)) for f in shards)
    results["parquet_bytes_per_image"] = size / args.n
    timings = reference.select(["decode_ms", "segment_ms", "explain_ms"]).to_pandas().median()
    results["median_ms"] = {k: round(float(v), 2) for k, v in timings.items()}
    results["job_vs_loop"] = results["job_images_per_s"] / results["loop_images_per_s"]
    results["job_vs_cam_only"] = results["job_images_per_s"] / results["cam_only_images_per_s"]
    results["kill_resume"] = kill_and_resume(args, folder, os.path.join(tmp, "killed"), reference)
    if not args.skip_memory:
        small_n, large_n = args.rss_sizes
        big = os.path.join(tmp, "photos_rss")
        write_crops(big, large_n, seed=1)
        small_rss = peak_rss(args, big, small_n, tmp)
        large_rss = peak_rss(args, big, large_n, tmp)
        results["rss_100"], results["rss_1000"] = small_rss, large_rss
        results["rss_ratio_main"] = large_rss["main_mb"] / small_rss["main_mb"]
        results["rss_ratio_worker"] = large_rss["worker_mb"] / small_rss["worker_mb"]
    if not args.skip_ray:
        results["ray"] = run_ray(args, folder, os.path.join(tmp, "ray"), reference)
    results["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
