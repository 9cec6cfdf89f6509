"""Command line: ``captum-secam explain IMAGE``, ``captum-secam demo`` and ``captum-secam cae``.

``explain`` and ``demo`` run SeCam, Captum's LayerGradCam, Lime and KernelShap on one photo with
the pretrained EfficientNet-Lite0 (the ``demo`` extra) and write one PNG comparing them on the
same superpixels, each panel with its wall time. ``cae`` explains one shipped Fashion-MNIST test
image of a binary task (``coats`` or ``planted``) with the CAE counterfactual and writes
:func:`~captum_secam.cae.figures.plot_counterfactual`'s figure.

Each subcommand is one ``_add_<name>`` function (arguments) plus one ``_run_<name>`` function
(work), registered in :data:`_SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from captum_secam._cli_types import non_negative_int, positive_int
from captum_secam.cae.command import add_train_cae
from captum_secam.dataset.command import add_explain_dataset

__all__ = ["ExplainResult", "build_parser", "explain_photo", "main"]

EXPLAIN_METHODS = ("secam", "gradcam", "lime", "kernelshap")
DEFAULT_SAMPLES = 200
DEFAULT_N_SEGMENTS = 50
DEFAULT_TOP_K = 4
# Figure timings: one untimed warm-up call per method (first-call costs such as lazy imports
# and allocator warm-up are not the method's), then the median of this many timed calls.
TIMED_REPEATS = 3
WARM_UP_SAMPLES = 10  # Lime/KernelShap warm up with a few samples and are timed once
TIMING_NOTE = f"warm timings: first call excluded, median of {TIMED_REPEATS}"


def timing_note(methods: Sequence[str]) -> str:
    """The figure's and printout's note on how the listed methods were timed."""
    if any(m in ("lime", "kernelshap") for m in methods):
        return TIMING_NOTE + " (Lime/KernelShap: one run after a warm-up)"
    return TIMING_NOTE


DEMO_PHOTO = "chelsea"
_TITLES = {
    "secam": "SeCam",
    "gradcam": "Captum LayerGradCam",
    "lime": "Captum Lime",
    "kernelshap": "Captum KernelShap",
}


@dataclass
class ExplainResult:
    """What :func:`explain_photo` computed (tensors are 1×C×H×W or 1×1×H×W)."""

    out: str
    target: int
    class_name: str
    probability: float
    feature_mask: Any
    attributions: dict[str, Any] = field(default_factory=dict)
    regions: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    segmentation_time: float = 0.0
    timing_note: str = TIMING_NOTE


class _UsageError(ValueError):
    """A bad argument found after parsing (reported through ``parser.error``)."""


def _time_warm(
    call: Callable[[], Any], repeats: int, warm_up: Callable[[], Any] | None = None
) -> tuple[Any, float]:
    """Run ``warm_up`` (default: ``call``) untimed, then ``call`` ``repeats`` times.

    Returns the last result and the median wall time in seconds of the timed calls.
    """
    (warm_up or call)()
    seconds = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - start)
    return result, sorted(seconds)[len(seconds) // 2]


def _resolve_target(target: str | None, class_names: Sequence[str]) -> int | None:
    if target is None:
        return None
    if target.lstrip("-").isdigit():
        index = int(target)
        if not 0 <= index < len(class_names):
            raise _UsageError(
                f"--target {index} is out of range; ImageNet classes are 0..{len(class_names) - 1}"
            )
        return index
    matches = [i for i, name in enumerate(class_names) if name.lower() == target.lower()]
    if not matches:
        raise _UsageError(
            f"--target {target!r} is neither a class index nor an ImageNet class name "
            "(e.g. 285 or 'Egyptian cat')"
        )
    return matches[0]


def explain_photo(
    image: str,
    methods: Sequence[str] = EXPLAIN_METHODS,
    n_segments: int = DEFAULT_N_SEGMENTS,
    top_k: int = DEFAULT_TOP_K,
    samples: int = DEFAULT_SAMPLES,
    out: str | None = None,
    target: str | int | None = None,
    seed: int = 0,
) -> ExplainResult:
    """Explain one photo with the demo model and write the comparison figure.

    Args:
        image: Path to an image file or a scikit-image sample name (chelsea, astronaut,
            coffee, rocket).
        methods: Any of ``secam``, ``gradcam``, ``lime``, ``kernelshap``.
        n_segments: SLIC superpixels (shared by SeCam, Lime and KernelShap).
        top_k: Segments shown in each region panel.
        samples: Perturbations for Lime and KernelShap.
        out: Output PNG (default ``secam_<image name>.png``).
        target: ImageNet class index or name (default: the predicted class).
        seed: Seed for Lime and KernelShap sampling.

    Returns:
        An :class:`ExplainResult` with the maps, regions, timings and the output path.
    """
    import torch

    from captum_secam.demo_model import (
        imagenet_class_names,
        load_efficientnet_lite0,
        load_photo,
        preprocess_photo,
        resize_photo,
    )

    unknown = [m for m in methods if m not in EXPLAIN_METHODS]
    if unknown:
        raise _UsageError(f"unknown method(s) {unknown}; choose from {EXPLAIN_METHODS}")
    names = imagenet_class_names()
    target_index = _resolve_target(str(target), names) if target is not None else None
    photo = resize_photo(load_photo(image))
    x = preprocess_photo(photo)
    model = load_efficientnet_lite0()
    with torch.no_grad():
        probabilities = model(x).softmax(dim=1)[0]
    if target_index is None:
        target_index = int(probabilities.argmax())
    class_name = names[target_index]

    mask, seg_time = _segment_timed(x, n_segments)
    n_found = int(mask.max()) + 1
    if top_k > n_found:
        raise _UsageError(
            f"--top-k {top_k} but SLIC found only {n_found} superpixels; lower --top-k or "
            "raise --n-segments"
        )

    attributions, regions, timings = _explain_timed(
        model, x, mask, target_index, methods, samples, seed, top_k, seg_time
    )
    result = ExplainResult(
        out=out if out is not None else f"secam_{_stem(image)}.png",
        target=target_index,
        class_name=class_name,
        probability=float(probabilities[target_index]),
        feature_mask=mask,
        attributions=attributions,
        regions=regions,
        timings=timings,
        segmentation_time=seg_time,
        timing_note=timing_note(methods),
    )
    _write_figure(result, photo, samples, top_k)
    return result


def _segment_timed(x: Any, n_segments: int) -> tuple[Any, float]:
    """SLIC superpixels of ``x`` (SeCam's default settings) and their warm wall time."""
    from captum_secam import segment
    from captum_secam.secam import DEFAULT_SEGMENTATION

    params = {**DEFAULT_SEGMENTATION, "n_segments": n_segments}
    return _time_warm(lambda: segment(x, **params), TIMED_REPEATS)


def _explain_timed(
    model: Any,
    x: Any,
    mask: Any,
    target_index: int,
    methods: Sequence[str],
    samples: int,
    seed: int,
    top_k: int,
    seg_time: float,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """Each method's map, top-k region and warm wall time, keyed by its figure title.

    SeCam's time includes the segmentation it needs; Grad-CAM has no segments, so no region.
    """
    import torch
    from captum.attr import LayerAttribution, LayerGradCam

    from captum_secam import SeCam, select_top_k
    from captum_secam.interop.captum_methods import captum_attribute

    layer = cast(torch.nn.Module, model._bn1)
    attributions: dict[str, Any] = {}
    regions: dict[str, Any] = {}
    timings: dict[str, float] = {}
    secam, grad_cam = SeCam(model, layer), LayerGradCam(model, layer)

    def run_secam() -> Any:
        return secam.attribute(x, target=target_index, feature_mask=mask)

    def run_grad_cam() -> Any:
        cam = grad_cam.attribute(x, target=target_index)
        return LayerAttribution.interpolate(cam, tuple(x.shape[2:]), "bilinear").detach()

    def run_sampler(method: str, n_samples: int) -> Any:
        return captum_attribute(
            method,  # type: ignore[arg-type]
            model,
            x,
            mask,
            target=target_index,
            n_samples=n_samples,
            return_input_shape=True,
            seed=seed,
        )

    for method in methods:
        if method == "secam":
            attr, elapsed = _time_warm(run_secam, TIMED_REPEATS)
            elapsed += seg_time
        elif method == "gradcam":
            attr, elapsed = _time_warm(run_grad_cam, TIMED_REPEATS)
        else:
            attr, elapsed = _time_warm(
                lambda: run_sampler(method, samples),  # noqa: B023 (called right here)
                1,
                warm_up=lambda: run_sampler(method, min(samples, WARM_UP_SAMPLES)),  # noqa: B023
            )
        attributions[_TITLES[method]] = attr
        timings[_TITLES[method]] = elapsed
        if method != "gradcam":
            regions[_TITLES[method]] = select_top_k(attr, mask, top_k)
    return attributions, regions, timings


def _write_figure(result: ExplainResult, photo: Any, samples: int, top_k: int) -> None:
    """The comparison figure of ``result``, each map titled with its wall time."""
    from captum_secam.visualization import plot_method_grid

    titles = {
        "Captum Lime": f"Captum Lime ({samples} samples)",
        "Captum KernelShap": f"Captum KernelShap ({samples} samples)",
    }
    timings, seg_time = result.timings, result.segmentation_time
    labels: dict[str, float | str] = dict(timings)
    if "SeCam" in labels:
        labels["SeCam"] = (
            f"{timings['SeCam'] * 1000:.0f} ms incl. {seg_time * 1000:.0f} ms segmentation"
        )
    n_found = int(result.feature_mask.max()) + 1
    figure = plot_method_grid(
        photo,
        result.feature_mask,
        result.attributions,
        titles=titles,
        timings=labels,
        regions=result.regions,
        region_label=f"top {top_k} segments",
        suptitle=(
            f"EfficientNet-Lite0: {result.class_name} (class {result.target}, "
            f"p = {result.probability:.2f}); top-{top_k} of {n_found} superpixels"
            f"\n{result.timing_note}"
        ),
    )
    figure.savefig(result.out, dpi=110)


def _stem(image: str) -> str:
    base = os.path.splitext(os.path.basename(image))[0]
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in base) or "image"


def _report(result: ExplainResult) -> None:
    print(f"wrote {result.out}")
    print(
        f"predicted class: {result.class_name} (ImageNet {result.target}, "
        f"p = {result.probability:.3f})"
    )
    print(
        f"superpixels: {int(result.feature_mask.max()) + 1} "
        f"(segmentation {result.segmentation_time * 1000:.0f} ms)"
    )
    print(f"{result.timing_note}:")
    for name, seconds in result.timings.items():
        note = " (incl. segmentation)" if name == "SeCam" else ""
        print(f"  {name:<20} {seconds * 1000:9.0f} ms{note}")


# --------------------------------------------------------------------------------------------
# Subcommands: one _add_* (arguments) and one _run_* (work) each
# --------------------------------------------------------------------------------------------


def _image_argument(text: str) -> str:
    from captum_secam.demo_model import sample_photo_names

    if text in sample_photo_names() or os.path.isfile(text):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is neither an image file nor a sample photo name "
        f"({', '.join(sample_photo_names())})"
    )


def _add_explain(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="explain one photo with SeCam, Grad-CAM, Lime and KernelShap",
        description=(
            "Explain IMAGE with the pretrained EfficientNet-Lite0 and write one PNG: the photo, "
            "its SLIC superpixels, and each method's map (SeCam, Captum LayerGradCam, Captum "
            "Lime and KernelShap on the same superpixels) with its top-k segments and wall "
            f"time. With the defaults (--method all, --samples {DEFAULT_SAMPLES}) it finishes "
            "in under a minute on 2 CPU cores (about 25 s measured, model loading included); "
            "Lime and KernelShap take nearly all of it, SeCam about 0.1 s."
        ),
    )
    parser.add_argument(
        "image",
        metavar="IMAGE",
        type=_image_argument,
        help="image file path, or a scikit-image sample: chelsea, astronaut, coffee, rocket",
    )
    parser.add_argument(
        "--method",
        choices=(*EXPLAIN_METHODS, "all"),
        default="all",
        help="which explanation to compute (default: all)",
    )
    parser.add_argument(
        "--n-segments",
        type=positive_int,
        default=DEFAULT_N_SEGMENTS,
        help=f"approximate number of SLIC superpixels (default: {DEFAULT_N_SEGMENTS})",
    )
    parser.add_argument(
        "--top-k",
        type=positive_int,
        default=DEFAULT_TOP_K,
        help=f"segments shown in the region panels (default: {DEFAULT_TOP_K})",
    )
    parser.add_argument(
        "--samples",
        type=positive_int,
        default=DEFAULT_SAMPLES,
        help=(
            f"perturbations for Lime and KernelShap (default: {DEFAULT_SAMPLES}, a few seconds "
            "each; 1000 is the usual LIME setting and takes ~5x longer)"
        ),
    )
    parser.add_argument(
        "--out", metavar="FILE", help="output PNG (default: secam_<IMAGE name>.png)"
    )
    parser.add_argument(
        "--target",
        metavar="CLASS",
        help="ImageNet class index or name to explain (default: the predicted class)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for Lime/KernelShap sampling (default: 0)"
    )
    parser.set_defaults(handler=_run_explain, subparser=parser)


def _run_explain(args: argparse.Namespace) -> int:
    methods = EXPLAIN_METHODS if args.method == "all" else (args.method,)
    result = explain_photo(
        args.image,
        methods=methods,
        n_segments=args.n_segments,
        top_k=args.top_k,
        samples=args.samples,
        out=args.out,
        target=args.target,
        seed=args.seed,
    )
    _report(result)
    return 0


def _add_demo(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help=f"explain the '{DEMO_PHOTO}' sample photo with every method",
        description=(
            f"Run 'explain {DEMO_PHOTO}' with the defaults (SeCam, Grad-CAM, Lime, KernelShap; "
            "under a minute on 2 CPU cores) and write the figure."
        ),
    )
    parser.add_argument(
        "--out", metavar="FILE", default="secam_demo.png", help="output PNG (default: %(default)s)"
    )
    parser.set_defaults(handler=_run_demo, subparser=parser)


def _run_demo(args: argparse.Namespace) -> int:
    result = explain_photo(DEMO_PHOTO, out=args.out)
    _report(result)
    return 0


CAE_TASKS = ("coats", "planted")  # captum_secam.cae.fashion_mnist.PRETRAINED_TASKS (kept
# here so that building the parser does not import torch; a test checks they agree)
CAE_TASK_HELP = {
    "coats": "Fashion-MNIST 'Pullover' (0) vs 'Coat' (1)",
    "planted": "garments, 'mark' (1) = a planted 6x6 mark vs 'no mark' (0)",
}


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from err
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _confidence(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected a probability in [0, 1) or 'none', got {text!r}"
        ) from err
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(
            f"expected a probability in [0, 1) or 'none', got {text!r}; 'none' (or 0) only asks "
            "the prediction to differ from the explained class"
        )
    return value


def _add_cae(subparsers: Any) -> None:
    tasks = "; ".join(f"{name}: {text}" for name, text in CAE_TASK_HELP.items())
    parser = subparsers.add_parser(
        "cae",
        help="explain a shipped Fashion-MNIST test image with the CAE counterfactual",
        description=(
            "Explain one of the 100 shipped test images of a binary task with the Class "
            "Association Embedding counterfactual (shipped classifier and CAE; no download; a "
            "few seconds on a CPU) and write a figure: original, reconstruction, "
            "counterfactual, saliency, and the images decoded along the class-code path. "
            f"Tasks: {tasks}. Prints one line: explained class -> counterfactual class, its "
            "probability, and whether the decision flipped."
        ),
    )
    parser.add_argument(
        "--task", choices=CAE_TASKS, default="coats", help="binary task (default: %(default)s)"
    )
    parser.add_argument(
        "--index",
        type=non_negative_int,
        default=0,
        help="index of the task's shipped test image, 0..99 (default: 0)",
    )
    parser.add_argument(
        "--path",
        choices=("linear", "gradient"),
        default="linear",
        help="class-code path: straight line to the other class's centroid, or gradient "
        "descent through the decoder (default: %(default)s)",
    )
    parser.add_argument(
        "--t-end",
        type=_positive_float,
        default=None,
        metavar="T",
        help="path length in units of the distance to the counterfactual centroid "
        "(default: 2 for the linear path, 3 for the gradient path)",
    )
    parser.add_argument(
        "--min-confidence",
        type=_confidence,
        default=0.6,
        metavar="P",
        help="probability the other class must reach for a flip, in [0, 1), or 'none' "
        "(any other prediction counts; default: %(default)s)",
    )
    parser.add_argument(
        "--fit-steps",
        type=non_negative_int,
        default=30,
        metavar="N",
        help="steps fitting the individual code to the image (decoder gradients only on the "
        "linear path) when the reconstruction is not classified as the explained class "
        "(default: %(default)s; 0: no fit)",
    )
    parser.add_argument(
        "--target",
        metavar="CLASS",
        help="class to explain, id or name, e.g. 1 or 'Coat' (default: the prediction)",
    )
    parser.add_argument(
        "--counterfactual-target",
        metavar="CLASS",
        help="class to move toward, id or name (default: the other class)",
    )
    parser.add_argument(
        "--out",
        metavar="FILE",
        default="cae_explanation.png",
        help="output PNG (default: %(default)s)",
    )
    parser.set_defaults(handler=_run_cae, subparser=parser)


def _run_cae(args: argparse.Namespace) -> int:
    import torch

    from captum_secam.cae.fashion_mnist import (
        _class_id,
        _explain_sample,
        load_pretrained,
        sample_task,
    )

    classifier, cae = load_pretrained(args.task)
    sample = sample_task(args.task)
    n = len(sample)
    if args.index >= n:
        raise _UsageError(
            f"--index {args.index} is out of range; task {args.task!r} ships {n} test images: "
            f"use 0..{n - 1}"
        )
    names = cae.class_names
    try:
        target = _class_id(args.target, names, "--target")
        counterfactual = _class_id(args.counterfactual_target, names, "--counterfactual-target")
    except ValueError as err:
        raise _UsageError(str(err)) from err
    if counterfactual is not None:
        if target is None:
            with torch.no_grad():
                x = sample.images[args.index : args.index + 1]
                explained = int(classifier(x).argmax(1))
            why = f"the classifier's prediction on image {args.index}, explained by default"
        else:
            explained, why = target, "--target"
        if counterfactual == explained:
            raise _UsageError(
                f"--counterfactual-target {names[counterfactual]!r} is the explained class "
                f"({why}); move toward another class or pass another --target"
            )
    result = _explain_sample(
        args.index,
        args.out,
        task=args.task,
        target=target,
        counterfactual_target=counterfactual,
        path=args.path,
        t_end=args.t_end,
        min_confidence=args.min_confidence,
        fit_steps=args.fit_steps,
        n_path_images=6,
        classifier=classifier,
        cae=cae,
        image=None,
        label=None,
    )
    print(_cae_summary(args, result.explanation, result.class_names, result.label))
    print(f"wrote {result.out}")
    return 0


def _cae_summary(
    args: argparse.Namespace, res: Any, names: Sequence[str], label: int | None
) -> str:
    """One line: explained class -> counterfactual class (probability), flipped or not."""
    tgt, cft = int(res.target[0]), int(res.counterfactual_target[0])
    pred, rec = int(res.counterfactual_prediction[0]), int(res.reconstruction_prediction[0])
    head = f"{args.task} image {args.index}"
    if label is not None:
        head += f" (true label {names[label]!r})"
    line = (
        f"{head}: explained {names[tgt]!r} -> counterfactual {names[pred]!r} "
        f"(p = {float(res.counterfactual_probability[0]):.2f}), "
    )
    if rec != tgt:
        more = "a larger --fit-steps" if args.fit_steps else "--fit-steps 30"
        return line + (
            f"NOT flipped: the reconstruction is already classified as {names[rec]!r}; try {more}"
        )
    if bool(res.flipped[0]):
        return line + f"flipped at t* = {float(res.flip_position[0]):.2f}"
    hints = ["--path gradient"] if args.path == "linear" else []
    hints.append("a larger --t-end")
    if pred != tgt:
        hints.append("a lower --min-confidence")
    return line + f"NOT flipped while moving toward {names[cft]!r}; try {' or '.join(hints)}"


_SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (
    _add_explain,
    _add_demo,
    _add_cae,
    add_explain_dataset,
    add_train_cae,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``captum-secam`` argument parser (one subparser per entry of ``_SUBCOMMANDS``)."""
    parser = argparse.ArgumentParser(
        prog="captum-secam",
        description="Region-level explanations (SeCam) for image classifiers, as a Captum plugin.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``captum-secam`` and ``python -m captum_secam``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except _UsageError as err:
        getattr(args, "subparser", parser).error(str(err))  # usage of the subcommand
    except ImportError as err:
        if "pip install" not in str(err):  # a missing extra names its install command
            raise
        parser.exit(1, f"captum-secam: error: {err}\n")
    except OSError as err:
        parser.exit(1, f"captum-secam: error: {err}\n")
    return 1  # pragma: no cover - parser.error/exit raise SystemExit


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
