"""Where the images come from, and the work DataLoader workers do on each one.

An :class:`ImageSource` fixes the job's image order once (a folder is listed recursively and
sorted by relative path; a list keeps its order; a torch ``Dataset`` keeps its indices), so an
image's id and shard never change between runs. :func:`prepare_image` is the per-image work
that runs in DataLoader workers (or Ray tasks): decode, resize, preprocess and segment. A file
that cannot be decoded becomes an error record; it never stops the job.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from captum_secam.segmentation import segment

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageSource",
    "Normalize",
    "PreparedImage",
    "decode_image",
    "list_image_files",
    "prepare_image",
]

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp")


class Normalize:
    """Picklable preprocessing: ``(photo − mean) / std`` on 0..255 RGB, as a C×H×W float32.

    ``Normalize(127, 128)`` is EfficientNet-Lite's ``(x − 127)/128``; ``Normalize((123.675,
    116.28, 103.53), (58.395, 57.12, 57.375))`` is the usual ImageNet normalisation;
    ``Normalize(0, 255)`` maps to [0, 1].
    """

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        self.mean = tuple(float(v) for v in np.atleast_1d(np.asarray(mean, dtype=np.float64)))
        self.std = tuple(float(v) for v in np.atleast_1d(np.asarray(std, dtype=np.float64)))
        if len(self.mean) not in (1, 3) or len(self.std) not in (1, 3):
            raise ValueError("mean and std must be one number or one per RGB channel")
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")

    def __call__(self, photo: np.ndarray) -> Tensor:
        x = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1).float()
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={list(self.mean)}, std={list(self.std)})"


def describe_callable(func: Callable[..., Any]) -> str:
    """A stable text naming a preprocessing function (stored in the run's configuration)."""
    if isinstance(func, Normalize):
        return repr(func)
    module = getattr(func, "__module__", type(func).__module__)
    name = getattr(func, "__qualname__", type(func).__qualname__)
    return f"{module}.{name}"


def list_image_files(root: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Image files under ``root`` (recursive) by extension, sorted by relative path.

    Returns:
        ``(images, ignored)``: relative POSIX paths of the files with an image extension
        (:data:`IMAGE_EXTENSIONS`, any case) and of the other files.
    """
    images: list[str] = []
    ignored: list[str] = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in files:
            rel = os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/")
            is_image = os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
            (images if is_image else ignored).append(rel)
    return sorted(images), sorted(ignored)


@dataclass(frozen=True)
class ImageSource:
    """The job's images in their fixed order.

    Attributes:
        paths: Per image id, the path stored in the output (relative to ``root`` for a
            folder, as given for a list, ``None`` for a torch Dataset).
        root: The folder, or ``None``.
        dataset: The torch Dataset, or ``None``.
        ignored: Files of the folder that do not have an image extension.
    """

    paths: tuple[str | None, ...]
    root: str | None = None
    dataset: Any = None
    ignored: tuple[str, ...] = ()

    @classmethod
    def from_input(cls, images: Any) -> ImageSource:
        """Build from a folder, a list of files or a torch ``Dataset``.

        Raises:
            ValueError: A missing folder, a folder with no image files, an empty or
                duplicated list, or a missing listed file.
            TypeError: Anything else.
        """
        if isinstance(images, (str, os.PathLike)):
            root = os.fspath(images)
            if not os.path.isdir(root):
                raise ValueError(f"{root!r} is not a folder; pass a folder of images or a list")
            found, ignored = list_image_files(root)
            if not found:
                raise ValueError(
                    f"no image files in {root!r} (looked for {', '.join(IMAGE_EXTENSIONS)}, "
                    f"any case, in all subfolders; {len(ignored)} other files ignored)"
                )
            return cls(tuple(found), root=os.path.abspath(root), ignored=tuple(ignored))
        if isinstance(images, torch.utils.data.Dataset):
            n = len(images)  # type: ignore[arg-type]
            if n == 0:
                raise ValueError("the torch Dataset is empty; there is nothing to explain")
            return cls(tuple([None] * n), dataset=images)
        if isinstance(images, Sequence) and not isinstance(images, bytes):
            paths = [os.fspath(p) for p in images]
            if not paths:
                raise ValueError("the list of image files is empty; there is nothing to explain")
            if len(set(paths)) != len(paths):
                raise ValueError("the list of image files has duplicates; list each file once")
            missing = [p for p in paths if not os.path.isfile(p)]
            if missing:
                raise ValueError(f"{len(missing)} listed files do not exist, e.g. {missing[0]!r}")
            return cls(tuple(paths))
        raise TypeError(
            "images must be a folder path, a list of image file paths or a torch Dataset, got "
            f"{type(images).__name__}"
        )

    def __len__(self) -> int:
        return len(self.paths)

    def file(self, image_id: int) -> str:
        """The file to open for an image id (files only)."""
        path = self.paths[image_id]
        assert path is not None
        return path if self.root is None else os.path.join(self.root, path)

    def fingerprint(self) -> str:
        """Identifies the image list (part of the run's configuration)."""
        if self.dataset is not None:
            return f"dataset:{type(self.dataset).__qualname__}:{len(self)}"
        digest = hashlib.sha256("\n".join(p or "" for p in self.paths).encode()).hexdigest()
        return f"files:{len(self)}:{digest[:16]}"

    def load(self, image_id: int) -> tuple[Any, float]:
        """The raw item (bytes of a file, or the Dataset's item) and its read time in ms."""
        start = time.perf_counter()
        if self.dataset is not None:
            item = self.dataset[image_id]
        else:
            with open(self.file(image_id), "rb") as handle:
                item = handle.read()
        return item, (time.perf_counter() - start) * 1000.0


def decode_image(item: Any, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode to an ``image_size``×``image_size``×3 uint8 RGB photo.

    ``item`` is the bytes of an image file, a PIL image, a numpy photo (H×W, H×W×3, H×W×4;
    uint8 or floats in [0, 1]), a C×H×W tensor in [0, 1] (torchvision's ``ToTensor``), or a
    ``(image, label)`` tuple from a Dataset. Grayscale becomes RGB, alpha is dropped, EXIF
    orientation is applied; the photo is resized (bilinear, anti-aliased) to a square.

    Returns:
        The resized photo and the original ``(width, height)``.
    """
    from PIL import Image, ImageOps

    if isinstance(item, tuple) and item:
        item = item[0]
    image: Image.Image
    if isinstance(item, (bytes, bytearray)):
        opened = Image.open(io.BytesIO(item))
        opened.load()
        image = ImageOps.exif_transpose(opened)
    elif isinstance(item, Image.Image):
        image = item
    else:
        image = Image.fromarray(_array_to_uint8(item))
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit PNG: keep the top 8 bits
        wide = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.clip(wide / 257.0, 0, 255).round().astype(np.uint8))
    size = image.size
    rgb = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.array(rgb, dtype=np.uint8), (int(size[0]), int(size[1]))


def _array_to_uint8(item: Any) -> np.ndarray:
    if isinstance(item, Tensor):
        if item.dim() != 3 or item.shape[0] not in (1, 3, 4):
            raise ValueError(f"tensor images must be C×H×W, got {tuple(item.shape)}")
        item = item.detach().cpu().permute(1, 2, 0).numpy()
    array = np.asarray(item)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"images must be H×W, H×W×3 or H×W×4, got shape {array.shape}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"images must be uint8 or floats in [0, 1], got {array.dtype}")
    return np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)


@dataclass
class PreparedImage:
    """One image after the worker's work (``inputs``/``mask`` are None when it failed)."""

    image_id: int
    inputs: Tensor | None
    mask: Tensor | None
    width: int | None
    height: int | None
    error: str | None
    decode_ms: float
    segment_ms: float


def prepare_image(
    image_id: int,
    item: Any,
    read_ms: float,
    image_size: int,
    preprocess: Callable[[np.ndarray], Tensor],
    segmentation: dict[str, Any] | None,
) -> PreparedImage:
    """Decode, resize, preprocess and (unless ``segmentation`` is None) segment one image.

    Decoding errors are recorded in ``error``; a preprocess function that returns the wrong
    shape raises, since it is a bug in the job's setup, not in one file.
    """
    start = time.perf_counter()
    try:
        photo, (width, height) = decode_image(item, image_size)
    except Exception as err:  # any decoder failure is a property of this one file
        return PreparedImage(image_id, None, None, None, None, _reason(err), read_ms, 0.0)
    inputs = preprocess(photo)
    if not isinstance(inputs, Tensor) or inputs.dim() != 3 or inputs.shape[1:] != photo.shape[:2]:
        raise ValueError(
            f"preprocess must return a C×{image_size}×{image_size} tensor for a {image_size}²"
            f" photo, got {getattr(inputs, 'shape', type(inputs))}; resizing is done by the "
            "job (image_size), preprocess should only convert and normalise"
        )
    decode_ms = read_ms + (time.perf_counter() - start) * 1000.0
    mask = None
    start = time.perf_counter()
    if segmentation is not None:
        mask = segment(photo, **segmentation)[0, 0].to(torch.int32)
    segment_ms = (time.perf_counter() - start) * 1000.0
    return PreparedImage(image_id, inputs, mask, width, height, None, decode_ms, segment_ms)


def _reason(err: BaseException) -> str:
    """The error as text without object addresses, so reruns record the same reason."""
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "<file>", str(err)).strip() or "no message"
    return f"{type(err).__name__}: {text}"
