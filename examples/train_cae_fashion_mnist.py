"""Train the shipped Fashion-MNIST classifier and CAE on the CPU, then explain test images.

Needs the Debian dataset: ``apt-get install dataset-fashion-mnist``.

Stages (each can be run alone; every stage reuses what earlier stages wrote to ``--out``)::

    # 1. classifier (~1-2 min on 2 cores)
    python examples/train_cae_fashion_mnist.py classifier --out captum_secam/cae/assets
    # 2. CAE (the shipped one: defaults, 1430 steps, at most --time-limit 900 s; under the CPU lock)
    flock /tmp/captum_secam_cpu.lock python examples/train_cae_fashion_mnist.py cae \
        --out captum_secam/cae/assets --checkpoint-dir /tmp/cae_ckpt
    # 3. sample file + figures
    python examples/train_cae_fashion_mnist.py figures --out captum_secam/cae/assets \
        --figures figures/cae

``all`` runs the three stages in order.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def stage_classifier(args: argparse.Namespace) -> None:
    from captum_secam.cae.fashion_mnist import load_fashion_mnist, save_classifier, train_classifier

    x, y = load_fashion_mnist("train", args.root)
    xt, yt = load_fashion_mnist("test", args.root)
    t0 = time.perf_counter()
    model = train_classifier(
        x, y, epochs=args.classifier_epochs, seed=args.seed, width=args.classifier_width
    )
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        pred = torch.cat([model(xt[i : i + 1000]).argmax(1) for i in range(0, len(xt), 1000)])
    acc = float((pred == yt).float().mean())
    save_classifier(
        model,
        Path(args.out) / "classifier",
        test_accuracy=round(acc, 4),
        train_seconds=round(seconds, 1),
        epochs=args.classifier_epochs,
        seed=args.seed,
    )
    print(f"classifier: test accuracy {acc:.4f}, trained in {seconds:.1f} s")


def stage_cae(args: argparse.Namespace) -> None:
    from captum_secam.cae import ClassAssociationEmbedding, train_cae
    from captum_secam.cae.fashion_mnist import CLASS_NAMES, load_fashion_mnist

    x, y = load_fashion_mnist("train", args.root)
    ds = torch.utils.data.TensorDataset(x, y)
    torch.manual_seed(args.seed)
    cae = ClassAssociationEmbedding(
        28,
        1,
        10,
        class_code_dim=8,
        base_channels=args.base_channels,
        n_downsample=2,
        n_res_blocks=args.res_blocks,
        disc_channels=args.base_channels,
        up_kernel=args.up_kernel,
        adain_upsampling=not args.reference_decoder,
        class_names=CLASS_NAMES,
    )
    hist = train_cae(
        cae,
        ds,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=250,
        time_limit=args.time_limit or None,
        loss_weights={
            "class": args.class_weight,
            "code_class": args.code_class_weight,
            "recon": args.recon_weight,
        },
        discriminator_warmup=args.discriminator_warmup,
    )
    cae.save(Path(args.out) / "cae", include_discriminator=False)
    print(f"CAE: {hist.steps} steps in {hist.seconds:.1f} s")
    print(json.dumps(cae.training_info["final_losses"], indent=1))


def stage_figures(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from captum_secam.cae import CaeCounterfactual, plot_class_code_manifold
    from captum_secam.cae.fashion_mnist import (
        explain_fashion_mnist,
        load_classifier,
        load_fashion_mnist,
    )
    from captum_secam.cae.model import ClassAssociationEmbedding

    out = Path(args.out)
    xt, yt = load_fashion_mnist("test", args.root)
    np.savez_compressed(
        out / "fashion_mnist_samples.npz",
        images=(xt[:100, 0].numpy() * 255).round().astype(np.uint8),
        labels=yt[:100].numpy().astype(np.uint8),
    )
    figs = Path(args.figures)
    figs.mkdir(parents=True, exist_ok=True)
    classifier = load_classifier(out / "classifier")
    cae = ClassAssociationEmbedding.load(out / "cae")
    # reconstructions and class swaps
    import matplotlib.pyplot as plt

    with torch.no_grad():
        idx = [int(torch.nonzero(yt == k)[0]) for k in range(10)]
        xs = xt[idx]
        s, c = cae.encode(xs)
        grid = torch.stack([cae.decode(s, c[j : j + 1].expand(10, -1)) for j in range(10)], 1)
    fig, axes = plt.subplots(11, 11, figsize=(11, 11))
    for ax in axes.flat:
        ax.axis("off")
    for i in range(10):
        axes[i + 1, 0].imshow(xs[i, 0], cmap="gray", vmin=0, vmax=1)
        axes[0, i + 1].imshow(xs[i, 0], cmap="gray", vmin=0, vmax=1)
        for j in range(10):
            axes[i + 1, j + 1].imshow(grid[i, j, 0], cmap="gray", vmin=0, vmax=1)
    fig.suptitle("rows: individual code of image i; columns: class code of image j (diag = recon)")
    fig.savefig(figs / "cae_swaps.png", dpi=80)
    plt.close(fig)
    for i in range(args.n_explain):
        explain_fashion_mnist(
            i,
            figs / f"cae_explanation_{i}.png",
            classifier=classifier,
            cae=cae,
            image=xt[i],
            label=int(yt[i]),
        )
    explainer = CaeCounterfactual(classifier, cae)
    res = explainer.attribute(xt[:1], return_counterfactuals=True)
    fig = plot_class_code_manifold(cae, xt[:2000], yt[:2000], explanation=res, example=0)
    fig.savefig(figs / "cae_manifold.png", dpi=90)
    plt.close(fig)
    print(f"figures written to {figs}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("stage", choices=["classifier", "cae", "figures", "all"])
    p.add_argument("--out", default="captum_secam/cae/assets")
    p.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--figures", default="figures/cae")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="1: see docs/cae.md (oversubscription)")
    p.add_argument("--classifier-epochs", type=int, default=2)
    p.add_argument("--classifier-width", type=int, default=16)
    p.add_argument("--steps", type=int, default=1430)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--res-blocks", type=int, default=1)
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--time-limit", type=float, default=900, help="seconds (CAE stage), 0: none")
    p.add_argument("--up-kernel", type=int, default=3)
    p.add_argument(
        "--reference-decoder",
        action="store_true",
        help="AdaIN only in the residual blocks (default: also in the up-sampling layers)",
    )
    p.add_argument(
        "--class-weight",
        type=float,
        default=3.0,
        help="weight of the swapped-image class loss (reference: 1)",
    )
    p.add_argument(
        "--code-class-weight",
        type=float,
        default=1.0,
        help="weight of the class-code linear-probe loss (reference: 0; prevents code collapse)",
    )
    p.add_argument(
        "--recon-weight",
        type=float,
        default=10.0,
        help="weight of the reconstruction loss (reference: 10)",
    )
    p.add_argument(
        "--discriminator-warmup",
        type=int,
        default=300,
        help="class-only discriminator steps before training (reference: 0)",
    )
    p.add_argument("--n-explain", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.stage in ("classifier", "all"):
        stage_classifier(args)
    if args.stage in ("cae", "all"):
        stage_cae(args)
    if args.stage in ("figures", "all"):
        stage_figures(args)


if __name__ == "__main__":
    main()
