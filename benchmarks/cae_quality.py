"""CAE quality on held-out test images: disentanglement, counterfactuals, localisation, deletion.

For each shipped binary task (``coats``: pullover vs coat; ``planted``: garments with a
planted cross as the class-1 evidence; :mod:`captum_secam.cae.tasks`), on the Fashion-MNIST
*test* split (Debian ``dataset-fashion-mnist``) with the task's shipped classifier:

* :func:`captum_secam.cae.evaluate_cae` on ``--n`` test images: reconstruction, swap success,
  identity kept (retrieval among ``--candidates`` images of the donor's class), cycle ratio,
  and, on ``--n-explain`` correctly classified images, the default (black-box) explanation's
  flip rate, median counterfactual-class probability and mean change; the same for the
  gradient path as an option;
* ``planted`` only: the share of saliency inside the planted mark (energy pointing game,
  :func:`captum_secam.metrics.energy_pointing_game`, positive part of each map) for CAE,
  Captum ``LayerGradCam`` (``block3``, bilinear), Captum ``IntegratedGradients`` (baseline 0,
  50 steps) and SeCam (30 SLIC superpixels) on the same ``--n-local`` correctly classified
  marked test images; a random map scores the mark's area share;
* deletion AUC (:func:`captum_secam.metrics.deletion_auc`, pixels set to 0 in 28 steps, softmax
  of the explained class; lower is better) of the same methods and a random map.

``--legacy DIR`` also reports the previous 10-class CAE (``classifier.*`` + ``cae.*`` in DIR).
Run on a quiet machine::

    python benchmarks/cae_quality.py --json benchmarks/results/cae_quality.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def _report_row(name: str, rep: Any, seconds: Any) -> str:
    return (
        f"| {name} | {rep.reconstruction_l1:.3f} | {rep.reconstruction_keeps_class:.1%} | "
        f"{rep.swap_success:.1%} | {rep.identity_kept:.1%} (chance {1 / rep.n_candidates:.0%}) | "
        f"{rep.cycle_ratio:.2f} | {rep.flip_rate:.1%} | {rep.counterfactual_confidence:.3f} | "
        f"{rep.change_l1:.3f} | {seconds} |"
    )


def _methods(classifier: torch.nn.Module, cae: Any, seed: int) -> dict[str, Any]:
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam

    from captum_secam import SeCam, segment
    from captum_secam.cae import CaeCounterfactual

    explainer = CaeCounterfactual(classifier, cae)
    gradcam = LayerGradCam(classifier, classifier.block3)
    ig = IntegratedGradients(classifier)
    secam = SeCam(classifier, classifier.block3)

    def random_map(x: Tensor, t: Tensor) -> Tensor:
        return torch.rand(x.shape, generator=torch.Generator().manual_seed(seed))

    return {
        "CAE (default: linear, black-box)": lambda x, t: explainer.attribute(x, target=t),
        "CAE (gradient path)": lambda x, t: explainer.attribute(x, target=t, path="gradient"),
        "Captum LayerGradCam": lambda x, t: LayerAttribution.interpolate(
            gradcam.attribute(x, target=t, relu_attributions=True), (28, 28), "bilinear"
        ).detach(),
        "Captum IntegratedGradients": lambda x, t: ig.attribute(
            x, target=t, baselines=0.0, n_steps=50
        ).detach(),
        "SeCam (30 SLIC)": lambda x, t: secam.attribute(
            x, target=t, feature_mask=segment(x, "slic", n_segments=30)
        ).detach(),
        "random": random_map,
    }


def _attribution_table(
    classifier: torch.nn.Module, cae: Any, x: Tensor, t: Tensor, regions: Tensor | None, seed: int
) -> dict[str, dict[str, float]]:
    from captum_secam.metrics import deletion_auc, energy_pointing_game

    rows: dict[str, dict[str, float]] = {}
    for name, fn in _methods(classifier, cae, seed).items():
        t0 = time.perf_counter()
        maps = torch.cat([fn(x[i : i + 1], t[i : i + 1]) for i in range(x.shape[0])])
        ms = 1000 * (time.perf_counter() - t0) / x.shape[0]
        auc = deletion_auc(classifier, x, maps, t, n_steps=28, fill="constant", fill_value=0.0)
        row = {
            "deletion_auc": float(auc.mean()),
            "deletion_sem": float(auc.std() / auc.numel() ** 0.5),
            "ms_per_image": ms,
        }
        if regions is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                share = energy_pointing_game(maps, regions)
            ok = ~torch.isnan(share)
            row["inside_mark"] = float(share[ok].mean())
            row["inside_sem"] = float(share[ok].std() / ok.sum() ** 0.5)
        rows[name] = row
        print(f"  {name}: {row}", flush=True)
    return rows


def _task(args: argparse.Namespace, task_name: str, assets: Path) -> dict[str, Any]:
    from captum_secam.cae import ClassAssociationEmbedding, evaluate_cae
    from captum_secam.cae.fashion_mnist import load_classifier
    from captum_secam.cae.tasks import load_task

    classifier = load_classifier(assets / "classifier")
    cae = ClassAssociationEmbedding.load(assets / "cae")
    test = load_task(task_name, "test", args.root)
    x, y = test.images[: args.n], test.labels[: args.n]
    regions = None if test.regions is None else test.regions[: args.n]
    with torch.no_grad():
        acc = float((classifier(test.images).argmax(1) == test.labels).float().mean())
    reports = {}
    for label, kwargs in (("default", {}), ("gradient", {"path": "gradient"})):
        t0 = time.perf_counter()
        reports[label] = evaluate_cae(
            cae,
            classifier,
            x,
            y,
            regions=regions,
            n_candidates=args.candidates,
            explain=args.n_explain,
            explain_kwargs=kwargs,
            seed=args.seed,
        )
        print(
            f"{task_name} / {label}: {reports[label]} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    with torch.no_grad():
        pred = classifier(x).argmax(1)
    pool = (pred == y) & (y == 1) if regions is not None else pred == y
    pick = torch.nonzero(pool).flatten()[: args.n_local]
    table = _attribution_table(
        classifier, cae, x[pick], y[pick], None if regions is None else regions[pick], args.seed
    )
    return {
        "classifier_test_accuracy": acc,
        "cae_training": cae.training_info,
        "reports": {k: v.as_dict() for k, v in reports.items()},
        "attributions": table,
        "n_attribution_images": int(pick.numel()),
        "area_share_of_mark": None if regions is None else float(regions[pick].float().mean()),
    }


def _legacy(args: argparse.Namespace) -> dict[str, Any]:
    from captum_secam.cae import ClassAssociationEmbedding, evaluate_cae
    from captum_secam.cae.fashion_mnist import load_classifier, load_fashion_mnist

    folder = Path(args.legacy)
    classifier = load_classifier(folder / "classifier")
    cae = ClassAssociationEmbedding.load(folder / "cae")
    xt, yt = load_fashion_mnist("test", *([args.root] if args.root else []))
    rep = evaluate_cae(
        cae,
        classifier,
        xt[: args.n],
        yt[: args.n],
        n_candidates=args.candidates,
        explain=args.n_explain,
        seed=args.seed,
    )
    return {"report": rep.as_dict(), "cae_training": cae.training_info}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["coats", "planted"])
    p.add_argument("--n", type=int, default=1000, help="test images in the report")
    p.add_argument("--n-explain", type=int, default=500, help="correctly classified, explained")
    p.add_argument("--n-local", type=int, default=200, help="images for localisation/deletion")
    p.add_argument("--candidates", type=int, default=10, help="identity retrieval candidates")
    p.add_argument("--root", default=None, help="Fashion-MNIST IDX folder (Debian default)")
    p.add_argument("--legacy", default=None, help="folder with the 10-class classifier + CAE")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    from captum_secam.cae.fashion_mnist import ASSETS

    out: dict[str, Any] = {"args": vars(args)}
    for task_name in args.tasks:
        out[task_name] = _task(args, task_name, ASSETS / task_name)
    if args.legacy:
        out["legacy_10_class"] = _legacy(args)
    _print_tables(out, args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


def _print_tables(out: dict[str, Any], args: argparse.Namespace) -> None:
    from captum_secam.cae import CaeReport

    print()
    print(
        f"Disentanglement on {args.n} test images; explanations on the first {args.n_explain} "
        "correctly classified ones:"
    )
    print()
    print(
        "| model | recon L1 | recon keeps class | swap success | identity kept | cycle / recon "
        "| flip rate | median p(cf class) | mean change | training s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for task_name in args.tasks:
        res = out[task_name]
        secs = res["cae_training"].get("seconds")
        for label, rep in res["reports"].items():
            print(_report_row(f"{task_name} ({label} path)", CaeReport(**rep), secs))
    if "legacy_10_class" in out:
        leg = out["legacy_10_class"]
        print(
            _report_row(
                "10-class (previous)",
                CaeReport(**leg["report"]),
                leg["cae_training"].get("seconds"),
            )
        )
    for task_name in args.tasks:
        res = out[task_name]
        print()
        print(
            f"{task_name}: {res['n_attribution_images']} correctly classified test images"
            + (" with the mark" if res["area_share_of_mark"] is not None else "")
        )
        print()
        head = "| method | deletion AUC ↓ | "
        head += "share inside mark ↑ | " if res["area_share_of_mark"] is not None else ""
        print(head + "ms / image |")
        print("|---|---|" + ("---|" if res["area_share_of_mark"] is not None else "") + "---|")
        for name, row in res["attributions"].items():
            cells = f"| {name} | {row['deletion_auc']:.3f} ± {row['deletion_sem']:.3f} | "
            if "inside_mark" in row:
                cells += f"{row['inside_mark']:.3f} ± {row['inside_sem']:.3f} | "
            print(cells + f"{row['ms_per_image']:.1f} |")
        if res["area_share_of_mark"] is not None:
            print(f"\n(the mark covers {res['area_share_of_mark']:.1%} of each image)")


if __name__ == "__main__":
    main()
