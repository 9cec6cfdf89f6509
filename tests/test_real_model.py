"""SeCam on the real pretrained EfficientNet-Lite0 (the ``demo`` extra) and a bundled photo."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch", reason='needs pip install "captum-secam[demo]"')

from captum_secam import SeCam, segment, select_top_k
from captum_secam.demo_model import (
    imagenet_class_names,
    load_efficientnet_lite0,
    load_photo,
    preprocess_photo,
    resize_photo,
)
from captum_secam.secam import DEFAULT_SEGMENTATION


@pytest.fixture(scope="module")
def model():
    return load_efficientnet_lite0()


@pytest.fixture(scope="module")
def chelsea():
    photo = load_photo("chelsea")
    return resize_photo(photo), preprocess_photo(photo)


def test_the_demo_model_recognises_the_cat(model, chelsea):
    _, x = chelsea
    with torch.no_grad():
        predicted = int(model(x).argmax())
    assert "cat" in imagenet_class_names()[predicted]


def test_secam_regions_carry_the_evidence(model, chelsea):
    """Keeping SeCam's top segments keeps the class far better than keeping its bottom ones."""
    photo, x = chelsea
    mask = segment(x, photo=photo, n_segments=50)
    secam = SeCam(model, model._bn1)
    scores = secam.attribute(x, feature_mask=mask, return_input_shape=False)
    with torch.no_grad():
        target = int(model(x).argmax())
    k = 8
    top = select_top_k(scores, mask, k)
    bottom = select_top_k(-scores, mask, k)
    gray = torch.zeros_like(x)  # 127 in 0..255 after (x - 127) / 128

    def probability(keep: torch.Tensor) -> float:
        with torch.no_grad():
            return float(model(torch.where(keep, x, gray)).softmax(-1)[0, target])

    assert probability(top) > 0.3
    assert probability(top) > 10 * probability(bottom)


def test_secam_default_matches_explicit_default_segmentation(model, chelsea):
    _, x = chelsea
    secam = SeCam(model, model._bn1)
    mask = segment(x, **DEFAULT_SEGMENTATION)
    torch.testing.assert_close(
        secam.attribute(x, target=285), secam.attribute(x, target=285, feature_mask=mask)
    )
