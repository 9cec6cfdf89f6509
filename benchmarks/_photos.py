"""The benchmark photo set: real colour photos that install offline (no download).

Sources (all shipped inside wheels that are already dependencies, plus one optional wheel):

* scikit-image (``skimage.data``): astronaut, chelsea, coffee, rocket, stereo_motorcycle (left).
* scikit-learn (``load_sample_images``): china, flower.
* matplotlib (``mpl-data/sample_data/grace_hopper.jpg``).
* imgaug (``imgaug/quokka.jpg``), optional: ``pip install --no-deps imgaug==0.4.0``. The package
  is never imported (it needs OpenCV); only the JPEG file inside it is read. Without it the
  quokka photos are skipped.

To reach 20 photos, crops of the larger photos that show a different object are added (listed in
``CROPS`` with their pixel boxes): e.g. the helmet and the shuttle in ``astronaut``.
Every photo is returned as H×W×3 uint8 at its original resolution; the model sees it resized to
224×224 (``captum_secam.demo_model.preprocess_photo``).

Usage::

    from _photos import load_benchmark_photos
    photos = load_benchmark_photos(20)   # list of (name, H×W×3 uint8)
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from captum_secam.demo_model import as_rgb_uint8

__all__ = ["BASE_PHOTOS", "CROPS", "load_benchmark_photos"]

# name -> (source photo, (row0, row1, col0, col1)); boxes are in the source's full resolution.
CROPS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "astronaut_helmet": ("astronaut", (290, 512, 270, 512)),
    "astronaut_shuttle": ("astronaut", (0, 270, 330, 512)),
    "coffee_cup": ("coffee", (0, 260, 140, 470)),
    "motorcycle_wheel": ("motorcycle", (230, 490, 470, 741)),
    "motorcycle_shelves": ("motorcycle", (0, 210, 280, 741)),
    "china_pagoda": ("china", (0, 400, 150, 480)),
    "china_coast": ("china", (150, 330, 430, 640)),
    "grace_hopper_cap": ("grace_hopper", (0, 260, 100, 420)),
    "rocket_pad": ("rocket", (120, 427, 200, 440)),
    "quokka_head": ("quokka", (60, 420, 200, 620)),
    "chelsea_face": ("chelsea", (40, 300, 60, 400)),
}

BASE_PHOTOS = (
    "chelsea",
    "coffee",
    "astronaut",
    "rocket",
    "motorcycle",
    "china",
    "flower",
    "grace_hopper",
    "quokka",
)


def _quokka_path() -> str | None:
    spec = importlib.util.find_spec("imgaug")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(next(iter(spec.submodule_search_locations)), "quokka.jpg")
    return path if os.path.exists(path) else None


def load_base_photo(name: str) -> np.ndarray | None:
    """One full source photo as H×W×3 uint8, or None if its optional package is missing."""
    import skimage.data
    import skimage.io

    if name in ("astronaut", "chelsea", "coffee", "rocket"):
        return as_rgb_uint8(getattr(skimage.data, name)())
    if name == "motorcycle":
        return as_rgb_uint8(skimage.data.stereo_motorcycle()[0])
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return as_rgb_uint8(load_sample_image(f"{name}.jpg"))
    if name == "grace_hopper":
        import matplotlib

        path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
        return as_rgb_uint8(skimage.io.imread(path))
    if name == "quokka":
        path = _quokka_path()
        return None if path is None else as_rgb_uint8(skimage.io.imread(path))
    raise ValueError(f"unknown photo {name!r}; choose from {BASE_PHOTOS}")


def load_benchmark_photos(n: int | None = None) -> list[tuple[str, np.ndarray]]:
    """The benchmark photos in a fixed order: the 9 full photos first, then the crops.

    Args:
        n: How many to return (``None``: all available: 20 with imgaug installed, 18 without).

    Returns:
        A list of ``(name, H×W×3 uint8)``.
    """
    base: dict[str, np.ndarray] = {}
    for name in BASE_PHOTOS:
        photo = load_base_photo(name)
        if photo is not None:
            base[name] = photo
    photos = list(base.items())
    for name, (source, (r0, r1, c0, c1)) in CROPS.items():
        if source in base:
            photos.append((name, np.ascontiguousarray(base[source][r0:r1, c0:c1])))
    return photos if n is None else photos[:n]
