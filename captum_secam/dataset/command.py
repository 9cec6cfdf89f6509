"""``captum-secam explain-dataset DIR --out OUT``: explain a folder with the demo model.

Runs :func:`~captum_secam.dataset.explain_dataset` (or, with ``--engine ray``,
:func:`~captum_secam.dataset.explain_dataset_ray`) with the pretrained EfficientNet-Lite0 (the
``demo`` extra) at 224×224, shows a progress bar (images/s, ETA) and prints a summary.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from captum_secam._cli_types import non_negative_int, positive_int

__all__ = ["add_explain_dataset"]

DATASET_METHODS = ("secam", "gradcam", "lime", "kernelshap", "feature_ablation")
_MAX_LISTED_FAILURES = 10


def _folder(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder of images")
    return text


def add_explain_dataset(subparsers: Any) -> None:
    """Register the ``explain-dataset`` subcommand."""
    parser = subparsers.add_parser(
        "explain-dataset",
        help="explain every image of a folder into a resumable Parquet dataset",
        description=(
            "Explain every image file under DIR with the pretrained EfficientNet-Lite0 and "
            "write one Parquet row per image to OUT (shards + manifest.json). Rerunning the "
            "same command resumes: finished shards are skipped, a killed run is completed "
            "without missing or duplicated rows. Files that cannot be decoded get a row with "
            "the reason. Read the results with captum_secam.dataset.read_results(OUT)."
        ),
    )
    parser.add_argument("directory", metavar="DIR", type=_folder, help="folder of images")
    parser.add_argument("--out", metavar="OUT", required=True, help="output folder")
    parser.add_argument(
        "--method", choices=DATASET_METHODS, default="secam", help="default: %(default)s"
    )
    parser.add_argument("--batch-size", type=positive_int, default=32, help="default: %(default)s")
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=2,
        help="DataLoader workers decoding and segmenting (default: %(default)s)",
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)"
    )
    parser.add_argument(
        "--n-segments", type=positive_int, default=50, help="SLIC superpixels (default: 50)"
    )
    parser.add_argument(
        "--top-k", type=positive_int, default=4, help="top segments stored (default: 4)"
    )
    parser.add_argument(
        "--samples",
        type=positive_int,
        default=None,
        help="perturbations per image for lime/kernelshap (default: 500)",
    )
    parser.add_argument(
        "--target", type=non_negative_int, default=None, help="ImageNet class (default: predicted)"
    )
    parser.add_argument(
        "--shard-size", type=positive_int, default=256, help="images per shard (default: 256)"
    )
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local DataLoader job, or Ray Data (ray.init() or RAY_ADDRESS; default: local)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run_explain_dataset, subparser=parser)


def _method_params(args: argparse.Namespace) -> dict[str, Any]:
    if args.samples is None:
        return {}
    if args.method not in ("lime", "kernelshap"):
        from captum_secam.cli import _UsageError

        raise _UsageError(f"--samples applies to lime and kernelshap, not {args.method}")
    return {"n_samples": args.samples}


def _run_explain_dataset(args: argparse.Namespace) -> int:
    import torch

    from captum_secam.cli import _UsageError
    from captum_secam.dataset import Normalize, explain_dataset, explain_dataset_ray
    from captum_secam.dataset.store import DatasetConfigError
    from captum_secam.demo_model import load_efficientnet_lite0

    params = _method_params(args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise _UsageError(f"--device {args.device} but CUDA is not available; use --device cpu")
    model = load_efficientnet_lite0()
    common: dict[str, Any] = {
        "layer": model._bn1,
        "method": args.method,
        "method_params": params,
        "preprocess": Normalize(127.0, 128.0),
        "segmentation": {"n_segments": args.n_segments},
        "target": args.target,
        "top_k": args.top_k,
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "progress": not args.no_progress,
    }
    try:
        if args.engine == "ray":
            gpus = 1.0 if args.device.startswith("cuda") else 0.0
            summary = explain_dataset_ray(args.directory, model, args.out, num_gpus=gpus, **common)
        else:
            model = model.to(args.device)
            summary = explain_dataset(
                args.directory,
                model,
                args.out,
                num_workers=args.workers,
                device=args.device,
                **common,
            )
    except (DatasetConfigError, ValueError) as err:
        raise _UsageError(str(err)) from err
    _print_summary(summary)
    return 0


def _print_summary(summary: Any) -> None:
    print(
        f"{summary.out}: {summary.n_images} images; this run explained {summary.n_explained}, "
        f"failed {summary.n_failed}, skipped {summary.n_skipped} already done "
        f"({summary.shards_written} shards written in {summary.seconds:.1f} s, "
        f"{summary.images_per_second:.1f} images/s)"
    )
    if summary.ignored_files:
        print(f"ignored {summary.ignored_files} files without an image extension")
    for path, reason in summary.failures[:_MAX_LISTED_FAILURES]:
        print(f"  failed: {path}: {reason}")
    if len(summary.failures) > _MAX_LISTED_FAILURES:
        print(
            f"  ... and {len(summary.failures) - _MAX_LISTED_FAILURES} more (see the error column)"
        )
