"""SeCam: reference checks, properties, Captum interoperability and do-no-harm."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import (
    LayerGradCam,
    LayerGradientXActivation,
    NoiseTunnel,
)
from captum.attr import visualization as viz
from captum.metrics import infidelity, sensitivity_max
from conftest import GapLinearNet, grid_mask
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_secam import SeCam, scores_to_mask, segment, segment_means

SETTINGS = settings(max_examples=25, deadline=None)


def reference_base_map(model: GapLinearNet, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Σ_k ∂y_c/∂A_k · A_k at ``features_out`` from a plain hook (independent of Captum)."""
    store: dict[str, torch.Tensor] = {}
    handle = model.features_out.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        out = model(x)
    finally:
        handle.remove()
    selected = out.gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(selected, store["a"])
    return (grad * store["a"]).sum(1, keepdim=True).detach()


def random_mask(seed: int, n_segments: int, height: int = 16, width: int = 16) -> torch.Tensor:
    """A contiguous random mask: every id 0..n_segments-1 appears (first pixels seeded)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, n_segments, (height * width,), generator=gen)
    ids[:n_segments] = torch.randperm(n_segments, generator=gen)
    return ids.reshape(1, 1, height, width)


# ----------------------------------------------------------------------------------------------
# Reference values
# ----------------------------------------------------------------------------------------------


def test_one_pixel_segments_give_the_upsampled_base_map(gap_model, images):
    target = torch.tensor([0, 3, 4])
    mask = torch.arange(16 * 16).reshape(1, 1, 16, 16)
    attr = SeCam(gap_model, gap_model.features_out).attribute(
        images, target=target, feature_mask=mask
    )
    expected = F.interpolate(
        reference_base_map(gap_model, images, target), (16, 16), mode="bilinear"
    )
    torch.testing.assert_close(attr, expected.expand(-1, 3, -1, -1), rtol=1e-5, atol=1e-6)


def test_gap_linear_completeness_identity(gap_model, images):
    """Σ_s area(s)·score(s) = (H·W)/(h·w) · (y_c − b_c) with nearest upsampling."""
    target = torch.tensor([1, 2, 0])
    mask = grid_mask(16, 16, 3, 5)
    scores = SeCam(gap_model, gap_model.features_out).attribute(
        images,
        target=target,
        feature_mask=mask,
        interpolate_mode="nearest",
        return_input_shape=False,
    )
    areas = torch.bincount(mask.flatten()).float()
    with torch.no_grad():
        logits = gap_model(images)
    y_minus_b = logits.gather(1, target[:, None]).squeeze(1) - gap_model.fc.bias[target]
    lhs = (scores * areas).sum(1)
    torch.testing.assert_close(lhs, (16 * 16) / (8 * 8) * y_minus_b, rtol=1e-4, atol=1e-5)


def test_grad_cam_base_uses_mean_gradient_weights(gap_model, images):
    mask = torch.arange(16 * 16).reshape(1, 1, 16, 16)
    ours = SeCam(gap_model, gap_model.features_out).attribute(
        images, target=2, feature_mask=mask, base="grad_cam"
    )
    captum = LayerGradCam(gap_model, gap_model.features_out).attribute(
        images, target=2, relu_attributions=False
    )
    expected = F.interpolate(captum.detach(), (16, 16), mode="bilinear")
    torch.testing.assert_close(ours[:, :1], expected, rtol=1e-5, atol=1e-6)


def test_captum_layer_attribution_as_base_matches_builtin(gap_model, images):
    mask = grid_mask(16, 16, 4, 4)
    secam = SeCam(gap_model, gap_model.features_out)
    builtin = secam.attribute(images, target=1, feature_mask=mask)
    via_captum = secam.attribute(
        images,
        target=1,
        feature_mask=mask,
        base=LayerGradientXActivation(gap_model, gap_model.features_out),
    )
    torch.testing.assert_close(builtin, via_captum, rtol=1e-5, atol=1e-6)


def test_target_none_explains_the_predicted_class(gap_model, images):
    mask = grid_mask(16, 16, 2, 2)
    secam = SeCam(gap_model, gap_model.features_out)
    predicted = gap_model(images).argmax(1)
    torch.testing.assert_close(
        secam.attribute(images, feature_mask=mask),
        secam.attribute(images, target=predicted, feature_mask=mask),
    )


def test_additional_forward_args_reach_the_model(gap_model, images):
    mask = grid_mask(16, 16, 2, 2)
    secam = SeCam(gap_model, gap_model.features_out)
    plain = secam.attribute(images, target=0, feature_mask=mask)
    scaled = secam.attribute(images, target=0, feature_mask=mask, additional_forward_args=(3.0,))
    torch.testing.assert_close(scaled, 3.0 * plain, rtol=1e-5, atol=1e-6)


def test_relu_attributions_keeps_only_positive_evidence(gap_model, images):
    mask = torch.arange(16 * 16).reshape(1, 1, 16, 16)
    secam = SeCam(gap_model, gap_model.features_out)
    signed = secam.attribute(images, target=0, feature_mask=mask, interpolate_mode="nearest")
    relu = secam.attribute(
        images, target=0, feature_mask=mask, interpolate_mode="nearest", relu_attributions=True
    )
    assert bool((signed < 0).any()), "the test needs negative evidence to be meaningful"
    torch.testing.assert_close(relu, signed.clamp_min(0))


def test_default_segmentation_is_used_when_no_mask_given(gap_model):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32)
    secam = SeCam(gap_model, gap_model.features_out)
    attr = secam.attribute(x, target=0, segmentation={"method": "grid", "n_segments": 16})
    expected = secam.attribute(x, target=0, feature_mask=segment(x, "grid", n_segments=16))
    torch.testing.assert_close(attr, expected)
    assert attr.unique().numel() > 1


def test_tuple_inputs_return_a_tuple(images):
    class TwoInputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = GapLinearNet()

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.net(a + b)

    torch.manual_seed(0)
    model = TwoInputs().eval()
    mask = grid_mask(16, 16, 2, 2)
    out = SeCam(model, model.net.features_out).attribute(
        (images, images[:, :1].expand(-1, 3, -1, -1) * 0), target=0, feature_mask=mask
    )
    assert isinstance(out, tuple) and len(out) == 2
    single = SeCam(model.net, model.net.features_out).attribute(images, target=0, feature_mask=mask)
    torch.testing.assert_close(out[0], single)


# ----------------------------------------------------------------------------------------------
# Properties (Hypothesis)
# ----------------------------------------------------------------------------------------------


@SETTINGS
@given(seed=st.integers(0, 10_000), n_segments=st.integers(1, 20), target=st.integers(0, 4))
def test_output_is_constant_on_each_segment(seed, n_segments, target):
    torch.manual_seed(seed)
    model = GapLinearNet().eval()
    x = torch.randn(2, 3, 16, 16)
    mask = random_mask(seed, n_segments)
    attr = SeCam(model, model.features_out).attribute(x, target=target, feature_mask=mask)
    for j in range(n_segments):
        values = attr[:, :, mask[0, 0] == j]
        assert torch.allclose(values, values[..., :1].expand_as(values))


@SETTINGS
@given(seed=st.integers(0, 10_000), n_segments=st.integers(1, 20))
def test_aggregating_twice_changes_nothing(seed, n_segments):
    torch.manual_seed(seed)
    values = torch.randn(2, 3, 16, 16)
    mask = random_mask(seed, n_segments)
    once = segment_means(values, mask)
    twice = segment_means(scores_to_mask(once, mask, n_channels=3), mask)
    torch.testing.assert_close(once, twice)


@SETTINGS
@given(seed=st.integers(0, 10_000), n_segments=st.integers(2, 20))
def test_permuting_segment_ids_permutes_scores_only(seed, n_segments):
    torch.manual_seed(seed)
    model = GapLinearNet().eval()
    x = torch.randn(1, 3, 16, 16)
    mask = random_mask(seed, n_segments)
    perm = torch.randperm(n_segments, generator=torch.Generator().manual_seed(seed + 1))
    permuted = perm[mask]
    secam = SeCam(model, model.features_out)
    attr = secam.attribute(x, target=1, feature_mask=mask)
    attr_perm = secam.attribute(x, target=1, feature_mask=permuted)
    torch.testing.assert_close(attr, attr_perm)
    scores = secam.attribute(x, target=1, feature_mask=mask, return_input_shape=False)
    scores_perm = secam.attribute(x, target=1, feature_mask=permuted, return_input_shape=False)
    torch.testing.assert_close(scores_perm[:, perm], scores)


@SETTINGS
@given(seed=st.integers(0, 10_000))
def test_one_segment_gives_the_mean_of_the_map(seed):
    torch.manual_seed(seed)
    model = GapLinearNet().eval()
    x = torch.randn(2, 3, 16, 16)
    secam = SeCam(model, model.features_out)
    one = secam.attribute(x, target=2, feature_mask=torch.zeros(16, 16, dtype=torch.long))
    pixels = secam.attribute(x, target=2, feature_mask=torch.arange(256).reshape(16, 16))
    torch.testing.assert_close(one, pixels.mean(dim=(1, 2, 3), keepdim=True).expand_as(one))


@SETTINGS
@given(seed=st.integers(0, 10_000), n_segments=st.integers(1, 12))
def test_batch_equals_per_image_and_follows_permutations(seed, n_segments):
    torch.manual_seed(seed)
    model = GapLinearNet().eval()
    x = torch.randn(4, 3, 16, 16)
    targets = torch.randint(0, 5, (4,))
    masks = torch.cat([random_mask(seed + i, n_segments) for i in range(4)])
    secam = SeCam(model, model.features_out)
    batch = secam.attribute(x, target=targets, feature_mask=masks)
    singles = torch.cat(
        [
            secam.attribute(x[i : i + 1], target=int(targets[i]), feature_mask=masks[i : i + 1])
            for i in range(4)
        ]
    )
    torch.testing.assert_close(batch, singles, rtol=1e-5, atol=1e-6)
    order = torch.randperm(4, generator=torch.Generator().manual_seed(seed))
    permuted = secam.attribute(x[order], target=targets[order], feature_mask=masks[order])
    torch.testing.assert_close(permuted, batch[order], rtol=1e-5, atol=1e-6)


@SETTINGS
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 4), cols=st.integers(1, 4))
def test_completeness_identity_holds_for_random_models(seed, rows, cols):
    torch.manual_seed(seed)
    model = GapLinearNet().eval()
    x = torch.randn(2, 3, 16, 16)
    mask = grid_mask(16, 16, rows, cols)
    scores = SeCam(model, model.features_out).attribute(
        x, target=3, feature_mask=mask, interpolate_mode="nearest", return_input_shape=False
    )
    areas = torch.bincount(mask.flatten()).float()
    with torch.no_grad():
        y = model(x)[:, 3] - model.fc.bias[3]
    torch.testing.assert_close((scores * areas).sum(1), 4.0 * y, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Output conventions and Captum interoperability
# ----------------------------------------------------------------------------------------------


def test_output_is_detached_and_shaped_like_the_input(gap_model, images):
    x = images.clone().requires_grad_(True)
    mask = grid_mask(16, 16, 2, 3)
    attr = SeCam(gap_model, gap_model.features_out).attribute(x, target=0, feature_mask=mask)
    assert attr.shape == x.shape and not attr.requires_grad and attr.dtype == x.dtype
    scores = SeCam(gap_model, gap_model.features_out).attribute(
        x, target=0, feature_mask=mask, return_input_shape=False
    )
    assert scores.shape == (3, 6) and not scores.requires_grad
    torch.testing.assert_close(scores_to_mask(scores, mask, 3), attr)


def test_per_segment_scores_pad_images_with_fewer_segments_with_zeros(gap_model, images):
    masks = torch.cat([grid_mask(16, 16, 2, 2), grid_mask(16, 16, 1, 2), grid_mask(16, 16, 1, 1)])
    scores = SeCam(gap_model, gap_model.features_out).attribute(
        images, target=0, feature_mask=masks, return_input_shape=False
    )
    assert scores.shape == (3, 4)
    assert torch.all(scores[1, 2:] == 0) and torch.all(scores[2, 1:] == 0)


def test_works_inside_noise_tunnel(gap_model, images):
    mask = grid_mask(16, 16, 2, 2)
    nt = NoiseTunnel(SeCam(gap_model, gap_model.features_out))
    attr = nt.attribute(
        images, nt_type="smoothgrad", nt_samples=4, stdevs=0.0, target=[0, 1, 2], feature_mask=mask
    )
    plain = SeCam(gap_model, gap_model.features_out).attribute(
        images, target=[0, 1, 2], feature_mask=mask
    )
    torch.testing.assert_close(attr, plain, rtol=1e-5, atol=1e-6)  # zero noise: same result


def test_works_with_captum_metrics(gap_model, images):
    mask = grid_mask(16, 16, 2, 2)
    secam = SeCam(gap_model, gap_model.features_out)
    attr = secam.attribute(images, target=0, feature_mask=mask)

    def perturb(inputs: torch.Tensor):
        noise = torch.randn_like(inputs) * 0.01
        return noise, inputs - noise

    torch.manual_seed(0)
    inf = infidelity(gap_model, perturb, images, attr, target=0)
    sens = sensitivity_max(
        secam.attribute, images, target=0, feature_mask=mask, n_perturb_samples=2
    )
    assert inf.shape == (3,) and torch.isfinite(inf).all()
    assert sens.shape == (3,) and torch.isfinite(sens).all() and (sens >= 0).all()


@pytest.mark.parametrize(
    ("method", "sign"),
    [
        ("heat_map", "all"),
        ("heat_map", "positive"),
        ("blended_heat_map", "absolute_value"),
        ("original_image", "all"),
        ("masked_image", "positive"),
        ("alpha_scaling", "positive"),
    ],
)
def test_every_visualization_method_accepts_the_output(gap_model, images, method, sign):
    mask = grid_mask(16, 16, 2, 2)
    attr = SeCam(gap_model, gap_model.features_out).attribute(images, target=0, feature_mask=mask)
    attr = attr + 1e-3  # make sure the positive part is not empty
    photo = (images[0] - images[0].min()) / (images[0].max() - images[0].min())
    fig, _ = viz.visualize_image_attr(
        attr[0].permute(1, 2, 0).numpy(),
        photo.permute(1, 2, 0).numpy(),
        method=method,
        sign=sign,
        use_pyplot=False,
    )
    assert fig is not None


# ----------------------------------------------------------------------------------------------
# Bad input: errors that say what to fix
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def secam(gap_model):
    return SeCam(gap_model, gap_model.features_out)


def test_rejects_non_4d_inputs(secam, images):
    with pytest.raises(ValueError, match="unsqueeze"):
        secam.attribute(images[0], target=0)
    with pytest.raises(ValueError, match="N×F feature vectors"):
        secam.attribute(images.flatten(), target=0)


def test_rejects_channels_last(secam, images):
    with pytest.raises(ValueError, match=r"permute\(0, 3, 1, 2\)"):
        secam.attribute(images.permute(0, 2, 3, 1).contiguous(), target=0)


def test_rejects_non_finite_inputs(secam, images):
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        secam.attribute(bad, target=0, feature_mask=grid_mask(16, 16, 2, 2))
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        secam.attribute(bad, target=0, feature_mask=grid_mask(16, 16, 2, 2))


def test_rejects_integer_images(secam):
    with pytest.raises(TypeError, match="float"):
        secam.attribute(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), target=0)


def test_rejects_mask_of_wrong_size(secam, images):
    with pytest.raises(ValueError, match="segment the image at the input size"):
        secam.attribute(images, target=0, feature_mask=grid_mask(8, 8, 2, 2))


def test_rejects_mask_with_wrong_batch_or_layout(secam, images):
    with pytest.raises(ValueError, match="N×1×H×W"):
        secam.attribute(images, target=0, feature_mask=grid_mask(16, 16, 2, 2).expand(2, 1, -1, -1))
    with pytest.raises(ValueError, match="N×1×H×W"):
        secam.attribute(images, target=0, feature_mask=grid_mask(16, 16, 2, 2).expand(3, 3, -1, -1))


def test_rejects_negative_and_non_contiguous_ids(secam, images):
    mask = grid_mask(16, 16, 2, 2)
    with pytest.raises(ValueError, match="negative"):
        secam.attribute(images, target=0, feature_mask=mask - 1)
    with pytest.raises(ValueError, match="relabel_sequential"):
        secam.attribute(images, target=0, feature_mask=mask * 2)
    with pytest.raises(ValueError, match="relabel_sequential"):
        secam.attribute(images, target=0, feature_mask=mask + 1)  # ids from 1, as skimage's slic


def test_rejects_float_masks(secam, images):
    with pytest.raises(TypeError, match="integer"):
        secam.attribute(images, target=0, feature_mask=grid_mask(16, 16, 2, 2).float())


def test_single_segment_mask_is_valid(secam, images):
    attr = secam.attribute(
        images, target=0, feature_mask=torch.zeros(1, 1, 16, 16, dtype=torch.long)
    )
    for i in range(3):
        assert attr[i].unique().numel() == 1


def test_rejects_wrong_number_of_targets(secam, images):
    with pytest.raises(ValueError, match="one target per example"):
        secam.attribute(images, target=[0, 1], feature_mask=grid_mask(16, 16, 2, 2))
    with pytest.raises(ValueError, match="one target per example"):
        secam.attribute(
            images, target=torch.tensor([0, 1, 2, 3]), feature_mask=grid_mask(16, 16, 2, 2)
        )


def test_rejects_targets_out_of_range(secam, images):
    with pytest.raises(ValueError, match=r"0\.\.4"):
        secam.attribute(images, target=5, feature_mask=grid_mask(16, 16, 2, 2))
    with pytest.raises(ValueError, match="out of range"):
        secam.attribute(images, target=[0, -1, 2], feature_mask=grid_mask(16, 16, 2, 2))


def test_rejects_float_targets(secam, images):
    with pytest.raises(TypeError, match="integer"):
        secam.attribute(
            images, target=torch.tensor([0.0, 1.0, 2.0]), feature_mask=grid_mask(16, 16, 2, 2)
        )


def test_rejects_layer_outside_the_model(gap_model):
    other = GapLinearNet()
    with pytest.raises(ValueError, match="not part of the model"):
        SeCam(gap_model, other.features_out)


def test_rejects_layer_that_gets_no_gradient(gap_model, images):
    secam = SeCam(gap_model, gap_model.unused)
    with pytest.raises(ValueError, match="no gradient"):
        secam.attribute(images, target=0, feature_mask=grid_mask(16, 16, 2, 2))


def test_rejects_layer_never_called_by_a_forward_function(gap_model, images):
    secam = SeCam(lambda x: gap_model(x), torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="never called"):
        secam.attribute(images, target=0, feature_mask=grid_mask(16, 16, 2, 2))


def test_rejects_non_spatial_layers(gap_model, images):
    secam = SeCam(gap_model, gap_model.fc)
    with pytest.raises(ValueError, match="spatial"):
        secam.attribute(images, target=0, feature_mask=grid_mask(16, 16, 2, 2))


def test_rejects_int_targets_on_multi_dimensional_outputs(gap_model, images):
    secam = SeCam(lambda x: gap_model(x)[:, :, None].expand(-1, -1, 3), gap_model.features_out)
    with pytest.raises(ValueError, match="tuple of 2 indices"):
        secam.attribute(images, target=0, feature_mask=grid_mask(16, 16, 2, 2))


def test_rejects_unknown_base(secam, images):
    with pytest.raises(ValueError, match="base must be one of"):
        secam.attribute(images, target=0, base="cam++")


# ----------------------------------------------------------------------------------------------
# Do no harm to the user's model
# ----------------------------------------------------------------------------------------------


def _snapshot(model: torch.nn.Module) -> dict[str, Any]:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()
        ],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def _assert_unchanged(model: torch.nn.Module, before: dict[str, Any]) -> None:
    after = _snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(g is None for g in after["grads"])
    assert after["hooks"] == before["hooks"]
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value)


@pytest.mark.parametrize("train_mode", [True, False])
@pytest.mark.parametrize("frozen", [True, False])
def test_model_state_unchanged_after_success(images, train_mode, frozen):
    torch.manual_seed(0)
    model = GapLinearNet().train(train_mode)
    if frozen:
        model.requires_grad_(False)
    before = _snapshot(model)
    x = images.clone()
    attr = SeCam(model, model.features_out).attribute(
        x, target=1, feature_mask=grid_mask(16, 16, 2, 2)
    )
    assert attr.abs().sum() > 0, "a frozen model must still be explained"
    _assert_unchanged(model, before)
    assert not x.requires_grad


def test_model_state_unchanged_after_an_exception(images):
    torch.manual_seed(0)
    model = GapLinearNet().train()
    before = _snapshot(model)
    with pytest.raises(ValueError):
        SeCam(model, model.features_out).attribute(
            images, target=99, feature_mask=grid_mask(16, 16, 2, 2)
        )
    _assert_unchanged(model, before)
    with pytest.raises(ValueError):
        SeCam(model, model.unused).attribute(images, target=0, feature_mask=grid_mask(16, 16, 2, 2))
    _assert_unchanged(model, before)


def test_layer_input_attribution_restores_input_requires_grad(images):
    torch.manual_seed(0)
    model = GapLinearNet().eval()
    x = images.clone()
    attr = SeCam(model, model.conv1).attribute(
        x, target=0, feature_mask=grid_mask(16, 16, 2, 2), attribute_to_layer_input=True
    )
    assert not x.requires_grad
    # gradient × input at the first layer's input, averaged per segment: finite and non-zero
    assert torch.isfinite(attr).all() and attr.abs().sum() > 0


def test_exceptions_from_the_model_propagate(images):
    class Broken(GapLinearNet):
        def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            super().forward(x)
            raise RuntimeError("model exploded")

    torch.manual_seed(0)
    model = Broken().eval()
    with pytest.raises(RuntimeError, match="model exploded"):
        SeCam(model, model.features_out).attribute(
            images, target=0, feature_mask=grid_mask(16, 16, 2, 2)
        )
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_numpy_masks_are_accepted(secam, images):
    mask = grid_mask(16, 16, 2, 2)
    torch.testing.assert_close(
        secam.attribute(images, target=0, feature_mask=mask[0, 0].numpy().astype(np.int32)),
        secam.attribute(images, target=0, feature_mask=mask),
    )


# ----------------------------------------------------------------------------------------------
# Captum conventions (issue #10)
# ----------------------------------------------------------------------------------------------


def test_signature_starts_with_layer_grad_cams_arguments_in_order():
    import inspect

    ours = list(inspect.signature(SeCam.attribute).parameters)
    theirs = list(inspect.signature(LayerGradCam.attribute).parameters)
    assert ours[: len(theirs)] == theirs
    params = inspect.signature(SeCam.attribute).parameters
    assert all(params[name].kind is inspect.Parameter.KEYWORD_ONLY for name in ours[len(theirs) :])


def test_old_positional_feature_mask_gets_a_migration_error(secam, images):
    with pytest.raises(TypeError, match="feature_mask="):
        secam.attribute(images, 0, None, grid_mask(16, 16, 2, 2))  # type: ignore[arg-type]


def test_positional_arguments_follow_layer_grad_cam(gap_model, images):
    mask = grid_mask(16, 16, 2, 2)
    secam = SeCam(gap_model, gap_model.features_out)
    positional = secam.attribute(images, 1, None, False, True, True, None, feature_mask=mask)
    keywords = secam.attribute(images, target=1, relu_attributions=True, feature_mask=mask)
    torch.testing.assert_close(positional, keywords)


def test_attr_dim_summation_false_is_refused(secam, images):
    with pytest.raises(ValueError, match="attr_dim_summation"):
        secam.attribute(images, target=0, attr_dim_summation=False)


def test_grad_kwargs_reach_autograd(gap_model, images):
    mask = grid_mask(16, 16, 2, 2)
    secam = SeCam(gap_model, gap_model.features_out)
    plain = secam.attribute(images, target=0, feature_mask=mask)
    kept = secam.attribute(images, target=0, feature_mask=mask, grad_kwargs={"retain_graph": True})
    torch.testing.assert_close(plain, kept)
    with pytest.raises(TypeError, match="unexpected keyword"):
        secam.attribute(images, target=0, feature_mask=mask, grad_kwargs={"no_such_option": 1})


def test_multiplies_by_inputs_tells_the_truth(gap_model):
    """The default map is gradient × activation, like LayerGradientXActivation(True)."""
    secam = SeCam(gap_model, gap_model.features_out)
    gxa = LayerGradientXActivation(gap_model, gap_model.features_out)
    assert secam.multiplies_by_inputs is True
    assert secam.multiplies_by_inputs == gxa.multiplies_by_inputs
    assert NoiseTunnel(secam).multiplies_by_inputs is True


def test_target_errors_are_value_and_assertion_errors(secam, images):
    from captum_secam.secam import TargetError

    assert issubclass(TargetError, ValueError) and issubclass(TargetError, AssertionError)
    for bad in (99, [0, 1], (9999,) * 20, "tabby"):
        with pytest.raises(TargetError):
            secam.attribute(images, target=bad, feature_mask=grid_mask(16, 16, 2, 2))


def test_tuple_targets_are_read_as_captum_reads_them(gap_model, images):
    """A tuple indexes the dimensions after the batch: (c,) is column c for every example."""
    mask = grid_mask(16, 16, 2, 2)
    secam = SeCam(gap_model, gap_model.features_out)
    torch.testing.assert_close(
        secam.attribute(images, target=(2,), feature_mask=mask),
        secam.attribute(images, target=2, feature_mask=mask),
    )
    with pytest.raises(ValueError, match="indexes 3 dimensions"):
        secam.attribute(images, target=(0, 1, 2), feature_mask=mask)  # not one per example


def test_tuple_targets_select_from_multi_dimensional_outputs(gap_model, images):
    mask = grid_mask(16, 16, 2, 2)

    def two_heads(x: torch.Tensor) -> torch.Tensor:  # N×5×2: one forward pass, two "heads"
        y = gap_model(x)
        return torch.stack([y, 2 * y], 2)

    stacked = SeCam(two_heads, gap_model.conv2)
    plain = SeCam(gap_model, gap_model.conv2)
    torch.testing.assert_close(
        stacked.attribute(images, target=[(1, 1), (2, 0), (0, 1)], feature_mask=mask),
        plain.attribute(images, target=[1, 2, 0], feature_mask=mask)
        * torch.tensor([2.0, 1.0, 2.0]).reshape(3, 1, 1, 1),
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="out of range"):
        stacked.attribute(images, target=(1, 2), feature_mask=mask)


def test_predicted_target_and_none(gap_model, images):
    """None keeps Captum's meaning for one score per example; on N×classes it is "predicted"."""
    mask = grid_mask(16, 16, 2, 2)
    secam = SeCam(gap_model, gap_model.features_out)
    predicted = gap_model(images).argmax(1)
    expected = secam.attribute(images, target=predicted, feature_mask=mask)
    torch.testing.assert_close(secam.attribute(images, "predicted", feature_mask=mask), expected)
    torch.testing.assert_close(secam.attribute(images, None, feature_mask=mask), expected)
    single = SeCam(lambda x: gap_model(x)[:, 3], gap_model.features_out)
    torch.testing.assert_close(
        single.attribute(images, feature_mask=mask),
        secam.attribute(images, target=3, feature_mask=mask),
    )
    with pytest.raises(ValueError, match="leave target=None"):
        single.attribute(images, target=0, feature_mask=mask)


def test_class_names_are_accepted_as_targets(gap_model, images):
    names = ["tabby", "tiger cat", "Persian cat", "dog", "crane"]
    mask = grid_mask(16, 16, 2, 2)
    secam = SeCam(gap_model, gap_model.features_out, class_names=names)
    torch.testing.assert_close(
        secam.attribute(images, target="tiger cat", feature_mask=mask),
        secam.attribute(images, target=1, feature_mask=mask),
    )
    torch.testing.assert_close(
        secam.attribute(images, target=["Tabby", "dog", "crane"], feature_mask=mask),
        secam.attribute(images, target=[0, 3, 4], feature_mask=mask),
    )
    with pytest.raises(ValueError, match=r"did you mean \['tabby'\]"):
        secam.attribute(images, target="tabbby", feature_mask=mask)
    with pytest.raises(ValueError, match="class_names="):
        SeCam(gap_model, gap_model.features_out).attribute(images, target="tabby")
    with pytest.raises(TypeError, match="class_names"):
        SeCam(gap_model, gap_model.features_out, class_names="tabby")


def test_feature_vectors_are_explained_per_feature_group():
    """N×F inputs: groups of features; a layer without positions gives LayerGradCam's value."""
    from captum.attr import InputXGradient

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.randn(4, 6)
    groups = torch.tensor([[0, 0, 1, 1, 2, 2]])
    secam = SeCam(model, model[1])
    constant = secam.attribute(x, target=1)
    expected = LayerGradCam(model, model[1]).attribute(x, target=1).detach()
    torch.testing.assert_close(constant, expected.expand(-1, 6))
    per_group = secam.attribute(
        x, target=1, feature_mask=groups, base=InputXGradient(model), return_input_shape=False
    )
    assert not x.requires_grad, "the base attribution's requires_grad must be given back"
    ixg = (InputXGradient(model).attribute(x, target=1)).detach()
    torch.testing.assert_close(per_group, ixg.reshape(4, 3, 2).mean(2), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="F, 1×F or N×F"):
        secam.attribute(x, target=1, feature_mask=groups[:, :4])


def test_signals_are_explained_with_a_feature_mask():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv1d(2, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool1d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    )
    x = torch.randn(2, 2, 12)
    mask = (torch.arange(12) // 4)[None, None]
    scores = SeCam(model, model[1]).attribute(
        x, target=0, feature_mask=mask, return_input_shape=False
    )
    cam = LayerGradientXActivation(model, model[1]).attribute(x, target=0).detach().sum(1)
    torch.testing.assert_close(scores, cam.reshape(2, 3, 4).mean(2), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="N×C×L signals pass feature_mask"):
        SeCam(model, model[1]).attribute(x, target=0)


def test_scikit_image_is_imported_only_for_segmentation():
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from captum_secam import SeCam\n"
        "from conftest import GapLinearNet, grid_mask\n"
        "m = GapLinearNet().eval()\n"
        "SeCam(m, m.features_out).attribute(torch.randn(1, 3, 16, 16), 0,"
        " feature_mask=grid_mask(16, 16, 2, 2))\n"
        "assert 'skimage' not in sys.modules, 'skimage imported without segmentation'\n"
        "SeCam(m, m.features_out).attribute(torch.randn(1, 3, 16, 16), 0)\n"
        "assert 'skimage' in sys.modules\n"
    )
    tests_dir = str(__import__("pathlib").Path(__file__).parent)
    env = {**__import__("os").environ, "PYTHONPATH": tests_dir, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ----------------------------------------------------------------------------------------------
# Frictions new users met (issue #10, part 4)
# ----------------------------------------------------------------------------------------------


def test_grayscale_image_to_an_rgb_model_names_the_fix(secam):
    with pytest.raises(ValueError, match=r"3-channel input but got 1.*expand\(-1, 3, -1, -1\)"):
        secam.attribute(torch.randn(1, 1, 16, 16), target=0, feature_mask=grid_mask(16, 16, 2, 2))


def test_hwc_tensor_is_told_to_permute(secam):
    with pytest.raises(ValueError, match=r"permute\(2, 0, 1\)\.unsqueeze\(0\)"):
        secam.attribute(torch.randn(224, 224, 3), target=0)
    with pytest.raises(ValueError, match=r"unsqueeze\(0\)"):
        secam.attribute(torch.randn(3, 16, 16), target=0)


def test_model_outputs_that_are_not_tensors_get_the_wrapper(gap_model, images):
    class ModelOutput(dict):
        @property
        def logits(self) -> torch.Tensor:
            return self["logits"]

    mask = grid_mask(16, 16, 2, 2)
    hf_like = SeCam(lambda x: ModelOutput(logits=gap_model(x)), gap_model.features_out)
    with pytest.raises(TypeError, match=r"lambda \*x: model\(\*x\)\.logits"):
        hf_like.attribute(images, target=0, feature_mask=mask)
    as_dict = SeCam(lambda x: {"scores": gap_model(x)}, gap_model.features_out)
    with pytest.raises(TypeError, match=r"model\(\*x\)\['scores'\]"):
        as_dict.attribute(images, target=0, feature_mask=mask)
    wrapped = SeCam(lambda x: ModelOutput(logits=gap_model(x)).logits, gap_model.features_out)
    torch.testing.assert_close(
        wrapped.attribute(images, target=0, feature_mask=mask),
        SeCam(gap_model, gap_model.features_out).attribute(images, target=0, feature_mask=mask),
    )


def test_token_layer_without_a_reshape_transform_names_the_fix(images):
    class Tokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Conv2d(3, 8, 4, stride=4)
            self.block = torch.nn.Identity()
            self.head = torch.nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.block(self.embed(x).flatten(2).transpose(1, 2))
            return self.head(tokens.mean(1))

    model = Tokens()
    with pytest.raises(ValueError, match="reshape_transform"):
        SeCam(model, model.block).attribute(images, target=0, feature_mask=grid_mask(16, 16, 2, 2))
