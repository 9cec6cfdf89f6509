"""Reproduce the SeCAM paper's Table II on real photos (issue 5, item 2).

Rows = photos, columns = methods, each panel titled with the method's wall time:

* LIME (``lime`` package, 1000 samples, the same SLIC superpixels, gray ``hide_color``), showing
  its 2 and 4 best segments (one LIME run feeds both columns, so they share its time);
* Grad-CAM (Captum ``LayerGradCam`` on ``model._bn1``, ReLU, bilinear upsampling);
* SeCam (``SeCam(model, model._bn1).attribute(x, target)``, library defaults, segmentation
  included in its time) with ``select_top_k`` (2 and 4 segments) and ``select_threshold``
  (80 % and 60 % of the best segment's score); a panel's time is the attribution plus the
  selection.

Model: EfficientNet-Lite0 with real ImageNet weights; target = predicted class. A faithfulness
table (pixel insertion / deletion AUC and AOPC, gray fill, the protocol of
``secam_faithfulness.py``) is written for each attribution method.

Outputs: ``benchmarks/results/paper_table.png`` and ``benchmarks/results/paper_table.md``.

Run (under the shared CPU lock; per-photo results are cached in /tmp/research_cache so the run
can be split into several lock holds with --photos and finished with --render)::

    flock /tmp/captum_secam_cpu.lock python benchmarks/paper_table.py            # all 10 photos
    flock /tmp/captum_secam_cpu.lock python benchmarks/paper_table.py --photos 0:5
    flock /tmp/captum_secam_cpu.lock python benchmarks/paper_table.py --photos 5:10
    python benchmarks/paper_table.py --render                                   # figure + tables
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _photos import load_benchmark_photos
from secam_faithfulness import (
    CACHE_DIR,
    LIME_SAMPLES,
    LIME_SEED,
    N_STEPS,
    RESULTS_DIR,
    Sample,
    _mask_digest,
    faithfulness,
    paint,
    prepare,
    run_lime,
)

from captum_secam import SeCam, segment, select_threshold, select_top_k
from captum_secam.demo_model import imagenet_class_names, load_efficientnet_lite0
from captum_secam.secam import DEFAULT_SEGMENTATION
from captum_secam.segmentation import segment_means

N_PHOTOS = 10
COLUMNS = (
    "LIME 2 seg",
    "LIME 4 seg",
    "Grad-CAM",
    "SeCam 2 seg",
    "SeCam 4 seg",
    "SeCam 80 %",
    "SeCam 60 %",
)


def _result_path(name: str) -> str:
    return os.path.join(CACHE_DIR, f"paper_{name}_{LIME_SAMPLES}.npz")


def explain_photo(model: torch.nn.Module, sample: Sample) -> dict[str, Any]:
    """Run and time the three methods on one photo; return maps, regions, times, metrics."""
    from captum.attr import LayerAttribution, LayerGradCam

    x, target = sample.x, sample.target

    # --- LIME: segmentation inside its time, like SeCam's.
    def segmentation_fn(_image: np.ndarray) -> np.ndarray:
        return segment(x, **DEFAULT_SEGMENTATION)[0, 0].numpy()

    lime_weights, lime_s = run_lime(model, sample, LIME_SAMPLES, segmentation_fn=segmentation_fn)
    # Share LIME-1000 with the faithfulness study's cache (same mask, seed and settings).
    cache = os.path.join(
        CACHE_DIR,
        f"lime_{sample.name}_{LIME_SAMPLES}_{LIME_SEED}_{_mask_digest(sample.mask)}.json",
    )
    if not os.path.exists(cache):
        os.makedirs(CACHE_DIR, exist_ok=True)
        with open(cache, "w") as fh:
            json.dump({"target": target, "weights": lime_weights.tolist(), "seconds": lime_s}, fh)
    lime_scores = torch.from_numpy(lime_weights)[None]

    # --- Grad-CAM (Captum), upsampled to the input.
    gradcam = LayerGradCam(model, model._bn1)  # type: ignore[arg-type]
    start = time.perf_counter()
    cam = gradcam.attribute(x, target=target, relu_attributions=True)
    cam = LayerAttribution.interpolate(cam, (224, 224), "bilinear").detach()
    gradcam_s = time.perf_counter() - start

    # --- SeCam with the library defaults (it segments by itself, after the CAM).
    secam = SeCam(model, model._bn1)  # type: ignore[arg-type]
    start = time.perf_counter()
    secam_attr = secam.attribute(x, target=target)
    secam_s = time.perf_counter() - start
    assert isinstance(secam_attr, torch.Tensor)
    secam_scores = segment_means(secam_attr, sample.mask)
    # SeCam's own segmentation must be the shared one (constant on sample.mask's segments).
    tol = 1e-4 * float(secam_attr.abs().max())
    if not torch.allclose(paint(secam_scores[0], sample.mask).float(), secam_attr[:, :1], atol=tol):
        raise RuntimeError("SeCam's internal segmentation differs from the shared mask")

    regions: dict[str, np.ndarray] = {}
    region_s: dict[str, float] = {}
    for label, fn in (
        ("LIME 2 seg", lambda: select_top_k(lime_scores, sample.mask, 2)),
        ("LIME 4 seg", lambda: select_top_k(lime_scores, sample.mask, 4)),
        ("SeCam 2 seg", lambda: select_top_k(secam_attr, sample.mask, 2)),
        ("SeCam 4 seg", lambda: select_top_k(secam_attr, sample.mask, 4)),
        ("SeCam 80 %", lambda: select_threshold(secam_attr, sample.mask, 0.8)),
        ("SeCam 60 %", lambda: select_threshold(secam_attr, sample.mask, 0.6)),
    ):
        start = time.perf_counter()
        regions[label] = fn()[0, 0].numpy()
        region_s[label] = time.perf_counter() - start

    metrics = {
        "LIME-1000": faithfulness(model, sample, paint(lime_weights, sample.mask)),
        "Grad-CAM": faithfulness(model, sample, cam),
        "SeCam": faithfulness(model, sample, secam_attr),
    }
    times = {
        "LIME 2 seg": lime_s + region_s["LIME 2 seg"],
        "LIME 4 seg": lime_s + region_s["LIME 4 seg"],
        "Grad-CAM": gradcam_s,
        **{k: secam_s + region_s[k] for k in COLUMNS if k.startswith("SeCam")},
        "_lime": lime_s,
        "_secam": secam_s,
    }
    return {
        "name": sample.name,
        "target": target,
        "prob": sample.prob,
        "photo224": sample.photo224,
        "mask": sample.mask[0, 0].numpy(),
        "cam": cam[0, 0].numpy(),
        "regions": regions,
        "times": times,
        "metrics": metrics,
    }


def save_result(result: dict[str, Any]) -> None:
    os.makedirs(CACHE_DIR, exist_ok=True)
    arrays = {f"region::{k}": v for k, v in result["regions"].items()}
    meta = {k: result[k] for k in ("name", "target", "prob", "times", "metrics")}
    np.savez_compressed(
        _result_path(result["name"]),
        photo224=result["photo224"],
        mask=result["mask"],
        cam=result["cam"],
        meta=np.array(json.dumps(meta)),
        **arrays,
    )


def load_result(name: str) -> dict[str, Any] | None:
    path = _result_path(name)
    if not os.path.exists(path):
        return None
    data = np.load(path)
    meta = json.loads(str(data["meta"]))
    meta["photo224"] = data["photo224"]
    meta["mask"] = data["mask"]
    meta["cam"] = data["cam"]
    meta["regions"] = {k.split("::", 1)[1]: data[k] for k in data.files if k.startswith("region")}
    return meta


def _fmt_time(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def render(results: list[dict[str, Any]], out_png: str) -> None:
    """The figure grid: rows = photos, columns = methods; panels titled with the time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries
    from skimage.transform import resize

    names = imagenet_class_names()
    thumb = 96  # display size: keeps the PNG small
    n_rows, n_cols = len(results), 1 + len(COLUMNS)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.2 * n_cols, 1.45 * n_rows), squeeze=False)
    for row, res in enumerate(results):
        photo = resize(res["photo224"], (thumb, thumb), preserve_range=True, anti_aliasing=True)
        photo = photo.astype(np.float64) / 255.0
        ax = axes[row, 0]
        ax.imshow(photo)
        label = names[res["target"]].split(",")[0][:16]
        ax.set_title(f"{res['name'][:18]}\n{label} ({res['prob']:.2f})", fontsize=5.5)
        for col, method in enumerate(COLUMNS, start=1):
            ax = axes[row, col]
            if method == "Grad-CAM":
                cam = resize(res["cam"], (thumb, thumb), preserve_range=True)
                cam = cam / cam.max() if cam.max() > 0 else cam
                ax.imshow(photo)
                ax.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            else:
                region = resize(res["regions"][method].astype(float), (thumb, thumb), order=0) > 0.5
                shown = photo * (0.25 + 0.75 * region[..., None])
                edge = find_boundaries(region, mode="inner")
                shown[edge] = (1.0, 0.9, 0.0)
                ax.imshow(shown)
            ax.set_title(f"{method}\n{_fmt_time(res['times'][method])}", fontsize=5.5)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.3 / n_rows, bottom=0.01, hspace=0.45)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    # A 256-colour palette keeps the grid well under 1 MB.
    from PIL import Image

    Image.open(out_png).convert("RGB").quantize(colors=256).save(out_png, optimize=True)


def _stats(values: list[float]) -> str:
    return (
        f"{statistics.mean(values):.3f} | {statistics.median(values):.3f} | "
        f"{min(values):.3f}–{max(values):.3f}"
    )


def write_markdown(
    results: list[dict[str, Any]], out_md: str, wall_s: float | None, note: str = ""
) -> str:
    names = imagenet_class_names()
    lines = [
        "# SeCAM paper Table II on real photos (EfficientNet-Lite0, 2-core CPU)",
        "",
        "Generated by `benchmarks/paper_table.py`; figure: `paper_table.png`. Superpixels: "
        f"`{DEFAULT_SEGMENTATION}` (shared by LIME and SeCam). LIME: `lime` package, "
        f"{LIME_SAMPLES} samples, gray hide_color. Grad-CAM: Captum `LayerGradCam` on "
        "`model._bn1`. SeCam: library defaults on `model._bn1`. Times are wall-clock on the "
        "shared 2-core CPU with `torch.set_num_threads(2)` (other agents' jobs may share the "
        "cores, so absolute times are noisy; ratios come from the same run).",
        "",
        "## Photos and the model's top-1 class",
        "",
        "| # | photo | top-1 class | p |",
        "|---|---|---|---|",
    ]
    for i, res in enumerate(results):
        lines.append(f"| {i} | {res['name']} | {names[res['target']]} | {res['prob']:.3f} |")
    lines += [
        "",
        "## Time per explanation (seconds)",
        "",
        "| method | mean | median | min–max |",
        "|---|---|---|---|",
    ]
    lime_t = [r["times"]["_lime"] for r in results]
    lime_name = f"LIME-{LIME_SAMPLES}"
    cam_t = [r["times"]["Grad-CAM"] for r in results]
    secam_t = [r["times"]["_secam"] for r in results]
    lines.append(f"| {lime_name} (incl. segmentation) | {_stats(lime_t)} |")
    lines.append(f"| Grad-CAM | {_stats(cam_t)} |")
    lines.append(f"| SeCam (incl. segmentation) | {_stats(secam_t)} |")
    ratio = [s / lt for s, lt in zip(secam_t, lime_t, strict=True)]
    lines += [
        "",
        f"SeCam time / {lime_name} time: median {statistics.median(ratio) * 100:.2f} % "
        f"(range {min(ratio) * 100:.2f}–{max(ratio) * 100:.2f} %). Region selection "
        "(`select_top_k` / `select_threshold`) adds well under a millisecond.",
        "",
        f"## Faithfulness (pixel granularity, gray fill, {N_STEPS} steps, softmax of the "
        "predicted class)",
        "",
        "Insertion AUC: higher is better; deletion AUC: lower is better; AOPC (deletion): "
        "higher is better. Mean | median | min–max over the photos.",
        "",
        "| method | insertion mean | median | range | deletion mean | median | range | "
        "AOPC mean | median | range |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in ("LIME-1000", "Grad-CAM", "SeCam"):
        cells = [
            _stats([r["metrics"][method][m] for r in results])
            for m in ("insertion", "deletion", "aopc")
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Per photo (insertion / deletion / AOPC):", ""]
    lines.append("| photo | LIME-1000 | Grad-CAM | SeCam |")
    lines.append("|---|---|---|---|")
    for r in results:
        cells = [
            "{insertion:.3f} / {deletion:.3f} / {aopc:.3f}".format(**r["metrics"][m])
            for m in ("LIME-1000", "Grad-CAM", "SeCam")
        ]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    if wall_s is not None:
        lines += ["", f"Total wall time of the computing runs: {wall_s:.0f} s."]
    if note:
        lines += ["", note]
    text = "\n".join(lines) + "\n"
    with open(out_md, "w") as fh:
        fh.write(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description="SeCAM paper Table II on real photos")
    parser.add_argument("--photos", default=f"0:{N_PHOTOS}", help="slice of the photo set")
    parser.add_argument("--render", action="store_true", help="only draw from cached results")
    parser.add_argument("--note", default="", help="a sentence appended to the Markdown")
    parser.add_argument(
        "--partial", action="store_true", help="render the photos done so far (says so)"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    start_all = time.perf_counter()
    model = load_efficientnet_lite0()
    photos = load_benchmark_photos(N_PHOTOS)
    a, b = (int(v) for v in args.photos.split(":"))
    runtime_path = os.path.join(CACHE_DIR, "paper_runtime.json")
    if not args.render:
        # Warm up the gradient paths once (first-call overheads are not the methods' cost).
        from captum.attr import LayerGradCam

        warm = prepare(model, *photos[a])
        warm_cam = LayerGradCam(model, model._bn1)  # type: ignore[arg-type]
        warm_cam.attribute(warm.x, target=warm.target)
        SeCam(model, model._bn1).attribute(warm.x, target=warm.target)  # type: ignore[arg-type]
        for name, photo in photos[a:b]:
            t0 = time.perf_counter()
            sample = prepare(model, name, photo)
            result = explain_photo(model, sample)
            save_result(result)
            print(
                f"{name}: {imagenet_class_names()[sample.target]} "
                f"LIME {result['times']['_lime']:.1f}s "
                f"SeCam {result['times']['_secam'] * 1000:.0f}ms "
                f"({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
        runtimes = {}
        if os.path.exists(runtime_path):
            with open(runtime_path) as fh:
                runtimes = json.load(fh)
        runtimes[args.photos] = time.perf_counter() - start_all
        with open(runtime_path, "w") as fh:
            json.dump(runtimes, fh)
    results = [load_result(name) for name, _ in photos]
    done = [r for r in results if r is not None]
    if len(done) < len(photos) and not args.partial:
        print(f"{len(done)}/{len(photos)} photos done; run the rest, then --render")
        return
    wall = None
    if os.path.exists(runtime_path):
        with open(runtime_path) as fh:
            wall = sum(json.load(fh).values())
    os.makedirs(RESULTS_DIR, exist_ok=True)
    render(done, os.path.join(RESULTS_DIR, "paper_table.png"))
    print(write_markdown(done, os.path.join(RESULTS_DIR, "paper_table.md"), wall, args.note))


if __name__ == "__main__":
    main()
