"""Fashion-MNIST material for the CAE: IDX reader, the shipped CNN classifier, pretrained assets.

The package ships (under ``captum_secam/cae/assets/``):

* ``classifier.safetensors`` + ``classifier.json`` -- :class:`FashionMNISTClassifier` weights;
* ``cae.safetensors`` + ``cae.json`` -- a :class:`~captum_secam.cae.ClassAssociationEmbedding`
  trained on the Fashion-MNIST training set (without its discriminator);
* ``fashion_mnist_samples.npz`` -- the first 100 test images (uint8) and labels, stored without
  pickling, so the CLI can explain an image without the Debian dataset.

Retrain them with ``examples/train_cae_fashion_mnist.py`` (see ``docs/cae.md``).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_secam.cae.attribution import CaeExplanation
from captum_secam.cae.model import ClassAssociationEmbedding

__all__ = [
    "ASSETS",
    "CLASS_NAMES",
    "DEFAULT_ROOT",
    "FashionMNISTClassifier",
    "explain_fashion_mnist",
    "load_classifier",
    "load_fashion_mnist",
    "load_pretrained",
    "load_samples",
    "read_idx",
    "save_classifier",
    "train_classifier",
]

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
ASSETS = Path(__file__).resolve().parent / "assets"
_IDX_DTYPES: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain), e.g. ``train-images-idx3-ubyte.gz``.

    Raises:
        ValueError: if the header is not a valid IDX header or the size does not match.
    """
    p = Path(path)
    opener: Any = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{p} is not an IDX file (bad magic number).")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = int(np.prod(shape)) if shape else 1
    if len(data) - header != count * dtype.itemsize:
        raise ValueError(f"{p}: header announces shape {shape} but the payload size differs.")
    return (
        np.frombuffer(data, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def load_fashion_mnist(
    split: str = "train", root: str | Path = DEFAULT_ROOT
) -> tuple[Tensor, Tensor]:
    """Load Fashion-MNIST from the IDX files of the Debian package ``dataset-fashion-mnist``.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        root: folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``.

    Returns:
        ``(images N×1×28×28 float32 in [0, 1], labels N int64)``.
    """
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    root = Path(root)
    img_path = root / f"{prefix}-images-idx3-ubyte.gz"
    if not img_path.is_file():
        raise FileNotFoundError(
            f"{img_path} not found; install the dataset with "
            "`apt-get install dataset-fashion-mnist` or pass root=<folder with the IDX files>."
        )
    images = read_idx(img_path)
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    x = torch.from_numpy(images.copy()).float().div_(255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


class FashionMNISTClassifier(nn.Module):
    """Small CNN for 1×28×28 images in ``[0, 1]``: three conv blocks (28², 14², 7²) and a
    linear head on the flattened 7×7 feature map; :attr:`block3` is the layer for CAM-style
    methods (Grad-CAM, SeCam).

    Example:
        >>> model = FashionMNISTClassifier().eval()
        >>> model(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.width = width
        self.num_classes = num_classes
        w = width
        self.block1 = nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU())
        self.block3 = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4 * w * 7 * 7, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits N×10 for images N×1×28×28 in ``[0, 1]``."""
        y = self.block1((x - 0.286) / 0.353)
        y = self.block2(F.max_pool2d(y, 2))
        y = self.block3(F.max_pool2d(y, 2))
        return self.fc(y.flatten(1))


def train_classifier(
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int = 2,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    width: int = 16,
    progress: bool = True,
) -> FashionMNISTClassifier:
    """Train :class:`FashionMNISTClassifier` with Adam (seeded); returns it in eval mode."""
    torch.manual_seed(seed)
    model = FashionMNISTClassifier(width=width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    total = epochs * ((n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total)
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="classifier", dynamic_ncols=True)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss):.3f}")
    if bar is not None:
        bar.close()
    model.zero_grad(set_to_none=True)
    return model.eval()


def save_classifier(model: FashionMNISTClassifier, path: str | Path, **info: Any) -> None:
    """Write ``<path>.safetensors`` + ``<path>.json`` (width, class names, ``info``)."""
    from safetensors.torch import save_file

    p = Path(path).with_suffix("")
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    wpath = p.with_name(p.name + ".safetensors")
    save_file(state, str(wpath), metadata={"format": "fmnist_cnn"})
    wpath.chmod(0o644)
    doc = {"format": "fmnist_cnn", "width": model.width, "class_names": list(CLASS_NAMES)}
    doc.update(info)
    p.with_name(p.name + ".json").write_text(json.dumps(doc, indent=1))


def load_classifier(path: str | Path = ASSETS / "classifier") -> FashionMNISTClassifier:
    """Load a classifier written by :func:`save_classifier` (safetensors; eval mode)."""
    from safetensors.torch import load_file

    p = Path(path).with_suffix("")
    doc = json.loads(p.with_name(p.name + ".json").read_text())
    if doc.get("format") != "fmnist_cnn":
        raise ValueError(f"{p}.json is not a Fashion-MNIST classifier config.")
    model = FashionMNISTClassifier(width=int(doc["width"]))
    model.load_state_dict(load_file(str(p.with_name(p.name + ".safetensors"))))
    return model.eval()


def load_pretrained() -> tuple[FashionMNISTClassifier, ClassAssociationEmbedding]:
    """The shipped ``(classifier, cae)`` pair, both in eval mode on the CPU.

    Example:
        >>> classifier, cae = load_pretrained()
        >>> cae.class_names[0]
        'T-shirt/top'
    """
    return load_classifier(ASSETS / "classifier"), ClassAssociationEmbedding.load(ASSETS / "cae")


def load_samples() -> tuple[Tensor, Tensor]:
    """The shipped sample of Fashion-MNIST *test* images: ``(N×1×28×28 in [0, 1], labels N)``."""
    with np.load(ASSETS / "fashion_mnist_samples.npz", allow_pickle=False) as f:
        images, labels = f["images"], f["labels"]
    return (
        torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
    )


def explain_fashion_mnist(
    index: int = 0,
    out: str | Path = "cae_explanation.png",
    *,
    target: int | None = None,
    counterfactual_target: int | None = None,
    path: str = "gradient",
    t_end: float | None = None,
    n_path_images: int = 6,
    classifier: nn.Module | None = None,
    cae: ClassAssociationEmbedding | None = None,
    image: Tensor | None = None,
    label: int | None = None,
) -> Path:
    """Explain one Fashion-MNIST test image with CAE and write a one-row PNG figure.

    The figure shows the original, the reconstruction, ``n_path_images`` decoded images along
    the class-code path from the reconstruction to the counterfactual (the last one is the
    counterfactual at the flip point), and the saliency ``|counterfactual − reconstruction|``;
    the title names the classes and says whether the decision flipped.

    Args:
        index: index into the shipped sample of test images (0..99), see :func:`load_samples`.
        out: PNG path to write.
        target: class to explain (default: the classifier's prediction).
        counterfactual_target: class to move toward (default: nearest other centroid).
        path: ``"gradient"`` or ``"linear"`` (see :class:`~captum_secam.cae.CaeCounterfactual`).
        t_end: path length in units of the distance to the counterfactual centroid
            (default: 3 for the gradient path, 1 for the linear one).
        n_path_images: images drawn along the path (>= 2).
        classifier, cae: models to use instead of the shipped ones.
        image: a 1×28×28 or 1×1×28×28 image in ``[0, 1]`` to explain instead of ``index``.
        label: its true label, shown in the figure (optional).

    Returns:
        The path of the PNG written.

    Example:
        >>> explain_fashion_mnist(3, "explanation.png")  # doctest: +SKIP
        PosixPath('explanation.png')
    """
    from matplotlib.figure import Figure

    from captum_secam.cae.attribution import CaeCounterfactual

    if n_path_images < 2:
        raise ValueError(f"n_path_images must be >= 2, got {n_path_images}.")
    if classifier is None or cae is None:
        clf0, cae0 = load_pretrained()
        classifier = classifier if classifier is not None else clf0
        cae = cae if cae is not None else cae0
    if image is None:
        images, labels = load_samples()
        if not 0 <= index < images.shape[0]:
            raise ValueError(f"index must be in 0..{images.shape[0] - 1}, got {index}.")
        x = images[index : index + 1]
        label = int(labels[index])
    else:
        x = image.reshape(1, 1, *image.shape[-2:]).float()
    explainer = CaeCounterfactual(classifier, cae)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the figure title reports a missing flip
        res = explainer.attribute(
            x,
            target=target,
            counterfactual_target=counterfactual_target,
            path=path,
            t_end=t_end,
            return_counterfactuals=True,
        )
    assert isinstance(res, CaeExplanation)
    names = cae.class_names
    flipped = bool(res.flipped[0])
    t_star = float(res.flip_position[0]) if flipped else float("nan")
    # images along the (straight) class-code segment from c to the counterfactual code
    with torch.no_grad():
        s, c = cae.encode(x)
        cf_code = res.counterfactual_codes[:1]
        fr = torch.linspace(0, 1, n_path_images)[:, None]
        strip = cae.decode(s.expand(n_path_images, -1, -1, -1), c + fr * (cf_code - c))
        probs = torch.softmax(classifier(strip), 1)
    tgt, cft = int(res.target[0]), int(res.counterfactual_target[0])
    ncols = 2 + n_path_images + 1
    fig = Figure(figsize=(1.6 * ncols, 2.3))
    axes = fig.subplots(1, ncols)
    panels = [(x[0, 0], "original" + (f"\n(label {names[label]})" if label is not None else ""))]
    panels.append((res.reconstructions[0, 0], "reconstruction"))
    for i in range(n_path_images):
        f = float(fr[i])
        pos = f * t_star if flipped else f
        panels.append((strip[i, 0], f"t={pos:.2f}\n{names[tgt][:8]} {float(probs[i, tgt]):.2f}"))
    for ax, (img, title) in zip(axes[:-1], panels, strict=True):
        ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    sal = res.attributions[0, 0].numpy()
    axes[-1].imshow(sal, cmap="hot", vmin=0, vmax=max(float(sal.max()), 1e-6))
    axes[-1].set_title("saliency\n|cf − recon|", fontsize=7)
    axes[-1].axis("off")
    verdict = (
        f"flipped to {names[int(res.counterfactual_prediction[0])]} at t*={t_star:.3f}"
        if flipped
        else "did NOT flip (map taken at the path end)"
    )
    fig.suptitle(
        f"CAE counterfactual ({path}): explaining {names[tgt]!r}, moving toward {names[cft]!r}; "
        f"{verdict}",
        fontsize=8,
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
