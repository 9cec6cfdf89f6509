"""Data for CAE training: image conversion, augmentation, the class-pairing sampler, loaders.

Each training step of :func:`~captum_secam.cae.train_cae` needs ``B`` images ``a`` and, for
every ``a``, an image ``b`` of a different class. :class:`ClassPairBatchSampler` draws them as a
pure function of ``(seed, step)``: the order does not depend on the number of loader workers,
restarts exactly at any step boundary (resume), and is the same *global* order for any number
of processes -- rank ``r`` of ``W`` takes the ``r``-th slice of each step's global batch, so
2 ranks × ``B`` see the samples of 1 process × ``2B``. Augmentation is seeded the same way (per
step and slot), so it too is independent of workers, ranks and resumes.

Items may be float tensors in ``[0, 1]``, ``uint8`` tensors or arrays (0..255) or PIL images;
:func:`to_image_tensor` converts them. :func:`image_folder` opens a
``torchvision.datasets.ImageFolder`` (one sub-folder per class) ready for training.

:class:`StreamSource`, :class:`SamplerSource` and :class:`LoaderSource` are the three ways
:func:`~captum_secam.cae.train_cae` gets its batches (the in-process order of earlier
versions, the sampler through a ``DataLoader``, a user's ``DataLoader``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

if TYPE_CHECKING:
    from captum_secam.cae.distributed import DistributedContext

__all__ = [
    "ClassPairBatchSampler",
    "PairItems",
    "collate_pairs",
    "default_transform",
    "image_folder",
    "make_pair_loader",
    "step_seed",
    "to_image_tensor",
]

# a key of PairItems: (position, global slot, dataset index)
PairKey = tuple[int, int, int]


def step_seed(seed: int, *parts: int | str) -> int:
    """A 63-bit seed derived from ``seed`` and ``parts`` (no collisions between nearby
    seeds and steps, unlike ``seed + step``)."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def _pil_mode_channels(mode: str) -> int:
    return {"1": 1, "L": 1, "I": 1, "F": 1, "I;16": 1, "LA": 2, "RGB": 3, "RGBA": 4}.get(mode, 3)


def to_image_tensor(image: Any, channels: int | None = None) -> Tensor:
    """Convert one image to a float C×H×W tensor in ``[0, 1]``.

    Accepts a float tensor (returned as it is), a ``uint8`` tensor or numpy array (C×H×W for
    tensors, H×W×C or H×W for arrays; divided by 255) or a PIL image (converted to ``channels``:
    1 → ``"L"``, 3 → ``"RGB"``, 4 → ``"RGBA"``; default: the image's own channels).

    Raises:
        TypeError: for any other type, naming the conversions that are supported.

    Example:
        >>> from PIL import Image
        >>> to_image_tensor(Image.new("RGB", (5, 4), (255, 0, 0))).shape
        torch.Size([3, 4, 5])
    """
    if isinstance(image, Tensor):
        if image.is_floating_point():
            return image
        if image.dtype == torch.uint8:
            return image.float() / 255.0
        raise TypeError(
            f"image tensors must be float in [0, 1] or uint8 in 0..255, got {image.dtype}; "
            "convert with x.float() / x.max() or a transform."
        )
    if isinstance(image, np.ndarray):
        arr = image[:, :, None] if image.ndim == 2 else image
        if arr.ndim != 3 or arr.dtype != np.uint8:
            raise TypeError(
                f"numpy images must be uint8 H×W or H×W×C, got {arr.dtype} with shape "
                f"{image.shape}; use a float C×H×W tensor in [0, 1] instead."
            )
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float() / 255.0
    if _is_pil(image):
        from torchvision.transforms.functional import pil_to_tensor

        want = channels if channels is not None else _pil_mode_channels(image.mode)
        mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(want)
        if mode is None:
            raise TypeError(
                f"PIL images convert to 1, 3 or 4 channels, not {want}; give a transform that "
                "returns a C×H×W float tensor for other layouts."
            )
        if image.mode != mode:
            image = image.convert(mode)
        return pil_to_tensor(image).float() / 255.0
    raise TypeError(
        f"dataset images must be float C×H×W tensors in [0, 1], uint8 tensors/arrays or PIL "
        f"images, got {type(image).__name__}; add a transform such as "
        "torchvision.transforms.ToTensor()."
    )


def _is_pil(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with torchvision
        return False
    return isinstance(obj, Image.Image)


def default_transform(
    image_size: int | Sequence[int], *, augment: bool = True, resize_ratio: float = 286 / 256
) -> Callable[[Any], Any]:
    """The authors' augmentation: resize (shorter side to ``resize_ratio × size``), random crop
    to ``image_size`` and random horizontal flip; ``augment=False`` resizes and centre-crops.

    Works on PIL images and C×H×W tensors (torchvision transforms).
    """
    from torchvision import transforms

    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    h, w = int(size[0]), int(size[1])
    if not augment:
        return transforms.Compose([transforms.Resize(min(h, w)), transforms.CenterCrop((h, w))])
    return transforms.Compose(
        [
            transforms.Resize(round(min(h, w) * resize_ratio)),
            transforms.RandomCrop((h, w)),
            transforms.RandomHorizontalFlip(),
        ]
    )


def image_folder(
    root: str | Path,
    image_size: int | Sequence[int],
    *,
    channels: int = 3,
    augment: bool = True,
) -> Any:
    """A ``torchvision.datasets.ImageFolder`` (``root/<class>/<image>``) yielding float C×H×W
    tensors in ``[0, 1]`` of ``image_size`` with :func:`default_transform`."""
    from torchvision.datasets import ImageFolder

    if not Path(root).is_dir():
        raise FileNotFoundError(
            f"{root} is not a folder; ImageFolder data is root/<class name>/<image files>."
        )
    return ImageFolder(
        str(root), transform=_ToImage(default_transform(image_size, augment=augment), channels)
    )


class _ToImage:
    """``transform`` then :func:`to_image_tensor` (a class, so loader workers can pickle it)."""

    def __init__(self, transform: Callable[[Any], Any], channels: int | None) -> None:
        self.transform, self.channels = transform, channels

    def __call__(self, image: Any) -> Tensor:
        return to_image_tensor(self.transform(image), self.channels)


class ClassPairBatchSampler(Sampler[list[PairKey]]):
    """Batches of keys ``(position, slot, index)`` for :class:`PairItems`, one per step.

    First ``warmup_steps`` discriminator warm-up batches (``2·B`` images of any class;
    positions ``-1, -2, ...``), then the pairing steps ``start .. steps-1`` (position = step):
    slots ``0..B-1`` are the images ``a`` and ``B..2B-1`` their partners ``b`` of another class
    (uniform among the classes present, then uniform within the class). ``B = batch_size``,
    per process.

    Each batch is drawn from its own generator seeded by ``(seed, step)`` (or the warm-up
    index) for the *global* batch ``batch_size × num_replicas``; rank ``r`` keeps slice ``r``.
    Resume at step ``s`` with ``start=s, warmup_steps=0``.

    Args:
        labels: the dataset's integer labels (at least two classes).
        batch_size: images ``a`` per step and process.
        steps: pairing steps in all (the last one is ``steps - 1``).
        seed: the seed of the order.
        warmup_steps: warm-up batches before the pairing steps.
        start: first pairing step.
        num_replicas, rank: the process group (default: one process).

    Example:
        >>> sampler = ClassPairBatchSampler([0, 0, 1, 1], batch_size=2, steps=3, seed=0)
        >>> keys = next(iter(sampler))  # 2 images a, then their 2 partners b
        >>> [k[1] for k in keys]
        [0, 1, 2, 3]
    """

    def __init__(
        self,
        labels: Tensor | Sequence[int],
        batch_size: int,
        steps: int,
        *,
        seed: int = 0,
        warmup_steps: int = 0,
        start: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        lab = torch.as_tensor(labels).long().flatten()
        self.classes = torch.unique(lab)
        if self.classes.numel() < 2:
            raise ValueError("class pairing needs labels of at least two classes.")
        if batch_size < 1 or steps < 0 or warmup_steps < 0 or start < 0:
            raise ValueError("batch_size must be >= 1 and steps, warmup_steps, start >= 0.")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in 0..{num_replicas - 1}, got {rank}.")
        self.labels = lab
        self.by_class = [torch.nonzero(lab == k).flatten() for k in self.classes.tolist()]
        self.batch_size, self.steps, self.seed = batch_size, steps, seed
        self.warmup_steps, self.start = warmup_steps, start
        self.num_replicas, self.rank = num_replicas, rank

    def __len__(self) -> int:
        return self.warmup_steps + max(self.steps - self.start, 0)

    def __iter__(self) -> Iterator[list[PairKey]]:
        for i in range(self.warmup_steps):
            yield self.keys(-(i + 1))
        for step in range(self.start, self.steps):
            yield self.keys(step)

    def global_indices(self, position: int) -> Tensor:
        """Dataset indices of the global batch at ``position`` (``2·B·W`` of them: for a
        pairing step ``position >= 0``, the ``a`` images then the ``b`` images)."""
        total = self.batch_size * self.num_replicas
        n = self.labels.numel()
        if position < 0:
            g = torch.Generator().manual_seed(step_seed(self.seed, "warmup", -position))
            return torch.randint(0, n, (2 * total,), generator=g)
        g = torch.Generator().manual_seed(step_seed(self.seed, "pairs", position))
        idx_a = torch.randint(0, n, (total,), generator=g)
        pos = torch.searchsorted(self.classes, self.labels[idx_a])
        k = self.classes.numel()
        other = (pos + torch.randint(1, k, (total,), generator=g)) % k
        u = torch.rand(total, generator=g)
        idx_b = torch.stack(
            [
                self.by_class[int(c)][int(ui * self.by_class[int(c)].numel())]
                for c, ui in zip(other, u, strict=True)
            ]
        )
        return torch.cat([idx_a, idx_b])

    def keys(self, position: int) -> list[PairKey]:
        """This rank's keys at ``position``: its slice of the first half, then of the second
        half (slots are global, so augmentation does not depend on the rank)."""
        idx = self.global_indices(position)
        half = idx.numel() // 2
        lo, hi = self.rank * half // self.num_replicas, (self.rank + 1) * half // self.num_replicas
        slots = [*range(lo, hi), *range(half + lo, half + hi)]
        return [(position, s, int(idx[s])) for s in slots]


class PairItems(Dataset[tuple[Tensor, int]]):
    """Wraps a map-style dataset for :class:`ClassPairBatchSampler` keys: item ``(position,
    slot, index)`` is ``dataset[index]`` then ``transform``, both under a torch seed derived
    from ``(seed, position, slot)``, converted by :func:`to_image_tensor`.

    The global RNG is restored afterwards, so the main process's random state is untouched
    when the loader runs without workers.
    """

    def __init__(
        self,
        dataset: Any,
        transform: Callable[[Any], Any] | None = None,
        *,
        seed: int = 0,
        channels: int | None = None,
    ) -> None:
        self.dataset, self.transform, self.seed, self.channels = dataset, transform, seed, channels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: PairKey | int) -> tuple[Tensor, int]:
        position, slot, index = key if isinstance(key, tuple) else (-1, -1, int(key))
        # the dataset's own random transforms (an ImageFolder's) are seeded as well
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step_seed(self.seed, "augment", position, slot))
            item = self.dataset[index]
            image, label = item[0], int(item[1])
            if self.transform is not None:
                image = self.transform(image)
        return to_image_tensor(image, self.channels), label


def collate_pairs(batch: Sequence[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    """Stack ``(image, label)`` items into ``(N×C×H×W, N)``; names the fix when sizes differ."""
    shapes = {tuple(x.shape) for x, _ in batch}
    if len(shapes) > 1:
        raise ValueError(
            f"dataset images have different shapes {sorted(shapes)[:3]}; give a transform "
            "that resizes and crops them to one size (captum_secam.cae.data.default_transform)."
        )
    images = torch.stack([x for x, _ in batch]).float()
    return images, torch.tensor([y for _, y in batch], dtype=torch.long)


def make_pair_loader(
    dataset: Any,
    sampler: ClassPairBatchSampler,
    *,
    transform: Callable[[Any], Any] | None = None,
    seed: int = 0,
    channels: int | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
) -> DataLoader[Any]:
    """A ``DataLoader`` of :class:`PairItems` batches in ``sampler``'s order, with workers
    (persistent, ``prefetch_factor`` batches ahead each) and optionally pinned memory."""
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor or 4}
    return DataLoader(
        PairItems(dataset, transform, seed=seed, channels=channels),
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=collate_pairs,
        **extra,
    )


# ---------------------------------------------------------------- batch sources of train_cae
# Each yields warm-up batches ``(x, y)`` and pairing batches ``(xa, xb, ya, yb)`` on the
# training device, the generator of the instance noise of a step, and the batches of the
# centroids after training.


def fetch_images(dataset: Any, idx: Tensor) -> Tensor:
    """Images ``idx`` of ``dataset`` stacked in the main process (a ``TensorDataset`` is
    indexed directly)."""
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, tuple) and len(tensors) >= 1 and isinstance(tensors[0], Tensor):
        return tensors[0][idx]
    return torch.stack([to_image_tensor(dataset[int(i)][0]) for i in idx])


class StreamSource:
    """The in-process order of earlier versions: every draw comes from one generator that is
    checkpointed with the run (results are bit-identical to them)."""

    kind = "stream"
    dtype = torch.float32  # set to the model's parameter dtype by train_cae

    def __init__(
        self, dataset: Any, lab: Tensor, batch_size: int, gen: torch.Generator, dev: torch.device
    ) -> None:
        self.dataset, self.lab, self.batch_size, self.gen, self.dev = (
            dataset,
            lab,
            batch_size,
            gen,
            dev,
        )
        present = torch.unique(lab)
        self.by_class = {int(k): torch.nonzero(lab == k).flatten() for k in present}
        self.classes = present.clone()

    def sample(self) -> Tensor:
        return fetch_images(self.dataset, torch.tensor([0]))

    def warmup(self, steps: int) -> Iterator[tuple[Tensor, Tensor]]:
        n = self.lab.numel()
        for _ in range(steps):
            idx = torch.randint(0, n, (2 * self.batch_size,), generator=self.gen)
            yield (
                fetch_images(self.dataset, idx).to(self.dev, self.dtype),
                self.lab[idx].to(self.dev),
            )

    def pairs(self, start: int, steps: int) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        n, b, classes, gen = self.lab.numel(), self.batch_size, self.classes, self.gen
        for _ in range(start, steps):
            idx_a = torch.randint(0, n, (b,), generator=gen)
            ya = self.lab[idx_a]
            # other class: uniform among present classes != ya
            pos = torch.searchsorted(classes, ya)
            shift = torch.randint(1, classes.numel(), (b,), generator=gen)
            yb = classes[(pos + shift) % classes.numel()]
            u = torch.rand(b, generator=gen)
            idx_b = torch.stack(
                [
                    self.by_class[int(k)][int(ui * self.by_class[int(k)].numel())]
                    for k, ui in zip(yb, u, strict=True)
                ]
            )
            xa = fetch_images(self.dataset, idx_a).to(self.dev, self.dtype)
            xb = fetch_images(self.dataset, idx_b).to(self.dev, self.dtype)
            yield xa, xb, ya.to(self.dev), yb.to(self.dev)

    def noise_generator(self, step: int) -> torch.Generator:
        return self.gen

    def centroid_batches(
        self, seed: int, centroid_samples: int | None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        order = centroid_order(self.lab, seed, centroid_samples)
        for i in range(0, order.numel(), 256):
            idx = order[i : i + 256]
            yield fetch_images(self.dataset, idx).to(self.dev, self.dtype), self.lab[idx]


def centroid_order(lab: Tensor, seed: int, centroid_samples: int | None) -> Tensor:
    order = torch.randperm(lab.numel(), generator=torch.Generator().manual_seed(seed + 1))
    if centroid_samples is not None:
        order = order[:centroid_samples]
        # make sure every present class is represented
        for cls_id in torch.unique(lab).tolist():
            if not bool((lab[order] == cls_id).any()):
                order = torch.cat([order, torch.nonzero(lab == cls_id).flatten()[:1]])
    return order


class SamplerSource:
    """Batches from a DataLoader with workers over :class:`ClassPairBatchSampler`: each step's
    pairs and augmentation are a function of ``(seed, step)`` and of the global slot, so the
    order survives resumes and changes of the worker count or of the world size."""

    kind = "sampler"
    dtype = torch.float32  # set to the model's parameter dtype by train_cae

    def __init__(
        self,
        dataset: Any,
        lab: Tensor,
        *,
        batch_size: int,
        seed: int,
        dev: torch.device,
        transform: Callable[[Any], Any] | None,
        channels: int,
        num_workers: int,
        pin_memory: bool,
        ctx: DistributedContext,
    ) -> None:
        self.dataset, self.lab, self.batch_size, self.seed, self.dev = (
            dataset,
            lab,
            batch_size,
            seed,
            dev,
        )
        self.items = PairItems(dataset, transform, seed=seed, channels=channels)
        self.num_workers = num_workers
        self.loader_kw: dict[str, Any] = {
            "transform": transform,
            "seed": seed,
            "channels": channels,
            "num_workers": num_workers,
            "pin_memory": pin_memory,
        }
        self.ctx = ctx
        self._iter: Iterator[tuple[Tensor, Tensor]] | None = None

    def sample(self) -> Tensor:
        return self.items[0][0][None]

    def open(self, start: int, steps: int, warmup: int) -> None:
        """Start the loader at pairing step ``start`` (after ``warmup`` warm-up batches)."""
        sampler = ClassPairBatchSampler(
            self.lab,
            self.batch_size,
            steps,
            seed=self.seed,
            warmup_steps=warmup,
            start=start,
            num_replicas=self.ctx.world_size,
            rank=self.ctx.rank,
        )
        self._iter = iter(make_pair_loader(self.dataset, sampler, **self.loader_kw))

    def _next(self) -> tuple[Tensor, Tensor]:
        assert self._iter is not None
        x, y = next(self._iter)
        nb = self.dev.type == "cuda"
        return x.to(self.dev, self.dtype, non_blocking=nb), y.to(self.dev, non_blocking=nb)

    def warmup(self, steps: int) -> Iterator[tuple[Tensor, Tensor]]:
        for _ in range(steps):
            yield self._next()

    def pairs(self, start: int, steps: int) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        for _ in range(start, steps):
            x, y = self._next()
            half = x.shape[0] // 2
            yield x[:half], x[half:], y[:half], y[half:]

    def noise_generator(self, step: int) -> torch.Generator:
        # per step and rank: resumable; instance noise is the one draw that is not rank-invariant
        return torch.Generator().manual_seed(step_seed(self.seed, "noise", step, self.ctx.rank))

    def centroid_batches(
        self, seed: int, centroid_samples: int | None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        order = centroid_order(self.lab, seed, centroid_samples)
        loader = DataLoader(
            torch.utils.data.Subset(self.items, order.tolist()),
            batch_size=256,
            num_workers=self.num_workers,
            collate_fn=collate_pairs,
        )
        for x, y in loader:
            yield x.to(self.dev, self.dtype), y


class LoaderSource:
    """A user's DataLoader of ``(images, labels)`` batches, used as they come: each image is
    paired with an image of another class from the same batch (seeded draw)."""

    kind = "dataloader"
    dtype = torch.float32  # set to the model's parameter dtype by train_cae

    def __init__(
        self, loader: DataLoader[Any], gen: torch.Generator, dev: torch.device, num_classes: int
    ) -> None:
        self.loader, self.gen, self.dev, self.num_classes = loader, gen, dev, num_classes
        self._iter: Iterator[Any] = iter(())
        self.unpaired = 0

    def sample(self) -> Tensor:
        x, _ = self._batch()
        return x[:1]

    def _batch(self) -> tuple[Tensor, Tensor]:
        try:
            batch = next(self._iter)
        except StopIteration:
            self._iter = iter(self.loader)  # a new epoch
            batch = next(self._iter)
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError("the DataLoader must yield (images, labels) batches.")
        x, y = batch[0], torch.as_tensor(batch[1]).long().flatten()
        if not isinstance(x, Tensor):
            raise TypeError(
                f"the DataLoader yields {type(x).__name__} images; give it a transform that "
                "returns tensors (e.g. torchvision.transforms.ToTensor())."
            )
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(
                f"labels must be in 0..{self.num_classes - 1} (the CAE's num_classes), got "
                f"{int(y.min())}..{int(y.max())}."
            )
        return x.to(self.dev, self.dtype), y.to(self.dev)

    def warmup(self, steps: int) -> Iterator[tuple[Tensor, Tensor]]:
        for _ in range(steps):
            yield self._batch()

    def pairs(self, start: int, steps: int) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        for _ in range(start, steps):
            x, y = self._batch()
            yield self._pair_within(x, y)

    def _pair_within(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        other = y[:, None] != y[None, :]
        keys = torch.rand(other.shape, generator=self.gen).to(x.device) * other
        partner = keys.argmax(1)
        ok = other.any(1)
        if not bool(ok.all()):
            self.unpaired += int((~ok).sum())
            if not bool(ok.any()):
                raise ValueError(
                    "a DataLoader batch holds one class only; shuffle the data or use larger "
                    "batches so that every batch has two classes."
                )
        keep = torch.nonzero(ok).flatten()
        return x[keep], x[partner[keep]], y[keep], y[partner[keep]]

    def noise_generator(self, step: int) -> torch.Generator:
        return self.gen

    def centroid_batches(
        self, seed: int, centroid_samples: int | None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        seen = 0
        for batch in self.loader:
            x, y = batch[0], torch.as_tensor(batch[1]).long().flatten()
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x
            yield x.to(self.dev, self.dtype), y
            seen += y.numel()
            if centroid_samples is not None and seen >= centroid_samples:
                return
