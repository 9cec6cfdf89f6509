"""CAE counterfactual quality on Fashion-MNIST test images with the shipped classifier.

Measures, on correctly classified test images (Debian ``dataset-fashion-mnist``):

* CAE flip rate (gradient and linear paths, with and without the individual-code fit),
  mean |counterfactual − reconstruction| per pixel, flip position, decoder passes per image;
* deletion AUC and AOPC of CAE vs SeCam vs Captum ``LayerGradCam`` vs Captum ``Lime`` vs Captum
  ``KernelShap`` vs a random map (all on the same images; SeCam / Lime / KernelShap on the same
  SLIC superpixels);
* median time per explanation (one image at a time) and the recorded CAE training time.

Deletion metric (a small local implementation, documented here so the numbers can be checked):
pixels are removed in decreasing order of attribution (ties broken by a seeded random order),
each removed pixel is set to 0 (the Fashion-MNIST background), in ``--deletion-steps`` equal
fractions from 0 to 1. With ``p_k`` the classifier's softmax probability of the explained
(predicted) class after step ``k``:

* deletion AUC = trapezoidal area under ``p_k`` over the deleted fraction (lower is better);
* AOPC = ``1/(L+1) · Σ_{k=0..L} (p_0 − p_k)`` (higher is better).

Run (under the shared CPU lock)::

    flock /tmp/captum_secam_cpu.lock python benchmarks/cae_quality.py --n 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def deletion_curve(
    model: torch.nn.Module, x: Tensor, attr: Tensor, target: int, steps: int, seed: int
) -> np.ndarray:
    """Probabilities of ``target`` while deleting pixels of ``x`` (1×C×H×W) by ``attr``."""
    h, w = x.shape[-2:]
    score = attr.detach().reshape(-1, h * w).sum(0).double()
    g = torch.Generator().manual_seed(seed)
    tie = torch.rand(h * w, generator=g, dtype=torch.float64)
    # sort by score (desc), ties by the random key
    order = torch.from_numpy(np.lexsort((tie.numpy(), -score.numpy())).copy())
    n_pix = h * w
    batch = []
    for k in range(steps + 1):
        m = round(n_pix * k / steps)
        keep = torch.ones(n_pix)
        keep[order[:m]] = 0.0
        batch.append(x[0] * keep.view(1, h, w))
    with torch.no_grad():
        p = F.softmax(model(torch.stack(batch)), 1)[:, target]
    return p.numpy().astype(np.float64)


def auc_aopc(curve: np.ndarray) -> tuple[float, float]:
    frac = np.linspace(0, 1, len(curve))
    auc = float(np.sum((curve[1:] + curve[:-1]) * np.diff(frac)) / 2)
    aopc = float(np.mean(curve[0] - curve))
    return auc, aopc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=100, help="correctly classified test images")
    p.add_argument("--n-flip", type=int, default=500, help="images for the flip-rate estimate")
    p.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--segments", type=int, default=30, help="SLIC superpixels per image")
    p.add_argument("--samples", type=int, default=200, help="Lime / KernelShap samples")
    p.add_argument("--deletion-steps", type=int, default=28)
    p.add_argument("--threads", type=int, default=1, help="1: see docs/cae.md (oversubscription)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--assets", default=None, help="folder with classifier.* and cae.* files")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)

    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import KernelShap, LayerAttribution, LayerGradCam, Lime

    from captum_secam import SeCam, segment
    from captum_secam.cae import CaeCounterfactual, ClassAssociationEmbedding
    from captum_secam.cae.fashion_mnist import ASSETS, load_classifier, load_fashion_mnist

    assets = Path(args.assets) if args.assets else ASSETS
    classifier = load_classifier(assets / "classifier")
    cae = ClassAssociationEmbedding.load(assets / "cae")
    xt, yt = load_fashion_mnist("test", args.root)
    with torch.no_grad():
        pred = torch.cat([classifier(xt[i : i + 1000]).argmax(1) for i in range(0, len(xt), 1000)])
    acc = float((pred == yt).float().mean())
    correct = torch.nonzero(pred == yt).flatten()
    g = torch.Generator().manual_seed(args.seed)
    perm = correct[torch.randperm(correct.numel(), generator=g)]

    # ---------------------------------------------------------------- flip rate (batched)
    explainer = CaeCounterfactual(classifier, cae)
    flip_idx = perm[: args.n_flip]
    xf = xt[flip_idx]
    flip_stats = {}
    configs = (  # the first is the library default
        ("gradient", 3.0, 30),
        ("gradient", 3.0, 0),
        ("gradient", 1.0, 30),
        ("linear", 1.0, 30),
        ("linear", 1.0, 0),
        ("linear", 3.0, 30),
    )
    for path, t_end, fit_steps in configs:
        t0 = time.perf_counter()
        res = explainer.attribute(
            xf, path=path, t_end=t_end, fit_steps=fit_steps, return_counterfactuals=True
        )
        sec = time.perf_counter() - t0
        fl = res.flipped
        l1 = (res.counterfactuals - res.reconstructions).abs().mean(dim=(1, 2, 3))
        rec_ok = res.reconstruction_prediction == res.target
        label = f"{path}, t_end={t_end:g}, fit_steps={fit_steps}"
        if (path, t_end, fit_steps) == configs[0]:
            label += " (default)"
        flip_stats[label] = {
            "flip_rate": float(fl.float().mean()),
            "fitted": float(res.fitted.float().mean()),
            "recon_keeps_class": float(rec_ok.float().mean()),
            "flip_rate_given_recon_ok": float(fl[rec_ok].float().mean()) if rec_ok.any() else 0.0,
            "cf_is_cf_target": float(
                (res.counterfactual_prediction == res.counterfactual_target)[fl].float().mean()
            ),
            "mean_l1_cf_recon": float(l1[fl].mean()),
            "median_flip_position": float(res.flip_position[fl].median()),
            "decoder_passes": res.decoder_passes,
            "batched_ms_per_image": 1000 * sec / len(flip_idx),
        }
    with torch.no_grad():
        recon_l1 = float((cae.decode(*cae.encode(xf)) - xf).abs().mean())

    # ---------------------------------------------------------------- attributions per image
    idx = perm[: args.n]
    x_all = xt[idx]
    tg_all = pred[idx]
    masks = segment(x_all, "slic", n_segments=args.segments)
    layer = classifier.block3
    secam = SeCam(classifier, layer)
    gradcam = LayerGradCam(classifier, layer)
    lime = Lime(classifier, interpretable_model=SkLearnRidge(alpha=1.0))
    kshap = KernelShap(classifier)

    def m_cae(path: str, t_end: float) -> Callable[[Tensor, int, Tensor], Tensor]:
        # the map of an image that did not flip is still scored (as the method returns it)
        return lambda x, t, m: explainer.attribute(x, target=t, path=path, t_end=t_end)  # type: ignore[return-value]

    methods: dict[str, Callable[[Tensor, int, Tensor], Tensor]] = {
        "CAE (gradient, t_end=3, default)": m_cae("gradient", 3.0),
        "CAE (linear, t_end=1)": m_cae("linear", 1.0),
        "SeCam (SLIC)": lambda x, t, m: secam.attribute(x, target=t, feature_mask=m),
        "Captum LayerGradCam": lambda x, t, m: LayerAttribution.interpolate(
            gradcam.attribute(x, target=t, relu_attributions=True), (28, 28), "bilinear"
        ).detach(),
        "Captum Lime (SLIC)": lambda x, t, m: lime.attribute(
            x, target=t, feature_mask=m, n_samples=args.samples, baselines=0.0
        ),
        "Captum KernelShap (SLIC)": lambda x, t, m: kshap.attribute(
            x, target=t, feature_mask=m, n_samples=args.samples, baselines=0.0
        ),
        "random": lambda x, t, m: torch.rand(
            x.shape, generator=torch.Generator().manual_seed(int(x.sum() * 1e4) % 2**31)
        ),
    }
    rows = {}
    for name, fn in methods.items():
        aucs, aopcs, times = [], [], []
        for i in range(len(idx)):
            x = x_all[i : i + 1]
            t = int(tg_all[i])
            t0 = time.perf_counter()
            a = fn(x, t, masks[i : i + 1])
            times.append(time.perf_counter() - t0)
            curve = deletion_curve(classifier, x, a, t, args.deletion_steps, args.seed + i)
            auc, aopc = auc_aopc(curve)
            aucs.append(auc)
            aopcs.append(aopc)
        rows[name] = {
            "deletion_auc": float(np.mean(aucs)),
            "deletion_auc_sem": float(np.std(aucs) / np.sqrt(len(aucs))),
            "aopc": float(np.mean(aopcs)),
            "ms_per_image": 1000 * statistics.median(times),
        }
        print(f"{name}: {rows[name]}", flush=True)

    info = json.loads((assets / "cae.json").read_text()).get("training", {})
    clf_info = json.loads((assets / "classifier.json").read_text())
    out = {
        "classifier_test_accuracy": acc,
        "classifier_train_seconds": clf_info.get("train_seconds"),
        "cae_train_seconds": info.get("seconds"),
        "cae_train_steps": info.get("steps"),
        "cae_recon_l1": recon_l1,
        "flip": flip_stats,
        "deletion": rows,
        "n_images": len(idx),
        "n_flip_images": len(flip_idx),
        "args": vars(args),
    }
    print()
    print(
        f"Fashion-MNIST test set, shipped classifier (test accuracy {acc:.4f}); CAE trained "
        f"{info.get('steps')} steps in {info.get('seconds')} s; reconstruction L1 {recon_l1:.4f}."
    )
    print()
    print(f"CAE flips on {len(flip_idx)} correctly classified test images:")
    print()
    print(
        "| path | flip rate | fitted | recon keeps class | flip rate (recon ok) | cf = cf target "
        "| mean abs(cf − recon) | median t* | decoder passes | ms/image (batched) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k, v in flip_stats.items():
        print(
            f"| {k} | {v['flip_rate']:.1%} | {v['fitted']:.1%} | {v['recon_keeps_class']:.1%} | "
            f"{v['flip_rate_given_recon_ok']:.1%} | {v['cf_is_cf_target']:.1%} | "
            f"{v['mean_l1_cf_recon']:.4f} | {v['median_flip_position']:.3f} | "
            f"{v['decoder_passes']} | {v['batched_ms_per_image']:.1f} |"
        )
    print()
    print(
        f"Deletion on {len(idx)} correctly classified test images (pixels → 0, "
        f"{args.deletion_steps} steps; {args.segments} SLIC segments; {args.samples} samples):"
    )
    print()
    print("| method | deletion AUC ↓ (± s.e.m.) | AOPC ↑ | median ms / explanation |")
    print("|---|---|---|---|")
    for k, v in rows.items():
        print(
            f"| {k} | {v['deletion_auc']:.4f} ± {v['deletion_auc_sem']:.4f} | {v['aopc']:.4f} "
            f"| {v['ms_per_image']:.1f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
