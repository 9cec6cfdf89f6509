"""The disentanglement report, its building blocks and the binary tasks, on tiny seeded data."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from captum_secam.cae import ClassAssociationEmbedding
from captum_secam.cae.evaluation import CaeReport, evaluate_cae, swap_pairs
from captum_secam.cae.tasks import MARK_SIZE, fashion_mnist_pair, plant_marks

pytestmark = pytest.mark.usefixtures("one_thread")


class _CopyDecoderCae(ClassAssociationEmbedding):
    """A CAE whose decoder copies the individual donor (ignores the class code)."""

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.clone(), x.mean((1, 2, 3))[:, None].repeat(1, self.class_code_dim)

    def decode(self, individual_code: Tensor, class_code: Tensor) -> Tensor:
        return individual_code


class _PrototypeCae(ClassAssociationEmbedding):
    """A CAE whose decoder draws one prototype per class (ignores the individual code)."""

    prototypes: Tensor

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        marked = (x.flatten(1).amax(1) > 0.99).float()  # the mark on a dark garment is white
        return x.clone(), marked[:, None].repeat(1, self.class_code_dim)

    def decode(self, individual_code: Tensor, class_code: Tensor) -> Tensor:
        k = (class_code[:, 0] > 0.5).long()
        return self.prototypes[k]


class _MarkDetector(nn.Module):
    """Class 1 iff some pixel is (almost) pure white: the planted cross."""

    def forward(self, x: Tensor) -> Tensor:
        score = (x.flatten(1).amax(1) - 0.99) * 100.0
        return torch.stack([-score, score], 1)


def _dark_garments(n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    base = 0.2 + 0.2 * torch.rand(n, 1, 1, 1, generator=g)  # dark: the mark is white
    noise = 0.1 * torch.rand(n, 1, 28, 28, generator=g)
    return (base + noise).clamp(0, 0.95)


def _tiny(
    cls: type[ClassAssociationEmbedding] = ClassAssociationEmbedding,
) -> ClassAssociationEmbedding:
    torch.manual_seed(0)
    return cls(
        28,
        1,
        2,
        class_code_dim=2,
        base_channels=2,
        n_res_blocks=1,
        mlp_dim=4,
        disc_channels=2,
        up_kernel=1,
    ).eval()


def test_plant_marks_contrast_with_the_garment() -> None:
    x = torch.zeros(40, 1, 28, 28)
    x[:20] = 0.3  # dark garments get a white square
    x[20:] = 0.8  # bright garments a black one
    task = plant_marks(x, seed=2)
    assert task.regions is not None
    for i in torch.nonzero(task.labels).flatten().tolist():
        inside = task.images[i][task.regions[i]]
        assert bool((inside == (1.0 if i < 20 else 0.0)).all())


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 12))
def test_plant_marks_regions_match_the_change(seed: int, n: int) -> None:
    x = _dark_garments(n, seed)
    task = plant_marks(x, seed=seed)
    changed = (task.images != x).any(1, keepdim=True)
    assert bool((changed <= task.regions).all())  # only the mark's box changes
    marked = task.labels == 1
    assert bool((task.regions.flatten(1).sum(1) == MARK_SIZE**2 * marked.long()).all())
    assert bool((task.images[~marked] == x[~marked]).all())
    again = plant_marks(x, seed=seed)
    assert torch.equal(again.images, task.images) and torch.equal(again.labels, task.labels)


def test_plant_marks_centre_on_the_garment() -> None:
    x = torch.zeros(50, 1, 28, 28)
    x[:, :, 10:20, 4:24] = 0.5  # the garment
    task = plant_marks(x, seed=3, fraction=0.9)
    for i in torch.nonzero(task.labels).flatten().tolist():
        rows, cols = torch.nonzero(task.regions[i, 0], as_tuple=True)
        cy, cx = int(rows.min()) + MARK_SIZE // 2, int(cols.min()) + MARK_SIZE // 2
        assert x[i, 0, cy, cx] > 0.15


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"images": torch.rand(2, 3, 28, 28)}, "N×1×H×W"),
        ({"images": torch.rand(2, 1, 28, 28) * 2}, r"\[0, 1\]"),
        ({"fraction": 1.0}, "fraction"),
        ({"mark_size": 2}, "mark_size"),
        ({"mark_size": 29}, "mark_size"),
    ],
)
def test_plant_marks_rejects_bad_input(kwargs: dict, match: str) -> None:
    args = {"images": torch.rand(2, 1, 28, 28), **kwargs}
    with pytest.raises(ValueError, match=match):
        plant_marks(**args)


def test_fashion_mnist_pair_relabels() -> None:
    x = torch.rand(6, 1, 28, 28)
    y = torch.tensor([7, 9, 1, 9, 7, 3])
    task = fashion_mnist_pair(x, y, (7, 9))
    assert task.labels.tolist() == [0, 1, 1, 0]
    assert torch.equal(task.images, x[[0, 1, 3, 4]])
    assert task.class_names == ("Sneaker", "Ankle boot")
    with pytest.raises(ValueError, match="two different ids"):
        fashion_mnist_pair(x, y, (7, 7))


def test_swap_pairs_pick_another_class() -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    other = swap_pairs(labels, seed=4)
    assert bool((labels[other] != labels).all())
    assert torch.equal(other, swap_pairs(labels, seed=4))
    with pytest.raises(ValueError, match="two classes"):
        swap_pairs(torch.zeros(3, dtype=torch.long))


def _planted(n: int = 40) -> tuple[Tensor, Tensor, Tensor]:
    task = plant_marks(_dark_garments(n, 0), seed=1)
    assert task.regions is not None
    return task.images, task.labels, task.regions


def test_report_scores_a_copying_decoder() -> None:
    x, y, _ = _planted()
    cae = _tiny(_CopyDecoderCae)
    rep = evaluate_cae(cae, _MarkDetector(), x, y, n_candidates=5, explain=0)
    assert rep.reconstruction_l1 == 0.0
    assert rep.identity_kept == 1.0  # a copy is nearest to its own source
    assert rep.swap_success == 0.0  # ... and keeps its class
    assert rep.reconstruction_keeps_class == 1.0
    assert math.isnan(rep.flip_rate)


def test_report_scores_a_prototype_decoder() -> None:
    x, y, _ = _planted()
    cae = _tiny(_PrototypeCae)
    cae.prototypes = torch.stack([x[y == 0][0], x[y == 1][0]])  # type: ignore[assignment]
    rep = evaluate_cae(cae, _MarkDetector(), x, y, n_candidates=5, explain=0)
    assert rep.swap_success == 1.0
    # the swap is the other class's prototype whatever the donor: retrieval near chance (1/5)
    assert rep.identity_kept < 0.5
    assert rep.cycle_ratio > 0


def test_report_counterfactual_and_localisation_figures() -> None:
    x, y, regions = _planted(24)
    cae = _tiny()
    cae.compute_centroids(x, y)
    rep = evaluate_cae(
        cae,
        _MarkDetector(),
        x,
        y,
        regions=regions,
        n_candidates=3,
        explain=24,
        explain_kwargs={"min_confidence": None},
    )
    assert rep.n_explained == 24
    assert 0.0 <= rep.flip_rate <= 1.0
    assert rep.n_localised == int((y == 1).sum())
    assert math.isnan(rep.localisation) or 0.0 <= rep.localisation <= 1.0
    md = rep.to_markdown()
    assert "| swap_success |" in md and md.count("\n") == len(rep.as_dict()) + 1
    assert isinstance(CaeReport(**rep.as_dict()), CaeReport)


def test_report_restores_train_mode_and_leaves_no_grad() -> None:
    x, y, _ = _planted(20)
    cae = _tiny()
    cae.compute_centroids(x, y)
    cae.train()
    evaluate_cae(cae, _MarkDetector(), x, y, n_candidates=3, explain=0)
    assert cae.training
    assert all(p.grad is None for p in cae.parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": torch.zeros(3, dtype=torch.long)}, "labels has 3 entries"),
        ({"n_candidates": 1}, "n_candidates must be an int >= 2"),
        ({"n_candidates": 50}, "fewer than n_candidates"),
        ({"scores": "softmax"}, "scores must be"),
        ({"regions": torch.zeros(2, 1, 28, 28, dtype=torch.bool)}, "regions must be"),
    ],
)
def test_report_rejects_bad_input(kwargs: dict, match: str) -> None:
    x, y, _ = _planted(20)
    args = {"labels": y, "explain": 0, "n_candidates": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        evaluate_cae(_tiny(), _MarkDetector(), x, **args)
