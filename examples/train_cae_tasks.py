"""Train the shipped binary-task classifiers and CAEs on the CPU, with a validation report.

Needs the Debian dataset: ``apt-get install dataset-fashion-mnist``. Tasks
(:mod:`captum_secam.cae.tasks`): ``coats`` (pullover vs coat) and ``planted`` (garments,
class 1 carries a planted 6×6 square at a random place). The last 1,000 training images are held out
for the validation report; the benchmark uses the test split.

Stages (each reuses what earlier stages wrote to ``--out``)::

    # 1. classifier (1 min on one thread)
    python examples/train_cae_tasks.py classifier --task planted \\
        --out captum_secam/cae/assets/planted
    # 2. CAE with train_cae's defaults (≤ 20 min on one thread), logs + swap grids in --log-dir
    python examples/train_cae_tasks.py cae --task planted --out captum_secam/cae/assets/planted \\
        --log-dir runs/planted
    # 3. figures for the docs (swap grid, counterfactual grid)
    python examples/train_cae_tasks.py figures --task planted \\
        --out captum_secam/cae/assets/planted --figures docs/images

``all`` runs the three stages in order.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HOLD_OUT = 1000


def _split(task_name: str, root: str | None) -> tuple:
    from captum_secam.cae.tasks import BinaryTask, load_task

    full = load_task(task_name, "train", root)
    cut = len(full) - HOLD_OUT

    def part(sl: slice) -> BinaryTask:
        regions = None if full.regions is None else full.regions[sl]
        return BinaryTask(full.images[sl], full.labels[sl], full.class_names, regions)

    return part(slice(0, cut)), part(slice(cut, None))


def stage_classifier(args: argparse.Namespace) -> None:
    from captum_secam.cae.fashion_mnist import save_classifier, train_classifier
    from captum_secam.cae.tasks import load_task

    train, _ = _split(args.task, args.root)
    test = load_task(args.task, "test", args.root)
    t0 = time.perf_counter()
    model = train_classifier(train.images, train.labels, epochs=2, seed=args.seed)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        acc = float((model(test.images).argmax(1) == test.labels).float().mean())
    save_classifier(
        model,
        Path(args.out) / "classifier",
        class_names=train.class_names,
        task=args.task,
        test_accuracy=round(acc, 4),
        train_seconds=round(seconds, 1),
        seed=args.seed,
    )
    print(f"classifier ({args.task}): test accuracy {acc:.4f}, trained in {seconds:.1f} s")


def stage_cae(args: argparse.Namespace) -> None:
    from captum_secam.cae import ClassAssociationEmbedding, TrainingMonitor, train_cae
    from captum_secam.cae.fashion_mnist import load_classifier

    train, val = _split(args.task, args.root)
    classifier = load_classifier(Path(args.out) / "classifier")
    torch.manual_seed(args.seed)
    cae = ClassAssociationEmbedding(28, 1, 2, class_names=train.class_names)
    monitor = None
    if args.log_dir:
        monitor = TrainingMonitor(
            args.log_dir,
            classifier=classifier,
            images=val.images[:500],
            labels=val.labels[:500],
            regions=None if val.regions is None else val.regions[:500],
            validate_every=args.validate_every,
            restore_best=True,  # GAN training oscillates: ship the best validated weights
            report_kwargs={"explain": 100},
        )
    hist = train_cae(
        cae,
        train.dataset(),
        steps=args.steps,
        seed=args.seed,
        labels=train.labels,
        checkpoint_dir=args.checkpoint_dir,
        time_limit=args.time_limit or None,
        monitor=monitor,
        loss_weights=dict(_weight(kv) for kv in args.loss_weight),
    )
    cae.training_info["task"] = args.task
    if monitor is not None:
        cae.training_info["best_validation_step"] = monitor.best_step
    cae.save(Path(args.out) / "cae", include_discriminator=False)
    print(f"CAE ({args.task}): {hist.steps} steps in {hist.seconds:.0f} s")
    if monitor is not None and monitor.reports:
        step, report = monitor.reports[-1]
        print(f"validation report at step {step}:\n{report.to_markdown()}")


def _weight(key_value: str) -> tuple[str, float]:
    key, sep, value = key_value.partition("=")
    if not sep:
        raise SystemExit(f"--loss-weight takes NAME=VALUE (e.g. recon_class=2), got {key_value!r}")
    return key, float(value)


def stage_figures(args: argparse.Namespace) -> None:
    from matplotlib import rcParams

    from captum_secam.cae import CaeCounterfactual, ClassAssociationEmbedding
    from captum_secam.cae.fashion_mnist import load_classifier
    from captum_secam.cae.figures import plot_counterfactual_grid, plot_swap_grid
    from captum_secam.cae.tasks import load_task

    rcParams["font.size"] = 8
    out = Path(args.out)
    classifier = load_classifier(out / "classifier")
    cae = ClassAssociationEmbedding.load(out / "cae")
    test = load_task(args.task, "test", args.root)
    figs = Path(args.figures)
    figs.mkdir(parents=True, exist_ok=True)
    picks = torch.cat([torch.nonzero(test.labels == k).flatten()[:4] for k in (0, 1)])
    grid = plot_swap_grid(
        cae,
        test.images[picks],
        test.images[picks],
        classifier=classifier,
        class_names=cae.class_names,
    )
    grid.savefig(figs / f"cae_{args.task}_swap_grid.png", dpi=100)
    res = CaeCounterfactual(classifier, cae).attribute(
        test.images[picks], target=test.labels[picks], return_counterfactuals=True
    )
    cf = plot_counterfactual_grid(
        res,
        test.images[picks],
        class_names=cae.class_names,
        regions=None if test.regions is None else test.regions[picks],
    )
    cf.savefig(figs / f"cae_{args.task}_counterfactuals.png", dpi=100)
    print(
        json.dumps(
            {
                "written": [
                    str(figs / f"cae_{args.task}_{n}.png") for n in ("swap_grid", "counterfactuals")
                ]
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("stage", choices=("classifier", "cae", "figures", "all"))
    p.add_argument("--task", choices=("coats", "planted"), required=True)
    p.add_argument("--out", required=True, help="folder for classifier.* and cae.*")
    p.add_argument("--root", default=None, help="Fashion-MNIST IDX folder (Debian default)")
    p.add_argument("--steps", type=int, default=2800)
    p.add_argument("--time-limit", type=float, default=1200, help="seconds; 0 = none")
    p.add_argument("--log-dir", default=None, help="losses/validation CSV + swap grids")
    p.add_argument("--validate-every", type=int, default=500)
    p.add_argument(
        "--loss-weight",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a train_cae loss weight (repeatable), e.g. recon_class=2",
    )
    p.add_argument("--checkpoint-dir", default=None, help="resumable training checkpoints")
    p.add_argument("--figures", default="docs/images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    stages = ("classifier", "cae", "figures") if args.stage == "all" else (args.stage,)
    for stage in stages:
        {"classifier": stage_classifier, "cae": stage_cae, "figures": stage_figures}[stage](args)


if __name__ == "__main__":
    main()
