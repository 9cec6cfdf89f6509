"""Agreement between two explanations: per-image rank (Spearman) or Pearson correlation.

:func:`rank_correlation` compares two batches of explanations row by row; the randomisation
test (:mod:`captum_secam.metrics.randomisation`) uses it as its default similarity.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["rank_correlation"]

Similarity = Literal["spearman", "pearson"]


def _ranks(values: Tensor) -> Tensor:
    """Average ranks (1-based, ties share their mean rank) of a 1-D tensor."""
    sorted_values, order = torch.sort(values, stable=True)
    _, inverse, counts = torch.unique_consecutive(
        sorted_values, return_inverse=True, return_counts=True
    )
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(mean_rank[inverse])
    ranks[order] = mean_rank[inverse]
    return ranks


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    denom = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(
        denom > 0,
        (a * b).sum(dim=1) / denom.clamp_min(1e-300),
        torch.full_like(denom, float("nan")),
    )


def rank_correlation(a: Tensor, b: Tensor, method: Similarity = "spearman") -> Tensor:
    """Per-row correlation between two batches of explanations (flattened per image).

    Args:
        a: N×… explanations.
        b: Same shape as ``a``.
        method: ``"spearman"`` (Pearson on average ranks, tie-aware like
            ``scipy.stats.spearmanr``) or ``"pearson"``.

    Returns:
        Float64 tensor of N correlations in [-1, 1]; NaN where a row is constant.
    """
    if a.shape != b.shape or a.dim() < 1:
        raise ValueError(
            f"explanations must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if method not in ("spearman", "pearson"):
        raise ValueError(f"similarity must be 'spearman', 'pearson' or a callable, got {method!r}")
    flat_a = a.detach().reshape(a.shape[0], -1).double()
    flat_b = b.detach().reshape(b.shape[0], -1).double()
    if method == "spearman":
        flat_a = torch.stack([_ranks(row) for row in flat_a])
        flat_b = torch.stack([_ranks(row) for row in flat_b])
    return _pearson(flat_a, flat_b)
