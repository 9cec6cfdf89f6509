"""SeCam speed and memory against Captum LayerGradCam, Captum Lime and the ``lime`` package.

Measures, in one run, on a 224×224 input with ``torch.set_num_threads(2)``:

(a) SeCam with its default segmentation (``captum_secam.secam.DEFAULT_SEGMENTATION``,
    segmentation included) — plus its parts: segmentation alone and SeCam on a given mask;
(b) Captum ``LayerGradCam`` + ``LayerAttribution.interpolate`` to 224×224;
(c) Captum ``Lime`` (via ``captum_secam.interop.captum_attribute``: weighted-ridge surrogate,
    ``perturbations_per_eval=16``) with ``--lime-samples`` samples on the same superpixels;
(d) the ``lime`` package's ``LimeImageExplainer`` with the same samples and superpixels
    (``segmentation_fn`` returns our mask, ``batch_size=16``, ``hide_color=0``);
(e) SeCam on a batch of 16 images versus 16 single-image calls (per-image cost);
(f) peak memory of SeCam versus LayerGradCam for 1 and 16 images: torch tensor allocations
    from the PyTorch profiler's memory events (``profile_memory=True``; peak of the running
    sum of allocations and frees during the call) plus numpy/Python allocations from
    ``tracemalloc`` (SLIC's working arrays live there);
(g) SLIC at ``working_size=128`` versus full 224×224 resolution: time and the adjusted Rand
    index (scikit-learn) between the two labelings.

Models: EfficientNet-Lite0 with its real ImageNet weights (layer ``_bn1``) and torchvision
ResNet-50 with random weights (``weights=None``, layer ``layer4``; the cost does not depend on the
weights). Photos: ``benchmarks/_photos.py`` (scikit-image, scikit-learn and matplotlib sample
photos and crops of them; all offline).

Run it under the shared CPU lock::

    flock /tmp/captum_secam_cpu.lock python benchmarks/secam_speed.py --images 12 --lime-images 2

Each timing is the median over images of the per-image median over ``--repeats`` calls, methods
interleaved image by image so that background load affects them alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _photos import load_benchmark_photos

from captum_secam import SeCam, segment
from captum_secam.demo_model import preprocess_photo, resize_photo
from captum_secam.secam import DEFAULT_SEGMENTATION

SIZE = 224


# --------------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------------


def load_models(which: list[str]) -> dict[str, tuple[nn.Module, nn.Module]]:
    models: dict[str, tuple[nn.Module, nn.Module]] = {}
    if "efficientnet" in which:
        from captum_secam.demo_model import load_efficientnet_lite0

        model = load_efficientnet_lite0()
        models["EfficientNet-Lite0"] = (model, model._bn1)
    if "resnet50" in which:
        from torchvision.models import resnet50

        torch.manual_seed(0)
        model = resnet50(weights=None).eval()
        models["ResNet-50 (random weights)"] = (model, model.layer4)
    return models


def load_inputs(n_images: int) -> tuple[list[str], list[np.ndarray], Tensor]:
    photos = load_benchmark_photos(n_images)
    names = [name for name, _ in photos]
    small = [resize_photo(photo, SIZE) for _, photo in photos]
    batch = torch.cat([preprocess_photo(photo, SIZE) for photo in small])
    return names, small, batch


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def median_of_medians(samples: dict[str, list[list[float]]]) -> dict[str, float]:
    return {k: statistics.median(statistics.median(r) for r in v) for k, v in samples.items()}


def fmt_s(seconds: float) -> str:
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.1f} ms"


def fmt_mb(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f} MiB"


# --------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------


def gradcam_fn(model: nn.Module, layer: nn.Module) -> Callable[[Tensor, Any], Tensor]:
    from captum.attr import LayerAttribution, LayerGradCam

    gradcam = LayerGradCam(model, layer)

    def run(x: Tensor, target: Any) -> Tensor:
        cam = gradcam.attribute(x, target=target)
        return LayerAttribution.interpolate(cam, (SIZE, SIZE), "bilinear").detach()

    return run


def lime_package_scores(
    model: nn.Module, photo: np.ndarray, mask: Tensor, target: int, samples: int, seed: int
) -> np.ndarray:
    from lime.lime_image import LimeImageExplainer

    labels = mask[0, 0].cpu().numpy()

    def classifier_fn(images: np.ndarray) -> np.ndarray:
        x = (torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2) - 127.0) / 128.0
        with torch.no_grad():
            return model(x).softmax(dim=1).numpy()

    explainer = LimeImageExplainer(random_state=seed)
    explanation = explainer.explain_instance(
        photo.astype(np.float64),
        classifier_fn,
        labels=(target,),
        top_labels=None,
        hide_color=0,
        num_samples=samples,
        batch_size=16,
        segmentation_fn=lambda _image: labels,
        random_seed=seed,
    )
    scores = np.zeros(int(labels.max()) + 1)
    for segment_id, weight in explanation.local_exp[target]:
        scores[segment_id] = weight
    return scores


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


def peak_memory(fn: Callable[[], Any]) -> tuple[int, int]:
    """(torch allocation peak, tracemalloc peak) in bytes above the level at the call's start."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up (lazy initialisation is not the method's memory)
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    _, numpy_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()  # type: ignore[union-attr]
        if e.name() == "[memory]"
    ]
    events.sort()
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak, max(0, numpy_peak - base)


# --------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------


def bench_model(
    label: str,
    model: nn.Module,
    layer: nn.Module,
    small: list[np.ndarray],
    batch: Tensor,
    args: argparse.Namespace,
) -> dict[str, Any]:
    from captum_secam.interop.captum_methods import captum_attribute

    secam = SeCam(model, layer)
    gradcam = gradcam_fn(model, layer)
    with torch.no_grad():
        targets = model(batch).argmax(dim=1)
    n_images = min(args.images, batch.shape[0])

    # Warm-up: first calls pay for lazy initialisation (oneDNN kernels, thread pools).
    for _ in range(2):
        secam.attribute(batch[:1], target=int(targets[0]))
        gradcam(batch[:1], int(targets[0]))

    samples: dict[str, list[list[float]]] = {
        "secam": [],
        "segmentation": [],
        "secam_given_mask": [],
        "gradcam": [],
        "forward": [],
    }
    for i in range(n_images):
        x, t = batch[i : i + 1], int(targets[i])
        per: dict[str, list[float]] = {k: [] for k in samples}
        for _ in range(args.repeats):
            per["gradcam"].append(timed(gradcam, x, t))
            per["secam"].append(timed(secam.attribute, x, target=t))
            start = time.perf_counter()
            mask = segment(x, **DEFAULT_SEGMENTATION)
            per["segmentation"].append(time.perf_counter() - start)
            per["secam_given_mask"].append(timed(secam.attribute, x, target=t, feature_mask=mask))
            with torch.no_grad():
                per["forward"].append(timed(model, x))
        for k in samples:
            samples[k].append(per[k])
    result: dict[str, Any] = median_of_medians(samples)
    result["n_images"] = n_images

    # (e) batch of 16 vs 16 single calls.
    n_batch = min(16, batch.shape[0])
    xb, tb = batch[:n_batch], targets[:n_batch]
    secam.attribute(xb, target=tb)  # warm-up at this batch size
    batch_times, single_times = [], []
    for _ in range(args.repeats):
        batch_times.append(timed(lambda: secam.attribute(xb, target=tb)) / n_batch)
        single_times.append(
            timed(
                lambda: [secam.attribute(xb[j : j + 1], target=int(tb[j])) for j in range(n_batch)]
            )
            / n_batch
        )
    result["batch_per_image"] = statistics.median(batch_times)
    result["single_per_image"] = statistics.median(single_times)
    result["n_batch"] = n_batch

    # (f) peak memory.
    memory: dict[int, dict[str, tuple[int, int]]] = {}
    for n in sorted({1, n_batch}):
        xm, tm = batch[:n], targets[:n]
        memory[n] = {
            "secam": peak_memory(lambda xm=xm, tm=tm: secam.attribute(xm, target=tm)),
            "gradcam": peak_memory(lambda xm=xm, tm=tm: gradcam(xm, tm)),
        }
    result["memory"] = memory

    # (c), (d) LIME at --lime-samples on the same superpixels.
    lime_c: list[float] = []
    lime_p: list[float] = []
    for i in range(min(args.lime_images, batch.shape[0])):
        x, t = batch[i : i + 1], int(targets[i])
        mask = segment(x, **DEFAULT_SEGMENTATION)
        if not args.skip_captum_lime:
            lime_c.append(
                timed(
                    captum_attribute,
                    "lime",
                    model,
                    x,
                    mask,
                    target=t,
                    n_samples=args.lime_samples,
                    perturbations_per_eval=16,
                    seed=i,
                )
            )
        if not args.skip_lime_package:
            lime_p.append(
                timed(lime_package_scores, model, small[i], mask, t, args.lime_samples, seed=i)
            )
        print(
            f"  [{label}] LIME image {i}: captum {lime_c[-1] if lime_c else float('nan'):.1f} s,"
            f" lime package {lime_p[-1] if lime_p else float('nan'):.1f} s",
            flush=True,
        )
    result["lime_captum"] = statistics.median(lime_c) if lime_c else None
    result["lime_package"] = statistics.median(lime_p) if lime_p else None
    result["lime_n"] = max(len(lime_c), len(lime_p))
    return result


def bench_working_size(batch: Tensor, repeats: int) -> dict[str, float]:
    from sklearn.metrics import adjusted_rand_score

    # Full resolution with scikit-image's own SLIC iterations: what the default approximates.
    full_params = {
        k: v for k, v in DEFAULT_SEGMENTATION.items() if k not in ("working_size", "max_num_iter")
    }
    full_t, small_t, ari_small, ari_ref, k_full, k_small = [], [], [], [], [], []
    for i in range(batch.shape[0]):
        x = batch[i : i + 1]
        t_full, t_small = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            full = segment(x, **full_params)
            t_full.append(time.perf_counter() - start)
            start = time.perf_counter()
            small = segment(x, **DEFAULT_SEGMENTATION)
            t_small.append(time.perf_counter() - start)
        # Reference scale: the same full-resolution SLIC asked for 10 % fewer segments.
        other = segment(x, **{**full_params, "n_segments": int(full_params["n_segments"] * 0.9)})
        full_t.append(statistics.median(t_full))
        small_t.append(statistics.median(t_small))
        a, b, c = (m.reshape(-1).numpy() for m in (full, small, other))
        ari_small.append(adjusted_rand_score(a, b))
        ari_ref.append(adjusted_rand_score(a, c))
        k_full.append(int(full.max()) + 1)
        k_small.append(int(small.max()) + 1)
    return {
        "full": statistics.median(full_t),
        "small": statistics.median(small_t),
        "ari": statistics.median(ari_small),
        "ari_min": min(ari_small),
        "ari_ref": statistics.median(ari_ref),
        "k_full": statistics.median(k_full),
        "k_small": statistics.median(k_small),
    }


def print_report(
    results: dict[str, dict[str, Any]], seg: dict[str, float], args: argparse.Namespace
) -> None:
    print()
    print(
        f"224×224, torch threads {torch.get_num_threads()}, torch {torch.__version__}; "
        f"timings: median over images of the median of {args.repeats} calls; "
        f"LIME: {args.lime_samples} samples, median over {args.lime_images} image(s)."
    )
    print()
    names = list(results)
    print("| measurement | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))

    def row(title: str, cells: list[str]) -> None:
        print(f"| {title} | " + " | ".join(cells) + " |")

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}×" if a is not None and b else "—"

    r = results
    row("images timed", [str(r[n]["n_images"]) for n in names])
    row("forward pass only", [fmt_s(r[n]["forward"]) for n in names])
    row("(b) Captum LayerGradCam + interpolate", [fmt_s(r[n]["gradcam"]) for n in names])
    row("(a) SeCam, default segmentation included", [fmt_s(r[n]["secam"]) for n in names])
    row("  SLIC alone (working_size=128)", [fmt_s(r[n]["segmentation"]) for n in names])
    row("  SeCam on a given mask", [fmt_s(r[n]["secam_given_mask"]) for n in names])
    row(
        "**SeCam / LayerGradCam** (bar ≤ 1.5×)",
        [f"**{ratio(r[n]['secam'], r[n]['gradcam'])}**" for n in names],
    )
    row(
        f"(c) Captum Lime, {args.lime_samples} samples",
        [fmt_s(r[n]["lime_captum"]) if r[n]["lime_captum"] else "—" for n in names],
    )
    row(
        f"(d) lime package, {args.lime_samples} samples",
        [fmt_s(r[n]["lime_package"]) if r[n]["lime_package"] else "—" for n in names],
    )
    row(
        "**Captum Lime / SeCam** (bar ≥ 300×)",
        [
            f"**{r[n]['lime_captum'] / r[n]['secam']:.0f}×**" if r[n]["lime_captum"] else "—"
            for n in names
        ],
    )
    row(
        "**lime package / SeCam** (bar ≥ 300×)",
        [
            f"**{r[n]['lime_package'] / r[n]['secam']:.0f}×**" if r[n]["lime_package"] else "—"
            for n in names
        ],
    )
    row(
        "(e) SeCam per image, batch of 16",
        [fmt_s(r[n]["batch_per_image"]) for n in names],
    )
    row("(e) SeCam per image, 16 single calls", [fmt_s(r[n]["single_per_image"]) for n in names])
    row(
        "**batch / single per image** (bar < 1)",
        [f"**{ratio(r[n]['batch_per_image'], r[n]['single_per_image'])}**" for n in names],
    )
    for n_mem in sorted(next(iter(results.values()))["memory"]):
        hw = n_mem * SIZE * SIZE
        row(
            f"(f) peak torch memory, N={n_mem}: LayerGradCam",
            [fmt_mb(r[n]["memory"][n_mem]["gradcam"][0]) for n in names],
        )
        row(
            f"(f) peak torch memory, N={n_mem}: SeCam",
            [fmt_mb(r[n]["memory"][n_mem]["secam"][0]) for n in names],
        )
        row(
            f"(f) SeCam − LayerGradCam, N={n_mem} (in units of N·H·W·4 bytes)",
            [
                f"{(r[n]['memory'][n_mem]['secam'][0] - r[n]['memory'][n_mem]['gradcam'][0]) / (4 * hw):+.1f}"  # noqa: E501
                for n in names
            ],
        )
        row(
            f"(f) peak numpy/Python memory (tracemalloc), N={n_mem}: SeCam / LayerGradCam",
            [
                f"{fmt_mb(r[n]['memory'][n_mem]['secam'][1])} / "
                f"{fmt_mb(r[n]['memory'][n_mem]['gradcam'][1])}"
                for n in names
            ],
        )
    print()
    print(
        f"(g) SLIC {DEFAULT_SEGMENTATION['n_segments']} segments on 224×224 inputs "
        f"({args.images} images): full resolution {fmt_s(seg['full'])}, working_size=128 "
        f"{fmt_s(seg['small'])} ({seg['full'] / seg['small']:.1f}× faster); segments "
        f"{seg['k_full']:.0f} vs {seg['k_small']:.0f}; adjusted Rand index full vs 128: median "
        f"{seg['ari']:.3f} (min {seg['ari_min']:.3f}); for scale, full resolution with 10 % "
        f"fewer requested segments vs full: {seg['ari_ref']:.3f}."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=12, help="images for (a), (b), (g)")
    parser.add_argument("--lime-images", type=int, default=2, help="images for (c), (d)")
    parser.add_argument("--lime-samples", type=int, default=1000, help="LIME samples")
    parser.add_argument("--repeats", type=int, default=3, help="calls per image and method")
    parser.add_argument(
        "--models",
        nargs="+",
        default=["efficientnet", "resnet50"],
        choices=["efficientnet", "resnet50"],
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-captum-lime", action="store_true")
    parser.add_argument("--skip-lime-package", action="store_true")
    args = parser.parse_args(argv)
    if args.images < 1 or args.lime_images < 0 or args.lime_samples < 1 or args.repeats < 1:
        parser.error("--images, --lime-samples and --repeats must be >= 1, --lime-images >= 0")

    torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    names, small, batch = load_inputs(max(args.images, 16))
    print(f"photos: {', '.join(names)}", flush=True)
    results = {}
    for label, (model, layer) in load_models(args.models).items():
        print(f"benchmarking {label} ...", flush=True)
        results[label] = bench_model(label, model, layer, small, batch, args)
    seg = bench_working_size(batch[: args.images], args.repeats)
    print_report(results, seg, args)
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
