"""CAE figures: swap grid, counterfactual grid and the single-image figure, checked by value.

The setup is the one of ``test_cae_attribution.py``: a tiny seeded CAE and a classifier linear
in the image for which image 0's linear path is guaranteed to flip from class 0 to class 1.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_reference_cae
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor, nn

from captum_secam.cae import CaeCounterfactual, CaeExplanation, ClassAssociationEmbedding
from captum_secam.cae.figures import plot_counterfactual, plot_counterfactual_grid, plot_swap_grid

pytestmark = pytest.mark.usefixtures("one_thread")

# long names with spaces and punctuation: captions must carry them in full
NAMES = ("Shirt with a very long name", "Ankle boot/sandal")


class LinearProbe(nn.Module):
    """score_1(x) = <w, x − r> − τ, score_0 = 0 (see test_cae_attribution.py)."""

    r: Tensor

    def __init__(self, w: Tensor, r: Tensor, tau: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.register_buffer("r", r.clone())
        self.tau = tau

    def forward(self, x: Tensor) -> Tensor:
        s1 = ((x - self.r) * self.w).flatten(1).sum(1) - self.tau
        return torch.stack([torch.zeros_like(s1), s1], 1)


def tiny_cae(channels: int = 1, classes: int = 2) -> ClassAssociationEmbedding:
    return tiny_reference_cae(channels, classes)


Setup = tuple[ClassAssociationEmbedding, LinearProbe, Tensor]


@pytest.fixture(scope="module")
def setup() -> Setup:
    cae = tiny_cae()
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        s, c = cae.encode(x)
        r = cae.decode(s[:1], c[:1])
        mu1 = c[0] + 3.0
        w = cae.decode(s[:1], mu1[None]) - r
    cae.set_centroids(torch.stack([c[0], mu1]))
    probe = LinearProbe(w, r, 0.5 * float((w**2).sum())).eval()
    return cae, probe, x


@pytest.fixture(scope="module")
def explanation(setup: Setup) -> CaeExplanation:
    cae, probe, x = setup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # examples 1..3 need not flip
        res = CaeCounterfactual(probe, cae).attribute(
            x, target=0, path="linear", return_counterfactuals=True
        )
    assert isinstance(res, CaeExplanation)
    assert bool(res.flipped[0])  # guaranteed by construction
    return res


def by_label(fig: Figure) -> dict[str, Axes]:
    return {str(ax.get_label()): ax for ax in fig.axes if ax.get_label()}


def shown(ax: Axes) -> np.ndarray:
    return np.asarray(ax.images[0].get_array())


# --------------------------------------------------------------------------- swap grid


def test_swap_grid_cells_are_decoded_swaps(setup: Setup) -> None:
    cae, probe, x = setup
    rows, cols = x[:3], x[1:4]  # x[1] and x[2] are donors of both kinds
    cae.train()  # the figure evaluates in eval mode and restores the flag
    fig = plot_swap_grid(cae, rows, cols, classifier=probe, class_names=NAMES)
    assert cae.training
    cae.eval()
    assert len(fig.axes) == (3 + 1) * (3 + 1)
    axes = by_label(fig)
    with torch.no_grad():
        s, _ = cae.encode(rows)
        _, c = cae.encode(cols)
        for i in range(3):
            np.testing.assert_allclose(shown(axes[f"individual {i}"]), rows[i, 0].numpy())
            for j in range(3):
                expected = cae.decode(s[i : i + 1], c[j : j + 1])
                ax = axes[f"cell {i},{j}"]
                np.testing.assert_allclose(shown(ax), expected[0, 0].numpy(), atol=1e-5)
                p = torch.softmax(probe(expected), 1)[0]
                k = int(p.argmax())
                assert f"{NAMES[k]} ({float(p[k]):.2f})" in ax.get_title().replace("\n", " ")
                # same donor image on both sides: a reconstruction, framed
                assert ("reconstruction" in ax.get_title()) == (i == j + 1)
        for j in range(3):
            np.testing.assert_allclose(shown(axes[f"class {j}"]), cols[j, 0].numpy())
            assert axes[f"class {j}"].get_title().startswith(f"class code from B{j + 1}")
    assert "individual code" in axes["individual 0"].get_title()
    assert not any(p.grad is not None for p in cae.parameters())


def test_swap_grid_rgb_probabilities_and_defaults() -> None:
    cae = tiny_cae(channels=3, classes=3)
    xa = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    xb = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    torch.manual_seed(1)
    head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3), nn.Softmax(1)).eval()
    fig = plot_swap_grid(cae, xa, xb, classifier=head, scores="probabilities")
    axes = by_label(fig)
    with torch.no_grad():
        cell = cae.decode(cae.encode(xa[1:2])[0], cae.encode_class(xb[2:3]))
        p = head(cell)[0]  # used as is, not softmaxed again
    got = shown(axes["cell 1,2"])
    assert got.shape == (16, 16, 3)  # C×H×W → H×W×C
    np.testing.assert_allclose(got, cell[0].permute(1, 2, 0).numpy(), atol=1e-5)
    k = int(p.argmax())
    assert f"{cae.class_names[k]} ({float(p[k]):.2f})" in axes["cell 1,2"].get_title()
    # without a classifier: no predictions, only the reconstruction marks
    plain = by_label(plot_swap_grid(cae, xa, xa))
    assert plain["cell 0,0"].get_title() == "reconstruction"
    assert plain["cell 0,1"].get_title() == ""


def test_swap_grid_rejects_bad_inputs(setup: Setup) -> None:
    cae, probe, x = setup
    with pytest.raises(ValueError, match="1 or 3 channels"):
        plot_swap_grid(cae, torch.rand(2, 2, 16, 16), x)
    with pytest.raises(ValueError, match="channels but this CAE"):
        plot_swap_grid(cae, x, torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="4-D"):
        plot_swap_grid(cae, x[0], x)
    with pytest.raises(ValueError, match="built for 16×16"):
        plot_swap_grid(cae, torch.rand(1, 1, 8, 8), x)
    with pytest.raises(ValueError, match="empty"):
        plot_swap_grid(cae, x[:0], x)
    with pytest.raises(ValueError, match="class_names has 3 names"):
        plot_swap_grid(cae, x, x, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="scores must be"):
        plot_swap_grid(cae, x, x, classifier=probe, scores="softmax")
    with pytest.raises(ValueError, match="classifier returns 3 class scores"):
        plot_swap_grid(cae, x, x, classifier=lambda im: torch.zeros(im.shape[0], 3))


# --------------------------------------------------------------------------- counterfactual grid


def test_counterfactual_grid_rows_captions_and_outline(
    setup: Setup, explanation: CaeExplanation
) -> None:
    _, _, x = setup
    exp = explanation
    regions = torch.zeros(4, 1, 16, 16, dtype=torch.bool)
    regions[:, :, 4:9, 5:12] = True
    fig = plot_counterfactual_grid(exp, x, class_names=NAMES, regions=regions, max_rows=3)
    assert len(fig.axes) == 3 * 4
    assert "first 3 of 4" in fig.get_suptitle()
    axes = by_label(fig)
    for r in range(3):
        orig = axes[f"original {r}"].get_title().replace("\n", " ")
        assert f"target: {NAMES[int(exp.target[r])]}" in orig
        np.testing.assert_allclose(shown(axes[f"original {r}"]), x[r, 0].numpy())
        np.testing.assert_allclose(
            shown(axes[f"counterfactual {r}"]), exp.counterfactuals[r, 0].numpy()
        )
        cf = axes[f"counterfactual {r}"].get_title().replace("\n", " ")
        if bool(exp.flipped[r]):
            k = int(exp.counterfactual_prediction[r])
            assert f"{NAMES[k]} ({float(exp.counterfactual_probability[r]):.2f})" in cf
        else:
            assert "no flip" in cf
        sal = axes[f"saliency {r}"]
        np.testing.assert_allclose(shown(sal), exp.attributions[r, 0].double().numpy())
        vmax = max(float(exp.attributions[r].max()), 1e-6)  # an all-zero map still draws
        assert sal.images[0].get_clim()[1] == pytest.approx(vmax)
        assert sal.images[0].get_cmap().name == "hot"
        assert len(sal.collections) == 1  # the cyan outline
        (path,) = sal.collections[0].get_paths()
        vertices = np.asarray(path.vertices)
        xs, ys = vertices[:, 0], vertices[:, 1]
        # the outline runs half-way between region pixels and their neighbours
        assert (xs.min(), xs.max(), ys.min(), ys.max()) == pytest.approx((4.5, 11.5, 3.5, 8.5))
    flipped_title = axes["counterfactual 0"].get_title()
    assert NAMES[1] in flipped_title and "t* = " in flipped_title
    # all rows, no regions: no outline
    fig_all = plot_counterfactual_grid(exp, x, class_names=NAMES)
    assert len(fig_all.axes) == 16
    assert len(by_label(fig_all)["saliency 3"].collections) == 0


def test_counterfactual_grid_rejects_bad_inputs(setup: Setup, explanation: CaeExplanation) -> None:
    _, _, x = setup
    with pytest.raises(ValueError, match="regions must be N×1×H×W"):
        plot_counterfactual_grid(
            explanation, x, class_names=NAMES, regions=torch.zeros(4, 16, 16, dtype=torch.bool)
        )
    with pytest.raises(ValueError, match="regions must be a boolean"):
        plot_counterfactual_grid(
            explanation, x, class_names=NAMES, regions=torch.full((4, 1, 16, 16), 0.5)
        )
    with pytest.raises(ValueError, match="images has shape"):
        plot_counterfactual_grid(explanation, x[:2], class_names=NAMES)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        plot_counterfactual_grid(explanation, x.expand(4, 2, 16, 16), class_names=NAMES)
    with pytest.raises(ValueError, match="class_names has 1 names"):
        plot_counterfactual_grid(explanation, x, class_names=["only"])
    with pytest.raises(ValueError, match="max_rows"):
        plot_counterfactual_grid(explanation, x, class_names=NAMES, max_rows=0)
    with pytest.raises(TypeError, match="CaeExplanation"):
        plot_counterfactual_grid(tuple(explanation), x, class_names=NAMES)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- single image


def test_counterfactual_path_ends_at_the_counterfactual(
    setup: Setup, explanation: CaeExplanation
) -> None:
    cae, probe, x = setup
    exp = explanation
    fig = plot_counterfactual(exp, 0, cae, probe, x[0], class_names=NAMES, label=0)
    axes = by_label(fig)
    path = [axes[f"path {m}"] for m in range(6)]
    assert len([ax for ax in fig.axes if ax.images]) == 4 + 6
    first, last = shown(path[0]), shown(path[-1])
    # the path starts at the reconstruction and ends at the reported counterfactual
    np.testing.assert_allclose(first, exp.reconstructions[0, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(last, exp.counterfactuals[0, 0].numpy(), atol=1e-5)
    with torch.no_grad():
        preds = probe(torch.from_numpy(np.stack([shown(ax) for ax in path]))[:, None])
    assert int(preds[-1].argmax()) == int(exp.counterfactual_prediction[0]) == 1
    assert int(preds[0].argmax()) == int(exp.target[0]) == 0
    probs = torch.softmax(preds, 1)
    for m, ax in enumerate(path):
        k = int(probs[m].argmax())
        assert f"{NAMES[k]} ({float(probs[m, k]):.2f})" in ax.get_title().replace("\n", " ")
    assert path[0].get_title().startswith("0% (own code)")
    assert path[-1].get_title().startswith("100% (counterfactual)")
    assert path[2].get_title().startswith("40%")
    title = fig.get_suptitle().replace("\n", " ")
    t_star = float(exp.flip_position[0])
    assert f"explaining {NAMES[0]!r}" in title
    assert f"flips to {NAMES[1]!r} at t* = {t_star:.2f}" in title
    assert f"true label: {NAMES[0]}" in axes["original"].get_title().replace("\n", " ")
    cf = axes["counterfactual"].get_title().replace("\n", " ")
    assert f"{NAMES[1]} ({float(exp.counterfactual_probability[0]):.2f})" in cf
    np.testing.assert_allclose(shown(axes["saliency"]), exp.attributions[0, 0].double().numpy())
    # more path images than fit in a row wrap onto a second row
    fig9 = plot_counterfactual(exp, 0, cae, probe, x[0:1], class_names=NAMES, n_path_images=9)
    np.testing.assert_allclose(
        shown(by_label(fig9)["path 8"]), exp.counterfactuals[0, 0].numpy(), atol=1e-5
    )


def test_counterfactual_path_uses_the_fitted_individual_code(setup: Setup) -> None:
    cae, _, x = setup
    with torch.no_grad():
        rec = cae.decode(*cae.encode(x[:1]))
    threshold = float(rec.mean()) - 0.002  # x is class 1, its reconstruction just class 0

    def clf(img: Tensor) -> Tensor:
        s1 = (threshold - img.flatten(1).mean(1)) * 200.0
        return torch.stack([torch.zeros_like(s1), s1], 1)

    assert int(clf(x[:1]).argmax()) == 1 and int(clf(rec).argmax()) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        exp = CaeCounterfactual(clf, cae).attribute(
            x[:1],
            target=1,
            fit_steps=30,
            fit_objective="image_and_class",
            path="linear",
            return_counterfactuals=True,
        )
    assert isinstance(exp, CaeExplanation) and bool(exp.fitted[0])
    fig = plot_counterfactual(exp, 0, cae, clf, x[0], class_names=NAMES, n_path_images=3)
    first = shown(by_label(fig)["path 0"])
    # the fitted reconstruction (class 1), not the re-encoded one (class 0)
    np.testing.assert_allclose(first, exp.reconstructions[0, 0].numpy(), atol=1e-5)
    assert float(np.abs(first - rec[0, 0].numpy()).max()) > 1e-4
    assert "fitted" in by_label(fig)["reconstruction"].get_title()
    last = torch.from_numpy(shown(by_label(fig)["path 2"]))[None, None]
    assert int(clf(last).argmax()) == int(exp.counterfactual_prediction[0])


def test_counterfactual_title_says_nothing_flipped(setup: Setup) -> None:
    cae, _, x = setup

    def always_zero(img: Tensor) -> Tensor:
        return torch.stack([torch.ones(img.shape[0]), torch.zeros(img.shape[0])], 1)

    with pytest.warns(UserWarning, match="never left the target"):
        exp = CaeCounterfactual(always_zero, cae).attribute(
            x[:2], path="linear", n_steps=2, return_counterfactuals=True
        )
    assert isinstance(exp, CaeExplanation) and not bool(exp.flipped[1])
    fig = plot_counterfactual(exp, 1, cae, always_zero, x[1], class_names=NAMES)
    title = fig.get_suptitle().replace("\n", " ")
    assert "NOTHING FLIPPED" in title and f"stayed {NAMES[0]!r}" in title
    assert "no flip" in by_label(fig)["counterfactual"].get_title()
    grid = plot_counterfactual_grid(exp, x[:2], class_names=NAMES)
    assert "no flip" in by_label(grid)["counterfactual 1"].get_title()


def test_counterfactual_title_when_the_reconstruction_is_not_the_target(setup: Setup) -> None:
    cae, probe, x = setup
    with pytest.warns(UserWarning, match="not classified as the target"):
        exp = CaeCounterfactual(probe, cae).attribute(
            x[:1], target=1, path="linear", return_counterfactuals=True
        )
    assert isinstance(exp, CaeExplanation) and int(exp.reconstruction_prediction[0]) == 0
    fig = plot_counterfactual(exp, 0, cae, probe, x[0], class_names=NAMES)
    title = fig.get_suptitle().replace("\n", " ")
    assert f"explaining {NAMES[1]!r}" in title
    assert f"NOTHING FLIPPED: the reconstruction is already classified as {NAMES[0]!r}" in title
    # a classifier other than the explained one is noticed on the decoded counterfactual
    with pytest.warns(UserWarning, match="on the decoded counterfactual"):
        plot_counterfactual(
            exp, 0, cae, lambda im: probe(im).flip(1), x[0], class_names=NAMES, n_path_images=2
        )


def test_counterfactual_rejects_bad_inputs(setup: Setup, explanation: CaeExplanation) -> None:
    cae, probe, x = setup
    with pytest.raises(ValueError, match=r"index must be an int in 0\.\.3"):
        plot_counterfactual(explanation, 4, cae, probe, x[0], class_names=NAMES)
    with pytest.raises(ValueError, match=r"index must be"):
        plot_counterfactual(explanation, -1, cae, probe, x[0], class_names=NAMES)
    with pytest.raises(ValueError, match="one C×H×W"):
        plot_counterfactual(explanation, 0, cae, probe, x[:2], class_names=NAMES)
    with pytest.raises(ValueError, match="built for 16×16"):
        plot_counterfactual(explanation, 0, cae, probe, torch.rand(1, 8, 8), class_names=NAMES)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        plot_counterfactual(explanation, 0, cae, probe, torch.rand(2, 16, 16), class_names=NAMES)
    with pytest.raises(ValueError, match="channels but this CAE"):
        plot_counterfactual(explanation, 0, cae, probe, torch.rand(3, 16, 16), class_names=NAMES)
    with pytest.raises(ValueError, match="n_path_images must be an int >= 2"):
        plot_counterfactual(explanation, 0, cae, probe, x[0], n_path_images=1, class_names=NAMES)
    with pytest.raises(ValueError, match="class_names has 3 names"):
        plot_counterfactual(explanation, 0, cae, probe, x[0], class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="label must be"):
        plot_counterfactual(explanation, 0, cae, probe, x[0], label=2, class_names=NAMES)
    with pytest.raises(ValueError, match="scores must be"):
        plot_counterfactual(explanation, 0, cae, probe, x[0], scores="raw", class_names=NAMES)


def test_figures_save_to_png(setup: Setup, explanation: CaeExplanation, tmp_path: Path) -> None:
    cae, probe, x = setup
    figs = {
        "swap": plot_swap_grid(cae, x[:2], x[:3], classifier=probe, class_names=NAMES),
        "grid": plot_counterfactual_grid(explanation, x, class_names=NAMES),
        "single": plot_counterfactual(explanation, 0, cae, probe, x[0], class_names=NAMES),
    }
    for name, fig in figs.items():
        out = tmp_path / f"{name}.png"
        fig.savefig(out, dpi=40)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
