"""2-D view of the class-code space of a CAE, with the path of one explained example.

The class codes ``c = Ec(x)`` of a set of images are projected to 2-D with PCA (default; a
centred SVD, no extra dependency) or t-SNE (``scikit-learn``), coloured by class; the class
centroids are drawn as stars and, if an explanation is given, the class-code path of one example
from its code to the flip point, toward its counterfactual centroid.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from captum_secam.cae.attribution import CaeExplanation
from captum_secam.cae.model import ClassAssociationEmbedding

__all__ = ["plot_class_code_manifold", "project_class_codes"]


def project_class_codes(
    codes: Tensor | np.ndarray, method: str = "pca", *, seed: int = 0, n_fit: int | None = None
) -> np.ndarray:
    """Project N×D class codes to N×2.

    Args:
        codes: the class codes.
        method: ``"pca"`` (principal components of the first ``n_fit`` rows) or ``"tsne"``
            (scikit-learn, all rows embedded jointly).
        seed: t-SNE seed.
        n_fit: rows used to fit the PCA axes (all by default); later rows (e.g. a path) are
            projected on the same axes.
    """
    z = (
        codes.detach().cpu().double().numpy()
        if isinstance(codes, Tensor)
        else np.asarray(codes, float)
    )
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"codes must be N×D with N >= 2, got shape {z.shape}.")
    if method == "pca":
        fit = z[: n_fit or z.shape[0]]
        mean = fit.mean(0)
        _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
        axes = vt[:2]
        if axes.shape[0] < 2:
            axes = np.vstack([axes, np.zeros_like(axes)])
        return (z - mean) @ axes.T
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                't-SNE needs scikit-learn: pip install "captum-secam[sklearn]" (or scikit-learn).'
            ) from err
        perplexity = float(min(30.0, max(2.0, (z.shape[0] - 1) / 3)))
        return np.asarray(
            TSNE(2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(z)
        )
    raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}.")


def plot_class_code_manifold(
    cae: ClassAssociationEmbedding,
    images: Tensor,
    labels: Tensor,
    *,
    explanation: CaeExplanation | None = None,
    example: int = 0,
    method: str = "pca",
    max_points: int = 2000,
    seed: int = 0,
    ax: Any = None,
) -> Any:
    """Scatter the class codes of ``images`` in 2-D, coloured by class, with one explained path.

    Args:
        cae: the CAE whose class encoder is used.
        images: N×C×H×W images in ``[0, 1]``.
        labels: N class labels.
        explanation: a :class:`CaeExplanation` (``attribute(..., return_counterfactuals=True)``);
            the path of example ``example`` is drawn (start ○, flip point ×).
        example: which example of ``explanation`` to draw.
        method: ``"pca"`` or ``"tsne"``.
        max_points: at most this many images are encoded (a seeded subset).
        seed: subset and t-SNE seed.
        ax: a matplotlib Axes to draw on (a new figure otherwise).

    Returns:
        The matplotlib Figure.

    Example:
        >>> from captum_secam.cae import CaeCounterfactual
        >>> from captum_secam.cae.fashion_mnist import load_pretrained, load_samples
        >>> classifier, cae = load_pretrained("coats")
        >>> x, y = load_samples("coats")
        >>> res = CaeCounterfactual(classifier, cae).attribute(
        ...     x[:1], target=y[:1], return_counterfactuals=True
        ... )
        >>> fig = plot_class_code_manifold(cae, x, y, explanation=res)
        >>> fig.savefig("manifold.png")
    """
    import matplotlib.pyplot as plt

    cae.check_images(images, "images")
    labels = torch.as_tensor(labels).long().flatten().cpu()
    if labels.numel() != images.shape[0]:
        raise ValueError("images and labels must have the same length.")
    if explanation is not None and not 0 <= example < explanation.class_codes.shape[0]:
        raise ValueError(
            f"example {example} out of range for an explanation of "
            f"{explanation.class_codes.shape[0]} images."
        )
    n = images.shape[0]
    if n > max_points:
        keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_points]
        images, labels = images[keep], labels[keep]
    param = next(cae.parameters())
    was_training = cae.training
    cae.eval()
    try:
        with torch.no_grad():
            codes = torch.cat(
                [
                    cae.encode_class(images[i : i + 256].to(param.device, param.dtype)).cpu()
                    for i in range(0, images.shape[0], 256)
                ]
            )
    finally:
        cae.train(was_training)
    extra = [codes]
    if cae.centroids is not None:
        extra.append(cae.centroids.detach().cpu())
    if explanation is not None:
        extra.append(explanation.path_codes[example].detach().cpu().float())
    allc = torch.cat(extra)
    z = project_class_codes(allc, method, seed=seed, n_fit=codes.shape[0])
    zc = z[: codes.shape[0]]
    pos = codes.shape[0]
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 6))
    else:
        fig = ax.figure
    names = cae.class_names
    cmap = plt.get_cmap("tab10" if cae.num_classes <= 10 else "tab20")
    for k in range(cae.num_classes):
        sel = (labels == k).numpy()
        if sel.any():
            ax.scatter(
                zc[sel, 0], zc[sel, 1], s=5, alpha=0.4, color=cmap(k % cmap.N), label=names[k]
            )
    if cae.centroids is not None:
        zk = z[pos : pos + cae.num_classes]
        pos += cae.num_classes
        for k in range(cae.num_classes):
            ax.scatter(zk[k, 0], zk[k, 1], marker="*", s=220, color=cmap(k % cmap.N), edgecolor="k")
    if explanation is not None:
        zp = z[pos:]
        ax.plot(zp[:, 0], zp[:, 1], "-", color="k", lw=1.5)
        ax.scatter(zp[0, 0], zp[0, 1], s=80, facecolor="none", edgecolor="k", lw=2, label="start")
        flipped = bool(explanation.flipped[example])
        ax.scatter(
            zp[-1, 0],
            zp[-1, 1],
            marker="x",
            s=120,
            color="k",
            lw=3,
            label="flip point" if flipped else "path end (no flip)",
        )
        t_name = names[int(explanation.target[example])]
        k_name = names[int(explanation.counterfactual_target[example])]
        status = "flipped" if flipped else "NOT flipped"
        ax.set_title(f"class codes ({method}); path {t_name} → {k_name}: {status}")
    else:
        ax.set_title(f"class codes ({method})")
    ax.legend(fontsize=7, markerscale=1, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig
