"""Adapters between captum_secam segmentations and the ``lime`` package's image explainer.

``lime`` (``lime.lime_image.LimeImageExplainer``) takes an H×W×C numpy image, a
``classifier_fn`` mapping a batch of such images to class scores, and a ``segmentation_fn``
returning one integer id per pixel. Its traps (SPEC.md §4) are silent:

* feature ``j`` is the segment whose id is ``j`` and lime counts ``np.unique(ids)`` features, so
  ids must be exactly ``0..K−1`` (ids from 1 make a phantom feature 0 and the last segment is
  never switched off; gaps shift every later segment). :func:`lime_segmentation_fn` checks this.
* ``top_labels=5`` (the default) overrides ``labels``: a requested class outside the top five is
  not explained at all. :func:`lime_segment_scores` always passes ``top_labels=None``.
* ``hide_color=None`` fills hidden segments with their own mean colour; any other value fills
  with that colour. The adapters make the fill explicit so it can match Captum's baselines.
* the explanation only lists ``num_features`` segments: reading it back needs all ``K``.

Example:
    >>> mask = segment(x, n_segments=50)                       # 1×1×H×W, ids 0..K-1
    >>> scores = lime_segment_scores(model, x, mask, target=281, n_samples=1000)  # 1×K
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from captum_secam._validation import check_classifier_output, check_images, resolve_targets
from captum_secam.segmentation import segment_counts, validate_feature_mask

__all__ = [
    "lime_classifier_fn",
    "lime_explanation_to_scores",
    "lime_image_from_input",
    "lime_segment_scores",
    "lime_segmentation_fn",
]

_LIME_HINT = 'the lime adapters need the "lime" extra: pip install "captum-secam[lime]"'

Preprocess = Callable[[np.ndarray], Tensor]


def _import_lime_image() -> Any:
    """Import ``lime.lime_image`` or raise an ImportError naming the extra to install."""
    try:
        return importlib.import_module("lime.lime_image")
    except ImportError as err:
        raise ImportError(f"the lime package is missing; {_LIME_HINT}") from err


def _mask_2d(feature_mask: Any) -> np.ndarray:
    """One H×W segmentation as a contiguous int64 numpy array (validated)."""
    mask = torch.as_tensor(
        np.asarray(feature_mask) if not isinstance(feature_mask, Tensor) else feature_mask
    )
    if mask.dim() == 4 and mask.shape[0] == 1 and mask.shape[1] == 1:
        mask = mask[0, 0]
    elif mask.dim() == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.dim() != 2:
        raise ValueError(
            f"expected one segmentation shaped H×W or 1×1×H×W, got shape {tuple(mask.shape)}; "
            "lime explains one image at a time: pass feature_mask[i]"
        )
    checked = validate_feature_mask(mask, torch.empty(1, 1, *mask.shape))
    return checked[0, 0].cpu().numpy().astype(np.int64)


def lime_segmentation_fn(feature_mask: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A ``segmentation_fn`` for ``LimeImageExplainer.explain_instance`` from a fixed mask.

    lime numbers its features by segment id, so the mask must hold contiguous ids
    ``0..K−1`` (as :func:`captum_secam.segment` returns); anything else raises here instead of
    producing phantom or dead features.

    Args:
        feature_mask: One segmentation, H×W or 1×1×H×W, tensor or numpy, integer ids 0..K−1.

    Returns:
        A function ``image -> ids`` that checks the image is H×W(×C) and returns a copy of the
        H×W int64 ids.

    Raises:
        ValueError: The mask has gaps, negative ids, or is not a single 2-D segmentation.
        TypeError: The mask is not integer-valued.

    Example:
        >>> from lime import lime_image
        >>> explainer = lime_image.LimeImageExplainer(random_state=0)
        >>> image, classifier_fn = lime_image_from_input(x), lime_classifier_fn(model)
        >>> fn = lime_segmentation_fn(mask)
        >>> explanation = explainer.explain_instance(
        ...     image, classifier_fn, labels=(281,), top_labels=None, num_samples=50,
        ...     segmentation_fn=fn,
        ... )
    """
    ids = _mask_2d(feature_mask)

    def segmentation_fn(image: np.ndarray) -> np.ndarray:
        if tuple(image.shape[:2]) != ids.shape:
            raise ValueError(
                f"the image is {image.shape[0]}×{image.shape[1]} but the segmentation is "
                f"{ids.shape[0]}×{ids.shape[1]}; segment the image lime explains"
            )
        return ids.copy()

    return segmentation_fn


def lime_image_from_input(inputs: Tensor) -> np.ndarray:
    """The model input of one image as the H×W×C float64 array lime perturbs.

    Explaining in the model's input space (rather than the photo) makes lime's fill colour the
    same number as Captum's ``baselines``; :func:`lime_classifier_fn` with ``preprocess=None``
    turns such arrays back into model inputs.

    Args:
        inputs: 1×C×H×W or C×H×W tensor.
    """
    x = inputs[0] if inputs.dim() == 4 else inputs
    if x.dim() != 3:
        raise ValueError(f"expected a 1×C×H×W or C×H×W tensor, got shape {tuple(inputs.shape)}")
    return x.detach().to("cpu", torch.float64).permute(1, 2, 0).numpy().copy()


def lime_classifier_fn(
    model: Callable[..., Any],
    preprocess: Preprocess | None = None,
    *,
    batch_size: int = 50,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a torch model as lime's ``classifier_fn`` (batch of H×W×C arrays → N×classes).

    Args:
        model: The model (any callable taking an N×C×H×W tensor, returning N×classes).
        preprocess: Maps an N×H×W×C numpy batch (lime's images) to the model's N×C×H×W
            input tensor, e.g. resize + normalise photos. ``None``: the images are already
            model inputs in channels-last layout (see :func:`lime_image_from_input`); they are
            only transposed.
        batch_size: Images per forward pass (lime's own ``batch_size`` applies first).
        device: Device for the model input; default: the device of the model's first
            parameter, or CPU.
        dtype: Floating dtype of the model input when ``preprocess`` is None.

    Returns:
        A function returning the model's raw outputs (e.g. logits) as a float64 numpy array.
        Use a softmax inside ``model`` if you want probabilities.

    Example:
        >>> classifier_fn = lime_classifier_fn(model)
        >>> classifier_fn(np.stack([lime_image_from_input(x)])).shape
        (1, 1000)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is None:
        params = getattr(model, "parameters", None)
        first = next(iter(params()), None) if callable(params) else None
        device = first.device if first is not None else torch.device("cpu")

    def classifier_fn(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(
                f"classifier_fn takes a batch of H×W×C images, got shape {images.shape}"
            )
        outputs = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                if preprocess is None:
                    batch = torch.from_numpy(np.ascontiguousarray(chunk)).permute(0, 3, 1, 2)
                    batch = batch.to(device=device, dtype=dtype)
                else:
                    batch = preprocess(chunk)
                    if not isinstance(batch, Tensor):
                        raise TypeError(
                            "preprocess must return a torch.Tensor shaped N×C×H×W, got "
                            f"{type(batch).__name__}"
                        )
                    batch = batch.to(device)
                scores = check_classifier_output(model(batch), len(chunk))
                outputs.append(scores.detach().to("cpu", torch.float64).numpy())
        return np.concatenate(outputs, axis=0)

    return classifier_fn


def lime_explanation_to_scores(
    explanation: Any, label: int, n_segments: int | None = None
) -> np.ndarray:
    """Read a lime ``ImageExplanation`` back as one score per segment.

    Args:
        explanation: The object returned by ``LimeImageExplainer.explain_instance``.
        label: The class whose explanation to read. It must have been explained (lime only
            explains ``labels`` when ``top_labels=None``).
        n_segments: Number of segments K; default: from ``explanation.segments``.

    Returns:
        float64 vector of length K; entry ``j`` is lime's weight for segment id ``j`` (0 for
        segments lime left out because ``num_features`` was smaller than K).

    Raises:
        KeyError: ``label`` was not explained (the ``top_labels`` trap).
        ValueError: The explanation mentions a segment id outside ``0..K−1``.
    """
    local_exp = getattr(explanation, "local_exp", None)
    if local_exp is None:
        raise TypeError(f"expected a lime ImageExplanation, got {type(explanation).__name__}")
    if label not in local_exp:
        raise KeyError(
            f"lime did not explain label {label} (explained: {sorted(local_exp)}); pass "
            "labels=(label,) with top_labels=None: lime's top_labels overrides labels"
        )
    if n_segments is None:
        n_segments = int(np.asarray(explanation.segments).max()) + 1
    scores = np.zeros(n_segments, dtype=np.float64)
    for feature, weight in local_exp[label]:
        if not 0 <= int(feature) < n_segments:
            raise ValueError(
                f"lime reported segment id {feature} but the segmentation has {n_segments} "
                "segments; segment ids must be 0..K-1"
            )
        scores[int(feature)] = float(weight)
    return scores


def _hide_color(baseline: Any, image: np.ndarray) -> Any:
    """Translate a fill spec into lime's ``hide_color`` (in the explained image's units)."""
    if baseline is None or (isinstance(baseline, str) and baseline == "segment_mean"):
        if image.shape[2] != 3:
            raise ValueError(
                "lime's per-segment mean fill (hide_color=None) only works on 3-channel "
                "images; pass a numeric baseline"
            )
        return None
    if isinstance(baseline, str):
        if baseline == "mean":
            return image.reshape(-1, image.shape[2]).mean(axis=0)
        raise ValueError(
            f"unknown baseline {baseline!r}; use a number, a per-channel sequence, 'mean' or "
            "'segment_mean'"
        )
    if isinstance(baseline, Tensor):
        baseline = baseline.detach().cpu().numpy()
    fill = np.asarray(baseline, dtype=np.float64)
    if fill.ndim == 0:
        return float(fill)
    fill = fill.reshape(-1)
    if fill.size != image.shape[2]:
        raise ValueError(
            f"lime fills hidden segments with one colour: pass a number or {image.shape[2]} "
            f"per-channel values, got {fill.size} values (a baseline image is not supported by "
            "lime; use the shap or Captum adapters for that)"
        )
    return fill


def lime_segment_scores(
    model: Callable[..., Any],
    inputs: Tensor,
    feature_mask: Any,
    target: int | Sequence[int] | Tensor | None = None,
    *,
    n_samples: int = 1000,
    baseline: Any = 0.0,
    kernel_width: float = 0.25,
    photo: np.ndarray | None = None,
    preprocess: Preprocess | None = None,
    random_state: int = 0,
    batch_size: int = 50,
    return_explanations: bool = False,
) -> Any:
    """Explain each image with ``lime`` on a fixed segmentation; one score per segment.

    lime fits a Ridge model (``alpha=1``) to the class score of ``n_samples`` random on/off
    patterns of the segments, weighted by ``sqrt(exp(-d²/kernel_width²))`` with ``d`` the cosine
    distance between the pattern and all-on. The score of segment ``j`` is its coefficient.

    Args:
        model: The classifier (N×C×H×W → N×classes).
        inputs: N×C×H×W model input.
        feature_mask: Segment ids 0..K−1, H×W, 1×1×H×W or N×1×H×W.
        target: Class per image (int, sequence, tensor) or ``None`` for the predicted class.
        n_samples: lime's ``num_samples``.
        baseline: Fill of hidden segments: a number or per-channel values in the units of the
            image lime perturbs, ``"mean"`` (per-channel image mean) or ``"segment_mean"``
            (lime's ``hide_color=None``).
        kernel_width: lime's kernel width (its default 0.25).
        photo: Optional N×H×W×C (or H×W×C for one image) photos for lime to perturb instead of
            the model input; requires ``preprocess``. The fill is then in photo units.
        preprocess: Photo batch → model input tensor (used with ``photo``).
        random_state: Seed for lime's sampling (each image i uses ``random_state + i``).
        batch_size: Images per forward pass.
        return_explanations: Also return lime's ``ImageExplanation`` objects.

    Returns:
        N×K float64 numpy array (K = largest segment count; padded with 0), or
        ``(scores, explanations)`` when ``return_explanations``.

    Raises:
        ImportError: lime is not installed (``pip install "captum-secam[lime]"``).
    """
    lime_image = _import_lime_image()
    check_images(inputs)
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}")
    if (photo is None) != (preprocess is None):
        raise ValueError(
            "photo and preprocess go together: pass both to let lime perturb the photo, or "
            "neither to perturb the model input"
        )
    n = inputs.shape[0]
    masks = validate_feature_mask(feature_mask, inputs)
    k_max = int(segment_counts(masks).max())
    with torch.no_grad():
        outputs = check_classifier_output(model(inputs), n)
    targets = resolve_targets(target, n, outputs.shape[1], outputs)
    photos: np.ndarray | None = None
    if photo is not None:
        photos = np.asarray(photo)
        if photos.ndim == 3:
            photos = photos[None]
        if photos.ndim != 4 or photos.shape[0] != n:
            raise ValueError(
                f"pass one H×W×C photo per image: expected {n}×H×W×C, got {np.shape(photo)}"
            )
    classifier_fn = lime_classifier_fn(
        model, preprocess, batch_size=batch_size, device=inputs.device, dtype=inputs.dtype
    )
    scores = np.zeros((n, k_max), dtype=np.float64)
    explanations = []
    for i in range(n):
        image = (
            photos[i].astype(np.float64) if photos is not None else lime_image_from_input(inputs[i])
        )
        ids = masks[i, 0].cpu().numpy()
        if tuple(image.shape[:2]) != ids.shape:
            raise ValueError(
                f"photo {i} is {image.shape[0]}×{image.shape[1]} but the segmentation is "
                f"{ids.shape[0]}×{ids.shape[1]}; resize the photo to the model input size"
            )
        explainer = lime_image.LimeImageExplainer(
            kernel_width=kernel_width, feature_selection="none", random_state=random_state + i
        )
        label = int(targets[i])
        explanation = explainer.explain_instance(
            image,
            classifier_fn,
            labels=(label,),
            top_labels=None,  # trap: top_labels overrides labels
            hide_color=_hide_color(baseline, image),
            num_features=int(ids.max()) + 1,  # read back every segment
            num_samples=n_samples,
            batch_size=batch_size,
            segmentation_fn=lime_segmentation_fn(ids),
            random_seed=random_state + i,
        )
        row = lime_explanation_to_scores(explanation, label, int(ids.max()) + 1)
        scores[i, : row.shape[0]] = row
        explanations.append(explanation)
    return (scores, explanations) if return_explanations else scores
