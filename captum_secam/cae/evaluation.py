"""Does a CAE really separate class from individual? A disentanglement report.

:func:`evaluate_cae` measures, on held-out labelled images and with the external classifier
being explained (never used to train the CAE):

* **reconstruction**: mean ``|G(s, c) − x|`` and the share of reconstructions the classifier
  still assigns to the image's label;
* **swap success**: the share of swaps ``x_ab = G(s_a, c_b)`` (``b`` of another class) that the
  classifier assigns to ``b``'s class;
* **identity kept**: the share of swaps nearer (mean pixel L1) to their own individual donor ``a``
  than to each of ``n_candidates − 1`` other images of ``a``'s class (a retrieval rate; a decoder
  that draws class prototypes scores about ``1/n_candidates``, one that copies ``a`` scores 1,
  which is why it is read together with swap success);
* **cycle**: ``|G(E_s(x_ab), c_a) − a|``, also relative to the reconstruction error;
* **counterfactual clarity** (on images the classifier gets right): the flip rate of
  :class:`~captum_secam.cae.CaeCounterfactual` with the given settings, the median
  probability of the counterfactual target at the reported counterfactual, and the mean size
  of the change ``|x_cf − G(s, c)|``;
* **localisation**, where ground-truth regions are given: the share of saliency inside the
  region (:func:`captum_secam.metrics.energy_pointing_game`), on the explained images whose
  region is not empty.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from captum_secam.cae.model import ClassAssociationEmbedding

__all__ = ["CaeReport", "evaluate_cae", "swap_pairs"]


@dataclass(frozen=True)
class CaeReport:
    """What :func:`evaluate_cae` measured (rates in ``[0, 1]``; ``nan`` where not measured).

    Attributes:
        n_images: labelled images evaluated.
        reconstruction_l1: mean ``|G(s, c) − x|`` per pixel.
        reconstruction_keeps_class: share of reconstructions classified as the label.
        swap_success: share of swaps ``G(s_a, c_b)`` classified as ``b``'s class.
        identity_kept: share of swaps nearest to their own individual donor among
            ``n_candidates`` images of the donor's class (chance ``1/n_candidates``).
        n_candidates: candidates in the identity retrieval.
        cycle_l1: mean ``|G(E_s(G(s_a, c_b)), c_a) − a|``.
        cycle_ratio: ``cycle_l1 / reconstruction_l1``.
        n_explained: correctly classified images explained for the counterfactual figures.
        flip_rate: share of them whose explanation reports a flip.
        counterfactual_confidence: median probability of the counterfactual target at the
            reported counterfactual (over all explained images, flipped or not).
        change_l1: mean ``|x_cf − G(s, c)|`` per pixel over the flipped images.
        localisation: mean share of saliency inside the ground-truth region (``nan`` without
            regions).
        n_localised: images the localisation was averaged over.
    """

    n_images: int
    reconstruction_l1: float
    reconstruction_keeps_class: float
    swap_success: float
    identity_kept: float
    n_candidates: int
    cycle_l1: float
    cycle_ratio: float
    n_explained: int = 0
    flip_rate: float = math.nan
    counterfactual_confidence: float = math.nan
    change_l1: float = math.nan
    localisation: float = math.nan
    n_localised: int = 0

    def as_dict(self) -> dict[str, float | int]:
        """The report as a plain dict (JSON-friendly)."""
        return asdict(self)

    def to_markdown(self) -> str:
        """A two-column Markdown table of the report."""
        rows = ["| metric | value |", "|---|---|"]
        for key, value in self.as_dict().items():
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            rows.append(f"| {key} | {text} |")
        return "\n".join(rows)


def swap_pairs(labels: Tensor, seed: int = 0) -> Tensor:
    """For every image ``a``, the index of a random image ``b`` of another class (seeded)."""
    labels = torch.as_tensor(labels).long().flatten()
    gen = torch.Generator().manual_seed(seed)
    other = torch.empty_like(labels)
    for cls in torch.unique(labels).tolist():
        rows = torch.nonzero(labels == cls).flatten()
        pool = torch.nonzero(labels != cls).flatten()
        if pool.numel() == 0:
            raise ValueError("swap pairs need images of at least two classes.")
        other[rows] = pool[torch.randint(pool.numel(), (rows.numel(),), generator=gen)]
    return other


def _identity_candidates(labels: Tensor, m: int, seed: int) -> Tensor:
    """N×m indices: column 0 is the image itself, then ``m − 1`` other images of its class."""
    gen = torch.Generator().manual_seed(seed + 1)
    out = torch.empty(labels.numel(), m, dtype=torch.long)
    for cls in torch.unique(labels).tolist():
        rows = torch.nonzero(labels == cls).flatten()
        if rows.numel() < m:
            raise ValueError(
                f"class {cls} has {rows.numel()} images, fewer than n_candidates={m}; give more "
                "images or a smaller n_candidates."
            )
        for i in rows.tolist():
            others = rows[rows != i]
            pick = others[torch.randperm(others.numel(), generator=gen)[: m - 1]]
            out[i, 0] = i
            out[i, 1:] = pick
    return out


def _probabilities(scores: Tensor, kind: str) -> Tensor:
    return scores.softmax(1) if kind == "logits" else scores


def _batched(fn: Callable[[slice], Tensor], n: int, batch_size: int) -> Tensor:
    return torch.cat([fn(slice(i, i + batch_size)) for i in range(0, n, batch_size)])


def evaluate_cae(
    cae: ClassAssociationEmbedding,
    classifier: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    *,
    regions: Tensor | None = None,
    n_candidates: int = 10,
    explain: int | None = 200,
    explain_kwargs: Mapping[str, Any] | None = None,
    scores: str = "logits",
    batch_size: int = 256,
    seed: int = 0,
) -> CaeReport:
    """Measure how well ``cae`` separates class from individual (module docstring).

    Args:
        cae: a trained CAE with class-code centroids.
        classifier: the external classifier, N×C×H×W images in ``[0, 1]`` → N×K scores.
        images: N×C×H×W held-out images in ``[0, 1]`` of at least two classes.
        labels: their N labels in ``0..K-1``.
        regions: optional N×1×H×W boolean ground-truth regions of the class evidence;
            localisation is scored on the explained images whose region is not empty.
        n_candidates: images of the donor's class in the identity retrieval (chance level is
            ``1/n_candidates``); every class needs at least this many images.
        explain: how many correctly classified images (the first ones) to explain with
            :class:`~captum_secam.cae.CaeCounterfactual` for the flip rate, confidence, change
            and localisation; ``0`` or ``None`` skips the explanations.
        explain_kwargs: keyword arguments for ``CaeCounterfactual.attribute`` (default: its
            defaults, i.e. the black-box linear path).
        scores: ``"logits"`` (softmax is applied) or ``"probabilities"``.
        batch_size: images per forward pass.
        seed: seeds the swap pairs and the retrieval candidates.

    Returns:
        A :class:`CaeReport`.

    Example:
        >>> from captum_secam.cae.tasks import plant_marks
        >>> cae = ClassAssociationEmbedding(28, 1, 2, base_channels=4, mlp_dim=8)
        >>> task = plant_marks(torch.rand(40, 1, 28, 28), seed=0)
        >>> _ = cae.compute_centroids(task.images, task.labels)
        >>> clf = lambda x: torch.stack([x.mean((1, 2, 3)), 1 - x.mean((1, 2, 3))], 1)
        >>> report = evaluate_cae(cae, clf, task.images, task.labels, n_candidates=5, explain=0)
        >>> 0 <= report.identity_kept <= 1
        True
    """
    cae.check_images(images, "images")
    labels = torch.as_tensor(labels).long().flatten()
    n = images.shape[0]
    if labels.numel() != n:
        raise ValueError(f"labels has {labels.numel()} entries but there are {n} images.")
    if scores not in ("logits", "probabilities"):
        raise ValueError(f"scores must be 'logits' or 'probabilities', got {scores!r}.")
    if isinstance(n_candidates, bool) or not isinstance(n_candidates, int) or n_candidates < 2:
        raise ValueError(f"n_candidates must be an int >= 2, got {n_candidates!r}.")
    if regions is not None and (
        regions.dim() != 4 or regions.shape[0] != n or regions.shape[1] != 1
    ):
        raise ValueError(f"regions must be N×1×H×W with N={n}, got {tuple(regions.shape)}.")
    param = next(cae.parameters())
    was_training = cae.training
    cae.eval()
    try:
        with torch.no_grad():
            codes = _codes_and_swaps(
                cae, classifier, images.to(param.device), labels, seed, batch_size
            )
            swap_ok = codes["swap_pred"] == labels[codes["partner"]]
            candidates = _identity_candidates(labels, n_candidates, seed)
            kept = _identity_kept(codes["swaps"], images.to(param.device), candidates)
        recon_l1 = float(codes["recon_l1"].mean())
        cycle_l1 = float(codes["cycle_l1"].mean())
        report: dict[str, Any] = {
            "n_images": n,
            "reconstruction_l1": recon_l1,
            "reconstruction_keeps_class": float((codes["recon_pred"] == labels).float().mean()),
            "swap_success": float(swap_ok.float().mean()),
            "identity_kept": float(kept.float().mean()),
            "n_candidates": n_candidates,
            "cycle_l1": cycle_l1,
            "cycle_ratio": cycle_l1 / max(recon_l1, 1e-12),
        }
        if explain:
            correct = torch.nonzero(codes["pred"] == labels).flatten()[:explain]
            report.update(
                _counterfactual_figures(
                    cae, classifier, images, labels, regions, correct, explain_kwargs, scores
                )
            )
    finally:
        cae.train(was_training)
    return CaeReport(**report)


def _codes_and_swaps(
    cae: ClassAssociationEmbedding,
    classifier: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    seed: int,
    batch_size: int,
) -> dict[str, Tensor]:
    """Reconstructions, swaps ``G(s_a, c_b)``, cycles and the classifier's predictions."""
    n = images.shape[0]
    codes = [cae.encode(images[i : i + batch_size]) for i in range(0, n, batch_size)]
    s_all = torch.cat([s for s, _ in codes])
    c_all = torch.cat([c for _, c in codes])
    partner = swap_pairs(labels, seed).to(images.device)

    def recon(sl: slice) -> Tensor:
        return cae.decode(s_all[sl], c_all[sl])

    def swap(sl: slice) -> Tensor:
        return cae.decode(s_all[sl], c_all[partner[sl]])

    recons = _batched(recon, n, batch_size)
    swaps = _batched(swap, n, batch_size)

    def cycle(sl: slice) -> Tensor:
        s_swap, _ = cae.encode(swaps[sl])
        return cae.decode(s_swap, c_all[sl])

    cycles = _batched(cycle, n, batch_size)

    def predict(x: Tensor) -> Tensor:
        return _batched(lambda sl: classifier(x[sl]).argmax(1), n, batch_size).cpu()

    return {
        "partner": partner.cpu(),
        "swaps": swaps,
        "pred": predict(images),
        "recon_pred": predict(recons),
        "swap_pred": predict(swaps),
        "recon_l1": (recons - images).abs().flatten(1).mean(1).cpu(),
        "cycle_l1": (cycles - images).abs().flatten(1).mean(1).cpu(),
    }


def _identity_kept(swaps: Tensor, images: Tensor, candidates: Tensor) -> Tensor:
    """True where the swap is nearest (mean L1) to candidate 0, its own individual donor."""
    kept = torch.empty(swaps.shape[0], dtype=torch.bool)
    for i in range(swaps.shape[0]):
        cand = images[candidates[i].to(images.device)]
        dist = (cand - swaps[i : i + 1]).abs().flatten(1).mean(1)
        kept[i] = bool(dist.argmin() == 0)
    return kept


def _counterfactual_figures(
    cae: ClassAssociationEmbedding,
    classifier: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    regions: Tensor | None,
    rows: Tensor,
    explain_kwargs: Mapping[str, Any] | None,
    scores: str,
) -> dict[str, Any]:
    from captum_secam.cae.attribution import CaeCounterfactual, CaeExplanation
    from captum_secam.metrics import energy_pointing_game

    if rows.numel() == 0:
        return {"n_explained": 0}
    explainer = CaeCounterfactual(classifier, cae, scores=scores)
    x, y = images[rows], labels[rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # non-flips are counted, not warned
        res = explainer.attribute(
            x, target=y, return_counterfactuals=True, **dict(explain_kwargs or {})
        )
    assert isinstance(res, CaeExplanation)
    with torch.no_grad():
        probs = _probabilities(classifier(res.counterfactuals), scores)
    cf_target = res.counterfactual_target.to(probs.device)
    p_cf = probs[torch.arange(rows.numel(), device=probs.device), cf_target].cpu()
    flipped = res.flipped.cpu()
    change = (res.counterfactuals - res.reconstructions).abs().flatten(1).mean(1).cpu()
    out: dict[str, Any] = {
        "n_explained": int(rows.numel()),
        "flip_rate": float(flipped.float().mean()),
        "counterfactual_confidence": statistics.median(p_cf.tolist()),
        "change_l1": float(change[flipped].mean()) if bool(flipped.any()) else math.nan,
    }
    if regions is not None:
        reg = regions[rows].cpu()
        has = reg.flatten(1).any(1)
        if bool(has.any()):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # an all-zero map scores nan
                share = energy_pointing_game(res.attributions.cpu()[has], reg[has])
            share = share[~torch.isnan(share)]
            out["localisation"] = float(share.mean()) if share.numel() else math.nan
            out["n_localised"] = int(has.sum())
    return out
