"""``captum-secam train-cae DATA_DIR --preset small --out runs/cae``: train a CAE on an ImageFolder.

``DATA_DIR`` holds one sub-folder of images per class (``torchvision.datasets.ImageFolder``).
A seeded, per-class share of the images is held out for the validation report; the rest
trains with the preset's architecture and recipe, resize / random crop / random flip
augmentation and loader workers. A progress bar shows the running losses and the share of
time spent waiting for data; every ``--validate-every`` steps a
:class:`~captum_secam.cae.TrainingMonitor` writes ``OUT/logs/validation.csv`` and a swap-grid
snapshot, with the discriminator's class head as the classifier (no external classifier is
needed to watch training). Checkpoints go to ``OUT/checkpoint``; rerunning the same command
resumes (``--no-resume`` starts again). The model is saved as ``OUT/cae.safetensors`` +
``OUT/cae.json``.

Under ``torchrun --nproc_per_node=N captum-secam train-cae ...`` every process trains on its
slice of each batch; rank 0 writes the logs, checkpoints and the model.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from captum_secam._cli_types import non_negative_int, positive_int

__all__ = ["add_train_cae", "run_train_cae"]


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def add_train_cae(subparsers: Any) -> None:
    """Register the ``train-cae`` subcommand."""
    from captum_secam.cae.presets import PRESETS

    p = subparsers.add_parser(
        "train-cae",
        help="train a CAE on an ImageFolder (one sub-folder per class)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("data_dir", metavar="DATA_DIR", help="root/<class name>/<image files>")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small", help="(default: small)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--image-size", type=positive_int, default=64, metavar="PX")
    p.add_argument("--channels", type=int, choices=(1, 3, 4), default=3)
    p.add_argument("--steps", type=non_negative_int, default=2000)
    p.add_argument("--batch-size", type=positive_int, help="per process (default: preset's)")
    p.add_argument("--lr", type=float, help="learning rate (default: the preset's)")
    p.add_argument(
        "--warmup",
        type=non_negative_int,
        metavar="STEPS",
        help="discriminator warm-up steps (default: the preset's, else 300)",
    )
    p.add_argument("--workers", type=non_negative_int, default=2, help="loader workers")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-augment", action="store_true", help="resize and centre-crop only")
    p.add_argument("--val-fraction", type=_fraction, default=0.1, help="held out per class")
    p.add_argument("--val-images", type=positive_int, default=64, help="at most this many")
    p.add_argument("--validate-every", type=positive_int, default=250, metavar="STEPS")
    p.add_argument("--checkpoint-every", type=positive_int, default=500, metavar="STEPS")
    p.add_argument("--time-limit", type=float, metavar="SECONDS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="e.g. cuda, cpu (default: cuda if available)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=run_train_cae, subparser=p)


class _DiscriminatorClassifier:
    """The discriminator's class head as the validation classifier (it learns the classes
    on the real images along with the CAE)."""

    def __init__(self, cae: Any) -> None:
        self.cae = cae

    def __call__(self, x: Any) -> Any:
        return self.cae.discriminate(x)[1]


def _split(targets: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded per-class split into (train, validation) indices."""
    import torch

    g = torch.Generator().manual_seed(seed)
    lab = torch.tensor(targets)
    train: list[int] = []
    val: list[int] = []
    for k in torch.unique(lab).tolist():
        rows = torch.nonzero(lab == k).flatten()
        idx: list[int] = rows[torch.randperm(rows.numel(), generator=g)].tolist()
        n_val = round(fraction * len(idx)) if len(idx) > 1 else 0
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


def run_train_cae(args: argparse.Namespace) -> int:
    """Run ``train-cae`` (returns the exit code)."""
    import torch
    from torch.utils.data import Subset

    from captum_secam.cae import ClassAssociationEmbedding, train_cae
    from captum_secam.cae.data import image_folder
    from captum_secam.cae.distributed import init_distributed
    from captum_secam.cae.presets import get_preset

    root = Path(args.data_dir)
    if not root.is_dir():
        args.subparser.error(f"DATA_DIR {root} is not a folder (root/<class>/<images>)")
    ctx = init_distributed()
    size, ch = args.image_size, args.channels
    train_all = image_folder(root, size, channels=ch, augment=not args.no_augment)
    classes = list(train_all.classes)
    if len(classes) < 2:
        args.subparser.error(f"{root} has {len(classes)} class folder(s); CAE training needs 2+")
    train_idx, val_idx = _split(list(train_all.targets), args.val_fraction, args.seed)
    targets = torch.tensor(train_all.targets)
    preset = get_preset(args.preset)
    try:
        cfg = preset.model_config(size, ch, len(classes), class_names=classes)
    except ValueError as err:
        args.subparser.error(str(err))
    torch.manual_seed(args.seed)
    cae = ClassAssociationEmbedding.from_config(cfg)
    out = Path(args.out)
    monitor = _monitor(args, root, val_idx, cae, out) if ctx.is_main and val_idx else None
    options = dict(preset.training)
    overrides = (
        ("batch_size", args.batch_size),
        ("lr", args.lr),
        ("discriminator_warmup", args.warmup),
    )
    for key, value in overrides:
        if value is not None:
            options[key] = value
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    history = train_cae(
        cae,
        Subset(train_all, train_idx),
        labels=targets[train_idx],
        steps=args.steps,
        seed=args.seed,
        device=device if not ctx.active else None,
        progress=not args.no_progress,
        checkpoint_dir=out / "checkpoint",
        checkpoint_every=args.checkpoint_every,
        resume=not args.no_resume,
        time_limit=args.time_limit,
        monitor=monitor,
        num_workers=args.workers,
        amp=None if args.amp == "none" else args.amp,
        compile=args.compile,
        channels_last=args.channels_last,
        preset=preset,
        **options,
    )
    if ctx.is_main:
        cae.save(out / "cae")
        print(
            f"trained {history.steps} steps in {history.seconds:.0f} s; model: {out / 'cae'}"
            f".safetensors/.json, logs: {out / 'logs'}"
        )
    return 0


def _monitor(args: argparse.Namespace, root: Path, val_idx: list[int], cae: Any, out: Path) -> Any:
    import torch

    from captum_secam.cae import TrainingMonitor
    from captum_secam.cae.data import image_folder

    plain = image_folder(root, args.image_size, channels=args.channels, augment=False)
    picks = val_idx[: args.val_images]
    images = torch.stack([plain[i][0] for i in picks])
    labels = torch.tensor([plain.targets[i] for i in picks])
    smallest = int(torch.bincount(labels).min()) if labels.unique().numel() > 1 else 0
    if smallest < 2:  # the identity test needs two images of every class
        print("train-cae: too few validation images per class for the report; logging losses")
        return TrainingMonitor(out / "logs")
    return TrainingMonitor(
        out / "logs",
        classifier=_DiscriminatorClassifier(cae),
        images=images,
        labels=labels,
        validate_every=args.validate_every,
        # the swap-grid figures draw grey or RGB images
        snapshot_images=2 if args.channels in (1, 3) else 0,
        report_kwargs={"explain": min(16, len(picks)), "n_candidates": min(10, smallest)},
    )
