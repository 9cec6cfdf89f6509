"""Tiny seeded models shared by the tests (no downloads)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import matplotlib
import pytest
import torch
from torch import nn

matplotlib.use("Agg")


class GapLinearNet(nn.Module):
    """conv(stride 2) → ReLU → conv → ReLU [``features_out``] → GAP → linear.

    ``features_out`` feeds global average pooling directly, so gradient × activation there is
    exactly CAM and sums to ``y_c − b_c``.
    """

    def __init__(self, in_channels: int = 3, n_classes: int = 5, width: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, stride=2, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, width, 3, padding=1)
        self.features_out = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, n_classes)
        self.unused = nn.Conv2d(in_channels, 4, 1)  # called in forward, output discarded

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        _ = self.unused(x)
        a = self.features_out(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.pool(a).flatten(1)) * scale


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is faster and robust on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def gap_model() -> GapLinearNet:
    torch.manual_seed(0)
    return GapLinearNet().eval()


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 3, 16, 16)


def grid_mask(height: int, width: int, rows: int, cols: int) -> torch.Tensor:
    """A 1×1×H×W mask of rows×cols rectangular segments, ids row-major."""
    r = torch.arange(height)[:, None] * rows // height
    c = torch.arange(width)[None, :] * cols // width
    return (r * cols + c)[None, None].long()


def tiny_reference_cae(channels: int = 1, classes: int = 2, size: int = 16) -> Any:
    """A tiny seeded CAE in the reference layout (two down-sampling steps, AdaIN in the
    residual blocks only, mean pooling): the seeded flips and brightness margins of the CAE
    tests were built on it, not on the small-CPU-recipe defaults."""
    from captum_secam.cae import ClassAssociationEmbedding

    torch.manual_seed(0)
    return ClassAssociationEmbedding(
        size,
        channels,
        classes,
        class_code_dim=4,
        base_channels=4,
        n_res_blocks=1,
        mlp_dim=8,
        disc_channels=4,
        up_kernel=3,
        n_downsample=2,
        adain_upsampling=False,
        pooling="mean",
        disc_downsample=2,
        class_edit_mask=False,
    ).eval()
