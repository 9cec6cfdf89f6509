"""Reshape transforms: bring a layer's activations into the N×K×h×w layout SeCam needs.

A vision transformer's blocks return token sequences N×T×D: ``p`` prefix tokens (the class
token and any register or distillation tokens) followed by ``h·w`` patch tokens in row-major
order. :class:`TokensToGrid` drops the prefix and lays the patch tokens out on their grid,
N×D×h×w. Swin-style models return channels-last maps N×h×w×C: :func:`channels_last_to_first`
permutes them. Pass either as ``SeCam(model, layer, reshape_transform=...)``; the transform is
applied to the activations and to their gradients alike, so gradient × activation is the
same sum over the kept tokens.

Example:
    >>> tokens = torch.randn(2, 1 + 4 * 4, 8)          # class token + a 4×4 grid, width 8
    >>> TokensToGrid(num_prefix_tokens=1)(tokens).shape
    torch.Size([2, 8, 4, 4])
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

__all__ = ["TokensToGrid", "channels_last_to_first", "vit_reshape_transform"]


class TokensToGrid:
    """Turn ViT tokens N×T×D into a patch grid N×D×h×w, prefix tokens removed.

    Args:
        num_prefix_tokens: Tokens before the patch tokens (class, register, distillation):
            1 for a plain ViT, ``model.num_prefix_tokens`` in timm.
        grid_size: ``(h, w)`` of the patch grid. ``None`` infers a square grid from the
            number of patch tokens and refuses when that number is not a square.

    Raises:
        ValueError: at call time, when the tokens are not N×T×D or ``T − num_prefix_tokens``
            does not fill the grid.
    """

    def __init__(self, num_prefix_tokens: int = 1, grid_size: tuple[int, int] | None = None):
        if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int):
            raise TypeError(f"num_prefix_tokens must be an int, got {num_prefix_tokens!r}")
        if num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
        if grid_size is not None:
            grid_size = (int(grid_size[0]), int(grid_size[1]))
            if min(grid_size) < 1:
                raise ValueError(f"grid_size must be two positive ints, got {grid_size}")
        self.num_prefix_tokens = num_prefix_tokens
        self.grid_size = grid_size

    def __repr__(self) -> str:
        return (
            f"TokensToGrid(num_prefix_tokens={self.num_prefix_tokens}, grid_size={self.grid_size})"
        )

    def grid(self, n_tokens: int) -> tuple[int, int]:
        """The ``(h, w)`` grid for a sequence of ``n_tokens`` tokens (prefix included)."""
        n_patches = n_tokens - self.num_prefix_tokens
        if self.grid_size is not None:
            height, width = self.grid_size
            if height * width != n_patches:
                raise ValueError(
                    f"the layer returns {n_tokens} tokens: {self.num_prefix_tokens} prefix + "
                    f"{n_patches} patch tokens, which do not fill the {height}×{width} grid "
                    f"({height * width} patches); check num_prefix_tokens (class + register "
                    "tokens) and grid_size (input size / patch size)"
                )
            return height, width
        side = math.isqrt(max(n_patches, 0))
        if n_patches < 1 or side * side != n_patches:
            raise ValueError(
                f"cannot infer the patch grid: the layer returns {n_tokens} tokens, "
                f"{n_patches} after removing {self.num_prefix_tokens} prefix tokens, which is "
                "not a square number; pass grid_size=(h, w) for non-square inputs, or the "
                "right num_prefix_tokens (class + register tokens; timm: "
                "model.num_prefix_tokens), or use vit_reshape_transform(model)"
            )
        return side, side

    def __call__(self, tokens: Tensor) -> Tensor:
        if not isinstance(tokens, Tensor) or tokens.dim() != 3:
            shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(
                f"TokensToGrid expects a token sequence N×T×D, got {shape}; pick a "
                "transformer block (e.g. model.blocks[-1].norm1) or another transform"
            )
        n, n_tokens, width = tokens.shape
        height, grid_width = self.grid(n_tokens)
        patches = tokens[:, self.num_prefix_tokens :, :]
        return patches.reshape(n, height, grid_width, width).permute(0, 3, 1, 2)


def channels_last_to_first(maps: Tensor) -> Tensor:
    """N×h×w×C (Swin-style stages, timm's NHWC features) to N×C×h×w."""
    if not isinstance(maps, Tensor) or maps.dim() != 4:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"channels_last_to_first expects an N×h×w×C tensor, got {shape}")
    return maps.permute(0, 3, 1, 2)


def vit_reshape_transform(model: nn.Module) -> Any:
    """The reshape transform for a timm or torchvision vision transformer.

    Reads the number of prefix tokens and the patch grid from the model: timm ViTs
    (``num_prefix_tokens``, ``patch_embed.grid_size``), torchvision ``VisionTransformer``
    (one class token, ``image_size // patch_size``); Swin models (timm, torchvision) get
    :func:`channels_last_to_first`.

    Raises:
        ValueError: the model is none of these; build a :class:`TokensToGrid` yourself.
    """
    patch_embed = getattr(model, "patch_embed", None)
    grid = getattr(patch_embed, "grid_size", None)
    prefix = getattr(model, "num_prefix_tokens", None)
    if isinstance(prefix, int) and grid is not None:
        return TokensToGrid(prefix, (int(grid[0]), int(grid[1])))
    if type(model).__name__.startswith("SwinTransformer"):  # timm and torchvision: NHWC stages
        return channels_last_to_first
    image_size, patch_size = getattr(model, "image_size", None), getattr(model, "patch_size", None)
    if isinstance(image_size, int) and isinstance(patch_size, int) and hasattr(model, "encoder"):
        side = image_size // patch_size
        return TokensToGrid(1, (side, side))
    raise ValueError(
        f"cannot read the token layout of {type(model).__name__}; build the transform "
        "yourself: TokensToGrid(num_prefix_tokens=..., grid_size=(h, w)) for token sequences, "
        "or channels_last_to_first for N×h×w×C maps"
    )
