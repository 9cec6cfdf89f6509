"""SeCam on vision transformers: token layers through a reshape transform (random weights).

The reference is computed here without SeCam or Captum: a forward hook on the layer, the
gradient of the target scores by ``torch.autograd.grad``, the tokens laid out on their grid by
hand, gradient × activation summed over channels, bilinear upsampling and per-segment means.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_secam import SeCam
from captum_secam.transforms import TokensToGrid, channels_last_to_first, vit_reshape_transform

timm = pytest.importorskip("timm", reason="the vit extra (timm) is not installed")

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vit(reg_tokens: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=2,
        num_heads=2,
        embed_dim=16,
        num_classes=5,
        reg_tokens=reg_tokens,
    ).eval()


def tiny_swin() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        img_size=32,
        embed_dim=8,
        depths=(1, 1),
        num_heads=(1, 1),
        window_size=4,
        num_classes=5,
    ).eval()


def random_mask(seed: int, n_segments: int, size: int = 32) -> Tensor:
    """Contiguous ids 0..n_segments-1 on random pixels (not aligned with the patches)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, n_segments, (size * size,), generator=gen)
    ids[:n_segments] = torch.randperm(n_segments, generator=gen)
    return ids.reshape(1, 1, size, size)


def reference_scores(
    model: nn.Module,
    layer: nn.Module,
    to_grid: Callable[[Tensor], Tensor],
    x: Tensor,
    target: Tensor,
    mask: Tensor,
) -> Tensor:
    """Per-segment means of the upsampled Σ_k ∂y/∂A_k · A_k, written out by hand."""
    store: dict[str, Tensor] = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        scores = model(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(scores.gather(1, target[:, None]).sum(), store["a"])
    cam = (to_grid(grad) * to_grid(store["a"])).sum(1, keepdim=True).detach()
    up = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)
    n_segments = int(mask.max()) + 1
    flat = mask.reshape(-1)
    return torch.stack(
        [
            torch.stack([up[i, 0].reshape(-1)[flat == s].mean() for s in range(n_segments)])
            for i in range(x.shape[0])
        ]
    )


def vit_grid(tokens: Tensor, prefix: int = 3, side: int = 4) -> Tensor:
    """Drop the class and register tokens, lay the 16 patch tokens on their 4×4 grid."""
    n, _, d = tokens.shape
    return tokens[:, prefix:].reshape(n, side, side, d).permute(0, 3, 1, 2)


def test_secam_on_a_vit_equals_the_reference():
    model = tiny_vit(reg_tokens=2)  # class token + 2 registers + 4×4 patches
    layer = model.blocks[-1].norm1  # patch tokens reach the class token through attention
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target, mask = torch.tensor([0, 3, 4]), random_mask(2, 12)
    secam = SeCam(model, layer, reshape_transform=vit_reshape_transform(model))
    ours = secam.attribute(x, target=target, feature_mask=mask, return_input_shape=False)
    expected = reference_scores(model, layer, vit_grid, x, target, mask)
    assert expected.abs().max() > 1e-4, "the reference must not be trivially zero"
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    single = secam.attribute(x[1:2], target=3, feature_mask=mask, return_input_shape=False)
    torch.testing.assert_close(single, ours[1:2], rtol=0, atol=1e-6)


def test_secam_on_a_swin_equals_the_reference():
    model = tiny_swin()
    # the final LayerNorm's output, N×4×4×C channels last (its *input* would give
    # Σ_k G_k·A_k ≈ 0: LayerNorm is blind to scaling its input)
    layer = model.norm
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    target, mask = torch.tensor([1, 2]), random_mask(4, 9)
    transform = vit_reshape_transform(model)
    assert transform is channels_last_to_first
    ours = SeCam(model, layer, reshape_transform=transform).attribute(
        x, target=target, feature_mask=mask, return_input_shape=False
    )
    expected = reference_scores(model, layer, lambda t: t.permute(0, 3, 1, 2), x, target, mask)
    assert expected.abs().max() > 1e-4
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_torchvision_vit_layout_is_read_off_the_model():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
        num_classes=5,
    ).eval()  # fmt: skip
    transform = vit_reshape_transform(model)
    assert isinstance(transform, TokensToGrid)
    assert (transform.num_prefix_tokens, transform.grid_size) == (1, (4, 4))
    layer = model.encoder.layers[-1].ln_1
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    target, mask = torch.tensor([4, 0]), random_mask(6, 8)
    ours = SeCam(model, layer, reshape_transform=transform).attribute(
        x, target=target, feature_mask=mask, return_input_shape=False
    )
    expected = reference_scores(model, layer, lambda t: vit_grid(t, prefix=1), x, target, mask)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_tokens_to_grid_keeps_row_major_patch_order():
    tokens = torch.arange(2 * 9 * 2, dtype=torch.float32).reshape(2, 9, 2)  # 1 prefix + 2×4
    grid = TokensToGrid(1, (2, 4))(tokens)
    assert grid.shape == (2, 2, 2, 4)
    torch.testing.assert_close(grid[0, :, 1, 3], tokens[0, 1 + 1 * 4 + 3])
    square = TokensToGrid(num_prefix_tokens=0)(torch.randn(1, 16, 3))
    assert square.shape == (1, 3, 4, 4)


def test_tokens_to_grid_refuses_what_it_cannot_infer():
    with pytest.raises(ValueError, match=r"cannot infer the patch grid.*grid_size"):
        TokensToGrid(1)(torch.randn(1, 1 + 8, 4))  # 8 patches: not a square
    with pytest.raises(ValueError, match="do not fill the 3×3 grid"):
        TokensToGrid(1, (3, 3))(torch.randn(1, 1 + 16, 4))
    with pytest.raises(ValueError, match="N×T×D"):
        TokensToGrid(1)(torch.randn(1, 4, 4, 4))
    with pytest.raises(ValueError, match=">= 0"):
        TokensToGrid(-1)
    with pytest.raises(TypeError, match="int"):
        TokensToGrid(1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="N×h×w×C"):
        channels_last_to_first(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="TokensToGrid"):
        vit_reshape_transform(nn.Linear(2, 2))


def test_wrong_prefix_count_fails_with_the_fix_inside_secam():
    model = tiny_vit(reg_tokens=2)
    secam = SeCam(model, model.blocks[-1].norm1, reshape_transform=TokensToGrid(1))
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        secam.attribute(torch.randn(1, 3, 32, 32), target=0, feature_mask=random_mask(0, 4))
