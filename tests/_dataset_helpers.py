"""Shared by the dataset tests: a tiny seeded CNN and a folder of small, varied image files.

Kept in a module of its own so the crash-test subprocesses and Ray workers can import the
model class without importing a test module.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

IMAGE_SIZE = 32
SEGMENTATION: dict[str, Any] = {"n_segments": 8, "working_size": None, "max_num_iter": 4}
N_GOOD = 9  # decodable images written by make_folder


class TinyNet(nn.Module):
    """conv(stride 2) -> ReLU -> conv -> ReLU [``features``] -> GAP -> linear (5 classes)."""

    def __init__(self, n_classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.features = nn.ReLU()
        self.fc = nn.Linear(6, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(self.conv2(self.act(self.conv1(x))))
        return self.fc(a.mean(dim=(2, 3)))


def tiny_model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet().eval()


def blocky_photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A photo of a few flat coloured rectangles (regions SLIC can find), uint8 H×W×3."""
    photo = np.empty((height, width, 3), dtype=np.uint8)
    photo[:] = rng.integers(0, 256, 3)
    for _ in range(4):
        r0, c0 = rng.integers(0, height - 4), rng.integers(0, width - 4)
        r1, c1 = r0 + rng.integers(4, height // 2 + 5), c0 + rng.integers(4, width // 2 + 5)
        photo[r0:r1, c0:c1] = rng.integers(0, 256, 3)
    return photo


def make_folder(root: str, seed: int = 0) -> dict[str, str]:
    """Write N_GOOD decodable images (mixed sizes, RGB/gray/RGBA/16-bit, PNG/JPEG, a
    subfolder), a corrupt JPEG, a truncated PNG and a text file. Returns name -> kind."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "sub"), exist_ok=True)
    kinds: dict[str, str] = {}
    sizes = [(40, 40), (30, 52), (64, 48), (36, 36), (50, 41), (44, 60), (40, 40), (33, 47)]
    for i, (h, w) in enumerate(sizes):
        photo = blocky_photo(rng, h, w)
        if i == 1:
            Image.fromarray(photo).convert("L").save(os.path.join(root, "gray.png"))
            kinds["gray.png"] = "gray"
        elif i == 2:
            rgba = np.dstack([photo, rng.integers(0, 256, (h, w), dtype=np.uint8)])
            Image.fromarray(rgba).save(os.path.join(root, "alpha.png"))
            kinds["alpha.png"] = "rgba"
        elif i == 3:
            Image.fromarray(photo).save(os.path.join(root, "photo.JPG"), quality=92)
            kinds["photo.JPG"] = "jpeg"
        elif i == 4:
            wide = (photo[..., 0].astype(np.uint16) * 257).astype(np.uint16)
            Image.fromarray(wide).save(os.path.join(root, "wide16.png"))
            kinds["wide16.png"] = "gray16"
        else:
            name = f"sub/img{i}.png" if i == 5 else f"img{i}.png"
            Image.fromarray(photo).save(os.path.join(root, name))
            kinds[name] = "rgb"
    last = blocky_photo(rng, 28, 28)
    Image.fromarray(last).save(os.path.join(root, "z_last.png"))
    kinds["z_last.png"] = "rgb"
    with open(os.path.join(root, "broken.jpg"), "wb") as handle:
        handle.write(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    kinds["broken.jpg"] = "corrupt"
    with open(os.path.join(root, "img0.png"), "rb") as handle:
        data = handle.read()
    with open(os.path.join(root, "truncated.png"), "wb") as handle:
        handle.write(data[: len(data) // 2])
    kinds["truncated.png"] = "corrupt"
    with open(os.path.join(root, "readme.txt"), "w") as handle:
        handle.write("not an image")
    return kinds
