"""Figures for Class Association Embedding explanations.

* :func:`plot_swap_grid` -- the CAE's central claim made visible: the individual code of one
  image decoded with the class code of another, for every pair of donors.
* :func:`plot_counterfactual_grid` -- one row per explained example: original, reconstruction,
  counterfactual and saliency (with an optional ground-truth outline).
* :func:`plot_counterfactual` -- the single-image figure written by ``captum-secam cae``:
  the explanation on top, the images decoded along the class-code segment from the image's own
  class code to the counterfactual code below.

Every function returns a :class:`matplotlib.figure.Figure` (no pyplot, no global state), draws
1-channel images with a grey colormap and 3-channel images as RGB, and writes class names in
full (long names are wrapped, never truncated). Each image panel carries a label
(``Axes.get_label()``) naming what it shows, e.g. ``"cell 0,2"`` or ``"path 5"``, so the figures
can be inspected programmatically.

Example:
    >>> from captum_secam.cae.fashion_mnist import load_pretrained, load_samples
    >>> classifier, cae = load_pretrained()
    >>> x, y = load_samples()
    >>> fig = plot_swap_grid(cae, x[:4], x[4:8], classifier=classifier)
    >>> fig.savefig("swap.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import textwrap
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from captum_secam._validation import image_layout_hint
from captum_secam.cae.attribution import CaeExplanation
from captum_secam.cae.model import ClassAssociationEmbedding

__all__ = ["plot_counterfactual", "plot_counterfactual_grid", "plot_swap_grid"]

_PANEL = 2.0  # inches per image panel
_FONT = 9  # captions (pt)
_TITLE_FONT = 11  # figure titles (pt)
_WRAP = 26  # characters per caption line before a class name is wrapped
_CHUNK = 256  # images decoded / classified per batch
_FLIP_COLOUR = "#c0392b"  # captions of predictions other than the explained class
_RECON_COLOUR = "tab:orange"  # frame of swap-grid cells that are reconstructions
_REGION_COLOUR = "cyan"


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _check_scores(scores: str) -> None:
    if scores not in ("logits", "probabilities"):
        raise ValueError(f"scores must be 'logits' or 'probabilities', got {scores!r}.")


def _check_names(class_names: Sequence[str], num_classes: int, what: str) -> tuple[str, ...]:
    """Return ``class_names`` as a tuple after checking there is one string per class."""
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise TypeError(
            f"class_names must be a sequence of strings, got {type(class_names).__name__}."
        )
    names = tuple(class_names)
    if len(names) != num_classes:
        raise ValueError(
            f"class_names has {len(names)} names but {what} has {num_classes} classes; give one "
            "name per class."
        )
    if not all(isinstance(name, str) for name in names):
        raise TypeError("class_names must hold strings.")
    return names


def _check_explanation(explanation: Any) -> CaeExplanation:
    if not isinstance(explanation, CaeExplanation):
        raise TypeError(
            "explanation must be the CaeExplanation returned by "
            "CaeCounterfactual.attribute(..., return_counterfactuals=True), got "
            f"{type(explanation).__name__}."
        )
    return explanation


def _check_images_tensor(x: Any, name: str) -> Tensor:
    """A float N×C×H×W tensor with 1 or 3 channels (range and size are checked elsewhere)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() != 4:
        raise ValueError(
            f"{name} must be N×C×H×W (4-D), got shape {tuple(x.shape)}; {image_layout_hint(x)}."
        )
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels, got {x.shape[1]} (shape N×C×H×W).")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [0, 1], got dtype {x.dtype}.")
    return x


def _check_count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return value


# --------------------------------------------------------------------------------------------
# Drawing helpers
# --------------------------------------------------------------------------------------------


def _wrap(text: str, width: int = _WRAP) -> str:
    """Wrap ``text`` at word boundaries (never truncating, never splitting a word)."""
    return "\n".join(
        textwrap.fill(line, width, break_long_words=False, break_on_hyphens=False) or line
        for line in text.split("\n")
    )


def _chars(width_inches: float, fontsize: float) -> int:
    """About how many characters of ``fontsize`` fit on a line ``width_inches`` wide."""
    return max(20, int(0.92 * width_inches * 72 / (0.6 * fontsize)))


def _image_array(image: Tensor) -> np.ndarray:
    """C×H×W in [0, 1] → H×W (1 channel) or H×W×3 (3 channels) float array for imshow."""
    a = image.detach().to("cpu", torch.float32).clamp(0.0, 1.0)
    if a.shape[0] == 1:
        return a[0].numpy()
    return a.permute(1, 2, 0).numpy()


def _saliency_map(attribution: Tensor) -> np.ndarray:
    """C×H×W attribution → H×W map (channels averaged, like ``visualization.to_hw_map``)."""
    return attribution.detach().to("cpu", torch.float64).mean(0).numpy()


def _bare(ax: Axes, label: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_label(label)


def _show_image(ax: Axes, image: Tensor, title: str, label: str, colour: str = "black") -> None:
    arr = _image_array(image)
    if arr.ndim == 2:
        ax.imshow(arr, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(arr, interpolation="nearest")
    _bare(ax, label)
    ax.set_title(title, fontsize=_FONT, color=colour)


def _show_saliency(
    ax: Axes, attribution: Tensor, title: str, label: str, region: np.ndarray | None = None
) -> Any:
    sal = _saliency_map(attribution)
    vmax = float(sal.max())
    im = ax.imshow(
        sal, cmap="hot", vmin=0.0, vmax=vmax if vmax > 0 else 1e-6, interpolation="nearest"
    )
    if region is not None:
        _draw_outline(ax, region)
    _bare(ax, label)
    ax.set_title(title, fontsize=_FONT)
    return im


def _draw_outline(ax: Axes, region: np.ndarray) -> None:
    """Draw the outline of the H×W boolean ``region`` in cyan (nothing for an empty region)."""
    if not region.any():
        return
    h, w = region.shape
    padded = np.pad(region.astype(np.float64), 1)  # closes outlines touching the border
    xs, ys = np.arange(-1, w + 1), np.arange(-1, h + 1)
    ax.contour(xs, ys, padded, levels=[0.5], colors=_REGION_COLOUR, linewidths=1.5)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)


def _probabilities(
    classifier: Callable[[Tensor], Tensor], images: Tensor, scores: str, num_classes: int
) -> Tensor:
    """Class probabilities (N×K, on the CPU) of ``images``, classified in chunks."""
    out = []
    for i in range(0, images.shape[0], _CHUNK):
        batch = images[i : i + _CHUNK]
        s = classifier(batch)
        if not isinstance(s, Tensor) or s.dim() != 2 or s.shape[0] != batch.shape[0]:
            raise ValueError(
                "classifier must return an N×K tensor of class scores, got "
                f"{getattr(s, 'shape', type(s))}."
            )
        if s.shape[1] != num_classes:
            raise ValueError(
                f"classifier returns {s.shape[1]} class scores but there are {num_classes} "
                "classes; use the classifier the CAE explains."
            )
        s = s.detach().float()
        out.append(torch.softmax(s, 1) if scores == "logits" else s)
    return torch.cat(out).cpu()


def _decode(cae: ClassAssociationEmbedding, s: Tensor, c: Tensor) -> Tensor:
    return torch.cat(
        [cae.decode(s[i : i + _CHUNK], c[i : i + _CHUNK]) for i in range(0, s.shape[0], _CHUNK)]
    )


def _pred_caption(names: Sequence[str], probs: Tensor) -> tuple[int, str]:
    """(predicted class, ``"Name (0.93)"``) from one row of probabilities."""
    k = int(probs.argmax())
    return k, f"{names[k]} ({float(probs[k]):.2f})"


# --------------------------------------------------------------------------------------------
# Swap grid
# --------------------------------------------------------------------------------------------


def plot_swap_grid(
    cae: ClassAssociationEmbedding,
    individual_images: Tensor,
    class_images: Tensor,
    *,
    classifier: Callable[[Tensor], Tensor] | None = None,
    class_names: Sequence[str] | None = None,
    scores: str = "logits",
) -> Figure:
    """Decode the individual code of every row donor with the class code of every column donor.

    Row ``i`` belongs to the individual donor ``a_i`` (its original is drawn in the left
    column), column ``j`` to the class donor ``b_j`` (its original is drawn in the top row);
    cell ``(i, j)`` is ``cae.decode(s(a_i), c(b_j))``. If the CAE separates the two codes as
    claimed, each row keeps the pose/shape details of ``a_i`` while each column takes the class
    of ``b_j``. Cells whose two donors are the same image are reconstructions (orange frame).

    Args:
        cae: the Class Association Embedding.
        individual_images: ``A×C×H×W`` images in ``[0, 1]`` giving the individual codes (rows).
        class_images: ``B×C×H×W`` images in ``[0, 1]`` giving the class codes (columns).
        classifier: optional model mapping images to ``N×K`` scores; when given, every panel is
            captioned with its predicted class and probability. It is called as is (put it in
            eval mode) on the CAE's device.
        class_names: one name per class (default ``cae.class_names``).
        scores: ``"logits"`` (probabilities are their softmax) or ``"probabilities"`` (used as
            they are).

    Returns:
        A figure of ``(A + 1) × (B + 1)`` axes: a legend in the corner, the class donors
        (labels ``"class j"``), the individual donors (``"individual i"``) and the decoded cells
        (``"cell i,j"``).

    Raises:
        TypeError: if the images are not float tensors or ``class_names`` is not a sequence.
        ValueError: for images that do not match the CAE (shape, channels, range), an empty
            batch, a wrong number of class names, an unknown ``scores`` or classifier output of
            the wrong shape.
    """
    if not isinstance(cae, ClassAssociationEmbedding):
        raise TypeError(f"cae must be a ClassAssociationEmbedding, got {type(cae).__name__}.")
    _check_scores(scores)
    for x, name in ((individual_images, "individual_images"), (class_images, "class_images")):
        _check_images_tensor(x, name)
        if x.shape[0] == 0:
            raise ValueError(f"{name} is empty; give at least one image.")
        cae.check_images(x, name)
    names = _check_names(
        cae.class_names if class_names is None else class_names, cae.num_classes, "the CAE"
    )
    n_a, n_b = individual_images.shape[0], class_images.shape[0]
    param = next(cae.parameters())
    xa = individual_images.detach().to(param.device, param.dtype)
    xb = class_images.detach().to(param.device, param.dtype)
    was_training = cae.training
    cae.eval()
    try:
        with torch.no_grad():
            s_a, _ = cae.encode(xa)
            c_b = cae.encode_class(xb)
            cells = _decode(cae, s_a.repeat_interleave(n_b, 0), c_b.repeat(n_a, 1)).cpu()
            if classifier is not None:
                p_a = _probabilities(classifier, xa, scores, cae.num_classes)
                p_b = _probabilities(classifier, xb, scores, cae.num_classes)
                p_cells = _probabilities(
                    classifier, cells.to(param.device), scores, cae.num_classes
                )
    finally:
        cae.train(was_training)

    fig = Figure(figsize=(1.8 * (n_b + 1), 1.95 * (n_a + 1) + 0.4), layout="constrained")
    axes = fig.subplots(n_a + 1, n_b + 1, squeeze=False)
    corner = axes[0, 0]
    _bare(corner, "legend")
    corner.text(
        0.5,
        0.5,
        "rows: individual code\nfrom the image on the left\n\ncolumns: class code\n"
        "from the image on top\n\norange frame:\nreconstruction"
        + ("\n\nred caption: not the\nclass donor's class" if classifier is not None else ""),
        ha="center",
        va="center",
        fontsize=_FONT - 1,
        transform=corner.transAxes,
    )
    for j in range(n_b):
        title = f"class code from B{j + 1}"
        if classifier is not None:
            title += "\n" + _wrap(_pred_caption(names, p_b[j])[1])
        _show_image(axes[0, j + 1], class_images[j], title, f"class {j}")
    for i in range(n_a):
        title = f"individual code from A{i + 1}"
        if classifier is not None:
            title += "\n" + _wrap(_pred_caption(names, p_a[i])[1])
        _show_image(axes[i + 1, 0], individual_images[i], title, f"individual {i}")
        for j in range(n_b):
            ax = axes[i + 1, j + 1]
            same = individual_images[i].shape == class_images[j].shape and torch.equal(
                individual_images[i], class_images[j]
            )
            lines = ["reconstruction"] if same else []
            colour = "black"
            if classifier is not None:
                k, cap = _pred_caption(names, p_cells[i * n_b + j])
                lines.append(_wrap(cap))
                if k != int(p_b[j].argmax()):
                    colour = _FLIP_COLOUR
            _show_image(ax, cells[i * n_b + j], "\n".join(lines), f"cell {i},{j}", colour)
            if same:
                for spine in ax.spines.values():
                    spine.set_visible(True)
                    spine.set_color(_RECON_COLOUR)
                    spine.set_linewidth(3)
    fig.suptitle(
        "CAE code swap: decode(individual code of row donor A, class code of column donor B)",
        fontsize=_TITLE_FONT,
    )
    return fig


# --------------------------------------------------------------------------------------------
# Counterfactual grid
# --------------------------------------------------------------------------------------------


def _check_regions(regions: Any, shape: tuple[int, ...]) -> np.ndarray:
    """``regions`` as an N×H×W bool array after checking it is N×1×H×W."""
    n, _, h, w = shape
    if isinstance(regions, Tensor):
        arr = regions.detach().cpu().numpy()
    elif isinstance(regions, np.ndarray):
        arr = regions
    else:
        raise TypeError(
            f"regions must be a bool tensor or numpy array, got {type(regions).__name__}."
        )
    if arr.shape != (n, 1, h, w):
        raise ValueError(
            f"regions must be N×1×H×W = {n}×1×{h}×{w} (one ground-truth mask per explained "
            f"image), got shape {tuple(arr.shape)}."
        )
    if arr.dtype != np.bool_:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError("regions must be a boolean mask (or hold only 0 and 1).")
        arr = arr.astype(bool)
    return arr[:, 0]


def plot_counterfactual_grid(
    explanation: CaeExplanation,
    images: Tensor,
    *,
    class_names: Sequence[str],
    regions: Tensor | np.ndarray | None = None,
    max_rows: int = 8,
) -> Figure:
    """One row per explained example: original, reconstruction, counterfactual, saliency.

    The original is captioned with the explained (target) class, the reconstruction with its
    prediction, the counterfactual with the class predicted on it and
    ``explanation.counterfactual_probability`` (or ``"no flip"`` when ``flipped`` is False),
    the saliency (``explanation.attributions``, channels averaged, ``'hot'`` colormap scaled
    per row from 0 to the row's maximum) with the outline of the ground-truth region in cyan.

    Args:
        explanation: a :class:`~captum_secam.cae.CaeExplanation` of ``N`` images.
        images: the ``N×C×H×W`` images that were explained.
        class_names: one name per class (at least as many as the largest class index in the
            explanation + 1).
        regions: optional ``N×1×H×W`` boolean ground-truth masks.
        max_rows: the first ``min(N, max_rows)`` examples are drawn.

    Returns:
        A figure of ``rows × 4`` axes labelled ``"original r"``, ``"reconstruction r"``,
        ``"counterfactual r"`` and ``"saliency r"``.

    Raises:
        TypeError: if ``explanation`` is not a ``CaeExplanation`` or ``images`` not a tensor.
        ValueError: if ``images`` or ``regions`` do not match the explanation, ``class_names``
            misses a class the explanation refers to, or ``max_rows < 1``.
    """
    exp = _check_explanation(explanation)
    x = _check_images_tensor(images, "images")
    if tuple(x.shape) != tuple(exp.reconstructions.shape):
        raise ValueError(
            f"images has shape {tuple(x.shape)} but the explanation is of "
            f"{tuple(exp.reconstructions.shape)} images; pass the images that were explained."
        )
    max_rows = _check_count(max_rows, "max_rows", 1)
    used = torch.cat(
        [
            exp.target,
            exp.counterfactual_target,
            exp.counterfactual_prediction,
            exp.reconstruction_prediction,
        ]
    )
    n_classes = int(used.max()) + 1
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise TypeError(
            f"class_names must be a sequence of strings, got {type(class_names).__name__}."
        )
    if len(class_names) < max(n_classes, 2):
        raise ValueError(
            f"class_names has {len(class_names)} names but the explanation refers to class "
            f"{n_classes - 1}; give one name per class."
        )
    names = _check_names(class_names, len(class_names), "class_names")
    masks = None if regions is None else _check_regions(regions, tuple(x.shape))
    n = x.shape[0]
    rows = min(n, max_rows)
    fig = Figure(figsize=(4 * _PANEL, 2.25 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, 4, squeeze=False)
    for r in range(rows):
        tgt = int(exp.target[r])
        _show_image(axes[r, 0], x[r], _wrap(f"original\ntarget: {names[tgt]}"), f"original {r}")
        axes[r, 0].set_ylabel(f"example {r}", fontsize=_FONT)
        rec = int(exp.reconstruction_prediction[r])
        rec_title = "reconstruction" + (" (fitted)" if bool(exp.fitted[r]) else "")
        _show_image(
            axes[r, 1],
            exp.reconstructions[r],
            _wrap(f"{rec_title}\npredicted: {names[rec]}"),
            f"reconstruction {r}",
            "black" if rec == tgt else _FLIP_COLOUR,
        )
        if bool(exp.flipped[r]):
            k = int(exp.counterfactual_prediction[r])
            cf_title = (
                f"counterfactual, t* = {float(exp.flip_position[r]):.2f}\n"
                f"{names[k]} ({float(exp.counterfactual_probability[r]):.2f})"
            )
            colour = _FLIP_COLOUR
        else:
            k = int(exp.counterfactual_prediction[r])
            p = float(exp.counterfactual_probability[r])
            cf_title, colour = f"counterfactual: no flip\npath end: {names[k]} ({p:.2f})", "black"
        _show_image(axes[r, 2], exp.counterfactuals[r], _wrap(cf_title), f"counterfactual {r}")
        axes[r, 2].title.set_color(colour)
        sal = _saliency_map(exp.attributions[r])
        _show_saliency(
            axes[r, 3],
            exp.attributions[r],
            f"saliency\nmax {float(sal.max()):.3g}",
            f"saliency {r}",
            None if masks is None else masks[r],
        )
    title = "CAE counterfactual explanations"
    if rows < n:
        title += f" (first {rows} of {n} examples)"
    if masks is not None:
        title += "; cyan outline: ground-truth region"
    fig.suptitle(title, fontsize=_TITLE_FONT)
    return fig


# --------------------------------------------------------------------------------------------
# Single-image figure
# --------------------------------------------------------------------------------------------


def _single_image(image: Any, exp: CaeExplanation, cae: ClassAssociationEmbedding) -> Tensor:
    if isinstance(image, Tensor) and image.dim() == 3:
        image = image[None]
    x = _check_images_tensor(image, "image")
    if x.shape[0] != 1:
        raise ValueError(
            f"image must be one C×H×W (or 1×C×H×W) image, got a batch of {x.shape[0]}; pass "
            "images[index]."
        )
    cae.check_images(x, "image")
    if tuple(x.shape[1:]) != tuple(exp.reconstructions.shape[1:]):
        raise ValueError(
            f"image has shape {tuple(x.shape[1:])} but the explanation is of "
            f"{tuple(exp.reconstructions.shape[1:])} images."
        )
    return x


def plot_counterfactual(
    explanation: CaeExplanation,
    index: int,
    cae: ClassAssociationEmbedding,
    classifier: Callable[[Tensor], Tensor],
    image: Tensor,
    *,
    class_names: Sequence[str],
    label: int | None = None,
    n_path_images: int = 6,
    scores: str = "logits",
) -> Figure:
    """The figure of one explained image: the explanation and the path to the counterfactual.

    Top row: the original (with its true ``label`` if given, and the classifier's prediction),
    the reconstruction, the counterfactual (class predicted on it and
    ``counterfactual_probability``, or "no flip") and the saliency map with a colour bar.
    Below: ``n_path_images`` images decoded along the straight class-code segment from the
    image's class code ``explanation.class_codes[index]`` (0 %) to the counterfactual code
    ``explanation.counterfactual_codes[index]`` (100 %), all with the individual code the
    explanation used (``explanation.individual_codes[index]``, fitted where ``fitted``); each
    is captioned with its position and the predicted class with its probability (red when it
    is not the explained class). The first path image is the reconstruction and the last the
    counterfactual. The title names the explained class, the class actually reached and the
    flip position ``t*`` -- or says that nothing flipped.

    Args:
        explanation: a :class:`~captum_secam.cae.CaeExplanation` from
            ``CaeCounterfactual(classifier, cae).attribute(..., return_counterfactuals=True)``.
        index: which explained example to draw.
        cae: the CAE the explanation was computed with.
        classifier: the explained classifier (called as is, on the CAE's device).
        image: the explained image, ``C×H×W`` or ``1×C×H×W`` in ``[0, 1]``.
        class_names: one name per class of the CAE.
        label: the image's true class, shown under the original (optional).
        n_path_images: images along the segment (>= 2), in rows of at most 6.
        scores: ``"logits"`` or ``"probabilities"``: what ``classifier`` returns.

    Returns:
        The figure; its image axes are labelled ``"original"``, ``"reconstruction"``,
        ``"counterfactual"``, ``"saliency"`` and ``"path 0"`` ... ``"path n-1"``.

    Raises:
        TypeError: for an explanation that is not a ``CaeExplanation`` or a non-tensor image.
        ValueError: for an ``index`` or ``label`` out of range, an image that does not match,
            ``n_path_images < 2``, a wrong number of class names or an unknown ``scores``.
    """
    exp = _check_explanation(explanation)
    x, n_path, names = _check_counterfactual_args(
        exp, index, cae, image, class_names, label, n_path_images, scores
    )
    frac, strip, probs = _decode_path(exp, index, cae, classifier, x, n_path, scores)
    p_image, p_rec, p_strip = probs[0], probs[1], probs[2:]

    tgt = int(exp.target[index])
    cf_pred = int(exp.counterfactual_prediction[index])
    if int(p_strip[-1].argmax()) != cf_pred:
        warnings.warn(
            f"plot_counterfactual: the classifier predicts {names[int(p_strip[-1].argmax())]!r} "
            f"on the decoded counterfactual but the explanation says {names[cf_pred]!r}; is it "
            "the classifier (in eval mode) and the CAE the explanation was computed with?",
            UserWarning,
            stacklevel=2,
        )

    path_cols = n_path if n_path <= 6 else math.ceil(n_path / math.ceil(n_path / 6))
    path_rows = math.ceil(n_path / path_cols)
    width = _PANEL * max(4, path_cols) + 0.6
    fig = Figure(figsize=(width, 2.45 * (1 + path_rows) + 1.3), layout="constrained")
    subfigs = np.asarray(fig.subfigures(2, 1, height_ratios=[1.0, float(path_rows)])).ravel()
    top_fig, path_fig = subfigs[0], subfigs[1]
    _draw_explanation_row(top_fig, exp, index, x, names, label, p_image, p_rec)

    path_axes = path_fig.subplots(path_rows, path_cols, squeeze=False).ravel()
    _draw_path(path_axes, strip, frac, p_strip, names, tgt)
    header = (
        "Decoded along the straight class-code segment from the image's own class code (0%) "
        "to the counterfactual code (100%), with the individual code of the explanation; "
        f"captions: predicted class (probability), red when not {names[tgt]!r}"
    )
    path_fig.suptitle(_wrap(header, _chars(width, _FONT)), fontsize=_FONT)

    head = f"CAE counterfactual: explaining {names[tgt]!r}"
    verdict = _counterfactual_verdict(exp, index, names)
    fig.suptitle(_wrap(f"{head}: {verdict}", _chars(width, _TITLE_FONT)), fontsize=_TITLE_FONT)
    return fig


def _check_counterfactual_args(
    exp: CaeExplanation,
    index: Any,
    cae: Any,
    image: Any,
    class_names: Sequence[str],
    label: Any,
    n_path_images: Any,
    scores: str,
) -> tuple[Tensor, int, tuple[str, ...]]:
    """The checks of :func:`plot_counterfactual`: ``(1×C×H×W image, path length, names)``."""
    if not isinstance(cae, ClassAssociationEmbedding):
        raise TypeError(f"cae must be a ClassAssociationEmbedding, got {type(cae).__name__}.")
    n = exp.attributions.shape[0]
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
        raise ValueError(
            f"index must be an int in 0..{n - 1} (the explained examples), got {index!r}."
        )
    x = _single_image(image, exp, cae)
    n_path = _check_count(n_path_images, "n_path_images", 2)
    _check_scores(scores)
    names = _check_names(class_names, cae.num_classes, "the CAE")
    if label is not None and (
        isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < cae.num_classes
    ):
        raise ValueError(f"label must be an int in 0..{cae.num_classes - 1}, got {label!r}.")
    if exp.class_codes.shape[1] != cae.class_code_dim:
        raise ValueError(
            f"the explanation's class codes have {exp.class_codes.shape[1]} entries but this CAE's "
            f"have {cae.class_code_dim}; pass the CAE the explanation was computed with."
        )
    return x, n_path, names


def _decode_path(
    exp: CaeExplanation,
    index: int,
    cae: ClassAssociationEmbedding,
    classifier: Callable[[Tensor], Tensor],
    x: Tensor,
    n_path: int,
    scores: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(fractions, path images, probabilities)`` along the class-code segment.

    The probabilities are those of the image, its reconstruction and then each path image.
    """
    param = next(cae.parameters())
    dev, dtype = param.device, param.dtype
    was_training = cae.training
    cae.eval()
    try:
        with torch.no_grad():
            s = exp.individual_codes[index : index + 1].to(dev, dtype)
            c0 = exp.class_codes[index : index + 1].to(dev, dtype)
            c1 = exp.counterfactual_codes[index : index + 1].to(dev, dtype)
            frac = torch.linspace(0.0, 1.0, n_path, device=dev, dtype=dtype)[:, None]
            codes = c0 + frac * (c1 - c0)
            codes[0], codes[-1] = c0[0], c1[0]  # exactly the endpoints
            strip = cae.decode(s.expand(n_path, -1, -1, -1), codes).cpu()
            probs = _probabilities(
                classifier,
                torch.cat(
                    [
                        x.to(dev, dtype),
                        exp.reconstructions[index : index + 1].to(dev, dtype),
                        strip.to(dev),
                    ]
                ),
                scores,
                cae.num_classes,
            )
    finally:
        cae.train(was_training)
    return frac, strip, probs


def _draw_explanation_row(
    top_fig: Any,
    exp: CaeExplanation,
    index: int,
    x: Tensor,
    names: Sequence[str],
    label: int | None,
    p_image: Tensor,
    p_rec: Tensor,
) -> None:
    """Original, reconstruction, counterfactual and saliency (with its colour bar)."""
    tgt = int(exp.target[index])
    cf_pred = int(exp.counterfactual_prediction[index])
    rec_pred = int(exp.reconstruction_prediction[index])
    flipped = bool(exp.flipped[index])
    top = top_fig.subplots(1, 4)

    orig_lines = ["original"]
    if label is not None:
        orig_lines.append(f"true label: {names[label]}")
    _, cap_img = _pred_caption(names, p_image)
    orig_lines.append(f"model: {cap_img}")
    _show_image(top[0], x[0], _wrap("\n".join(orig_lines), 26), "original")
    rec_title = "reconstruction" + (" (fitted code)" if bool(exp.fitted[index]) else "")
    _show_image(
        top[1],
        exp.reconstructions[index],
        _wrap(f"{rec_title}\nmodel: {names[rec_pred]} ({float(p_rec[rec_pred]):.2f})", 26),
        "reconstruction",
        "black" if rec_pred == tgt else _FLIP_COLOUR,
    )
    cf_prob = float(exp.counterfactual_probability[index])
    if flipped:
        cf_title = f"counterfactual\nmodel: {names[cf_pred]} ({cf_prob:.2f})"
    else:
        cf_title = f"counterfactual: no flip\nmodel: {names[cf_pred]} ({cf_prob:.2f})"
    _show_image(
        top[2],
        exp.counterfactuals[index],
        _wrap(cf_title, 26),
        "counterfactual",
        _FLIP_COLOUR if flipped else "black",
    )
    sal = _saliency_map(exp.attributions[index])
    im = _show_saliency(
        top[3], exp.attributions[index], "saliency: where the\ncounterfactual differs", "saliency"
    )
    cbar = top_fig.colorbar(im, ax=top[3], shrink=0.8, pad=0.02)
    cbar.ax.tick_params(labelsize=_FONT - 1)
    cbar.set_ticks([0.0, float(sal.max())] if float(sal.max()) > 0 else [0.0])
    cbar.ax.yaxis.set_major_formatter("{x:.3g}")


def _draw_path(
    path_axes: np.ndarray,
    strip: Tensor,
    frac: Tensor,
    p_strip: Tensor,
    names: Sequence[str],
    tgt: int,
) -> None:
    """One captioned panel per path image; spare panels of the last row are hidden."""
    n_path = strip.shape[0]
    for m, ax in enumerate(path_axes):
        if m >= n_path:
            ax.set_visible(False)
            continue
        pct = round(100 * float(frac[m]))
        where = {0: "0% (own code)", n_path - 1: "100% (counterfactual)"}.get(m, f"{pct}%")
        k, cap = _pred_caption(names, p_strip[m])
        _show_image(
            ax,
            strip[m],
            f"{where}\n" + _wrap(cap),
            f"path {m}",
            "black" if k == tgt else _FLIP_COLOUR,
        )


def _counterfactual_verdict(exp: CaeExplanation, index: int, names: Sequence[str]) -> str:
    """The title's second half: where the decision flips, or why nothing flipped."""
    tgt = int(exp.target[index])
    cft = int(exp.counterfactual_target[index])
    cf_pred = int(exp.counterfactual_prediction[index])
    rec_pred = int(exp.reconstruction_prediction[index])
    if rec_pred != tgt:
        return (
            f"NOTHING FLIPPED: the reconstruction is already classified as {names[rec_pred]!r}, "
            "so moving the class code cannot explain the decision (a larger fit_steps may help)."
        )
    if bool(exp.flipped[index]):
        t_star = float(exp.flip_position[index])
        verdict = f"the decision flips to {names[cf_pred]!r} at t* = {t_star:.2f}"
        if cf_pred != cft:
            verdict += f" (while moving toward {names[cft]!r})"
        return verdict + "."
    if cf_pred == tgt:
        return (
            f"NOTHING FLIPPED while moving toward {names[cft]!r}: the prediction stayed "
            f"{names[tgt]!r} to the path end; the map is not a counterfactual explanation."
        )
    cf_prob = float(exp.counterfactual_probability[index])
    return (
        f"NOTHING FLIPPED while moving toward {names[cft]!r}: no point of the path reached "
        f"another class with the required confidence (path end: {names[cf_pred]!r}, "
        f"{cf_prob:.2f}); the map is not a counterfactual explanation."
    )
