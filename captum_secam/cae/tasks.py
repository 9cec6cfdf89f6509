"""Binary image tasks where the CAE premise holds: a Fashion-MNIST pair and a planted mark.

The CAE paper's tasks are binary, with the class in a *local* feature (a lesion) and the
individual in everything else (the anatomy). Two offline tasks reproduce that setting:

* :func:`fashion_mnist_pair` -- two related Fashion-MNIST classes (sneaker vs ankle boot by
  default), relabelled ``0`` / ``1``;
* :func:`plant_marks` -- real garments of every Fashion-MNIST class where class ``1`` carries a
  small uniform square at a random place on the garment, white on a dark spot and black on a
  bright one, and class ``0`` does not. The mark's
  box is returned as a ground-truth region, so saliency can be scored against it (energy
  pointing game).

Both are plain functions on tensors; :func:`load_task` builds either from the Debian
``dataset-fashion-mnist`` files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "MARK_SIZE",
    "PAIRS",
    "TASKS",
    "BinaryTask",
    "fashion_mnist_pair",
    "load_task",
    "plant_marks",
]

MARK_SIZE = 6
# mark placement: the centre pixel must lie on the garment (intensity above this)
_ON_GARMENT = 0.15


@dataclass(frozen=True)
class BinaryTask:
    """A labelled binary image task.

    Attributes:
        images: N×1×H×W float images in ``[0, 1]``.
        labels: N labels in ``{0, 1}``.
        class_names: the two class names.
        regions: N×1×H×W boolean ground-truth regions of the class-1 evidence (the planted
            mark; all ``False`` for class-0 images), or ``None`` where no region is known.
    """

    images: Tensor
    labels: Tensor
    class_names: tuple[str, str]
    regions: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.numel())

    def dataset(self) -> torch.utils.data.TensorDataset:
        """The task as a ``TensorDataset`` of ``(image, label)`` for :func:`train_cae`."""
        return torch.utils.data.TensorDataset(self.images, self.labels)


def plant_marks(
    images: Tensor,
    *,
    seed: int = 0,
    mark_size: int = MARK_SIZE,
    fraction: float = 0.5,
) -> BinaryTask:
    """Plant a square mark on a random share of ``images``: class 1 = marked, 0 = unmarked.

    The mark is a uniform ``mark_size``×``mark_size`` square, white (1) where the garment under
    it is dark (mean < 0.5) and black (0) where it is bright, so it stands out everywhere. Its
    top-left corner is drawn uniformly among the positions that keep it inside the image and
    put its centre on the garment (intensity > 0.15; anywhere if the image has no such pixel).
    Deterministic for a given ``seed``.

    Args:
        images: N×1×H×W float images in ``[0, 1]`` (garments on a dark background).
        seed: seeds the labels and the mark positions.
        mark_size: side of the square mark in pixels (at most the image side).
        fraction: share of images that get the mark (class 1), in ``(0, 1)``.

    Returns:
        A :class:`BinaryTask` whose ``regions`` are the marks' squares.

    Example:
        >>> task = plant_marks(torch.rand(4, 1, 28, 28), seed=0)
        >>> task.images.shape, int(task.regions[task.labels == 1].sum()) % 36
        (torch.Size([4, 1, 28, 28]), 0)
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(
            "images must be an N×1×H×W tensor of grey images, got "
            f"{getattr(images, 'shape', type(images))}."
        )
    if not images.is_floating_point() or float(images.min()) < 0 or float(images.max()) > 1:
        raise ValueError("images must be float in [0, 1]; divide uint8 images by 255.")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}.")
    n, _, h, w = images.shape
    if not 3 <= mark_size <= min(h, w):
        raise ValueError(f"mark_size must be in 3..{min(h, w)}, got {mark_size}.")
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, generator=gen) < fraction).long()
    out = images.clone()
    regions = torch.zeros(n, 1, h, w, dtype=torch.bool)
    half = mark_size // 2
    span_h, span_w = h - mark_size + 1, w - mark_size + 1
    for i in torch.nonzero(labels).flatten().tolist():
        centre = images[i, 0, half : half + span_h, half : half + span_w]
        allowed = torch.nonzero(centre.flatten() > _ON_GARMENT).flatten()
        if allowed.numel() == 0:
            allowed = torch.arange(span_h * span_w)
        pick = int(allowed[int(torch.randint(allowed.numel(), (1,), generator=gen))])
        top, left = divmod(pick, span_w)
        box = (i, 0, slice(top, top + mark_size), slice(left, left + mark_size))
        out[box] = 1.0 if float(images[box].mean()) < 0.5 else 0.0
        regions[i, 0, top : top + mark_size, left : left + mark_size] = True
    return BinaryTask(out, labels, ("no mark", "mark"), regions)


def fashion_mnist_pair(
    images: Tensor, labels: Tensor, classes: tuple[int, int] = (7, 9)
) -> BinaryTask:
    """Keep two Fashion-MNIST classes and relabel them ``0`` (first) and ``1`` (second).

    Args:
        images: N×1×28×28 Fashion-MNIST images in ``[0, 1]``.
        labels: their 10-class labels.
        classes: the two Fashion-MNIST class ids (default sneaker 7 vs ankle boot 9).
    """
    from captum_secam.cae.fashion_mnist import CLASS_NAMES

    a, b = (int(v) for v in classes)
    if a == b or not (0 <= a < 10 and 0 <= b < 10):
        raise ValueError(f"classes must be two different ids in 0..9, got {classes}.")
    labels = torch.as_tensor(labels).long().flatten()
    if labels.numel() != images.shape[0]:
        raise ValueError("images and labels must have the same length.")
    keep = (labels == a) | (labels == b)
    return BinaryTask(images[keep], (labels[keep] == b).long(), (CLASS_NAMES[a], CLASS_NAMES[b]))


PAIRS: dict[str, tuple[int, int]] = {"boots": (7, 9), "coats": (2, 4), "shirts": (0, 6)}

TASKS: dict[str, str] = {
    "boots": "Fashion-MNIST sneaker (0) vs ankle boot (1)",
    "coats": "Fashion-MNIST pullover (0) vs coat (1)",
    "shirts": "Fashion-MNIST T-shirt/top (0) vs shirt (1)",
    "planted": "Fashion-MNIST garments, class 1 = a planted 6×6 square at a random place",
}


def load_task(name: str, split: str = "train", root: str | Path | None = None) -> BinaryTask:
    """Build task ``name`` (see :data:`TASKS`) from the Debian Fashion-MNIST files.

    The planted marks are seeded per split (train 0, test 1), so the same call always returns
    the same images.
    """
    from captum_secam.cae.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist

    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}.")
    x, y = load_fashion_mnist(split, DEFAULT_ROOT if root is None else root)
    if name in PAIRS:
        return fashion_mnist_pair(x, y, PAIRS[name])
    return plant_marks(x, seed=0 if split == "train" else 1)
