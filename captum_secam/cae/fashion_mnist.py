"""Fashion-MNIST material for the CAE: IDX reader, the CNN classifier, the shipped models.

The package ships one folder per binary task of :mod:`captum_secam.cae.tasks`
(:data:`PRETRAINED_TASKS`) under ``captum_secam/cae/assets/<task>/``:

* ``coats/`` -- pullover (0) vs coat (1);
* ``planted/`` -- garments of every class, class 1 (``"mark"``) carries a planted 6×6 mark
  (its square is stored as the ground-truth region).

Each folder holds

* ``classifier.safetensors`` + ``classifier.json`` -- a two-class :class:`FashionMNISTClassifier`
  (width, class names, test accuracy);
* ``cae.safetensors`` + ``cae.json`` -- a :class:`~captum_secam.cae.ClassAssociationEmbedding`
  trained on the task's training images (without its discriminator; with class-code
  centroids);
* ``samples.npz`` -- the task's first 100 *test* images (uint8), labels, class names and, for
  ``planted``, the marks' boolean regions, read without pickling, so explanations work without
  the Debian dataset.

:func:`load_pretrained` and :func:`sample_task` / :func:`load_samples` read them;
:func:`explain_sample` (and ``captum-secam cae``) explains one sample and writes a figure.
Retrain them with ``examples/train_cae_tasks.py`` (see ``docs/cae.md``).
"""

from __future__ import annotations

import gzip
import json
import numbers
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_secam.cae.attribution import CaeExplanation
from captum_secam.cae.model import ClassAssociationEmbedding
from captum_secam.cae.tasks import BinaryTask

__all__ = [
    "ASSETS",
    "CLASS_NAMES",
    "DEFAULT_ROOT",
    "PRETRAINED_TASKS",
    "FashionMNISTClassifier",
    "explain_sample",
    "load_classifier",
    "load_fashion_mnist",
    "load_pretrained",
    "load_samples",
    "read_idx",
    "sample_task",
    "save_classifier",
    "save_samples",
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
    num_classes: int | None = None,
    progress: bool = True,
) -> FashionMNISTClassifier:
    """Train :class:`FashionMNISTClassifier` with Adam (seeded); returns it in eval mode.

    ``num_classes`` defaults to ``labels.max() + 1`` (10 on Fashion-MNIST, 2 on a binary task).
    """
    torch.manual_seed(seed)
    k = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    model = FashionMNISTClassifier(width=width, num_classes=k)
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


def save_classifier(
    model: FashionMNISTClassifier,
    path: str | Path,
    class_names: tuple[str, ...] | list[str] | None = None,
    **info: Any,
) -> None:
    """Write ``<path>.safetensors`` + ``<path>.json`` (width, classes, names, ``info``).

    ``class_names`` defaults to the ten Fashion-MNIST names (one name per class is required).
    """
    from safetensors.torch import save_file

    names = list(CLASS_NAMES if class_names is None else class_names)
    if len(names) != model.num_classes:
        raise ValueError(
            f"class_names has {len(names)} names but the classifier has {model.num_classes} "
            "classes; give one name per class."
        )
    p = Path(path).with_suffix("")
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    wpath = p.with_name(p.name + ".safetensors")
    save_file(state, str(wpath), metadata={"format": "fmnist_cnn"})
    wpath.chmod(0o644)
    doc = {
        "format": "fmnist_cnn",
        "width": model.width,
        "num_classes": model.num_classes,
        "class_names": names,
    }
    doc.update(info)
    p.with_name(p.name + ".json").write_text(json.dumps(doc, indent=1))


def load_classifier(
    path: str | Path = ASSETS / "coats" / "classifier",
) -> FashionMNISTClassifier:
    """Load a classifier written by :func:`save_classifier` (safetensors; eval mode).

    ``path`` is the checkpoint's stem (default: the shipped ``coats`` classifier; see
    :func:`load_pretrained` for the shipped pairs).
    """
    from safetensors.torch import load_file

    p = Path(path).with_suffix("")
    cpath = p.with_name(p.name + ".json")
    if not cpath.is_file():
        raise FileNotFoundError(
            f"{cpath} not found; a classifier checkpoint is a pair <stem>.safetensors + "
            "<stem>.json written by save_classifier()."
        )
    doc = json.loads(cpath.read_text())
    if doc.get("format") != "fmnist_cnn":
        raise ValueError(f"{p}.json is not a Fashion-MNIST classifier config.")
    k = int(doc.get("num_classes", len(doc.get("class_names", CLASS_NAMES))))
    model = FashionMNISTClassifier(width=int(doc["width"]), num_classes=k)
    model.load_state_dict(load_file(str(p.with_name(p.name + ".safetensors"))))
    return model.eval()


PRETRAINED_TASKS: tuple[str, ...] = ("coats", "planted")


def _task_folder(task: str) -> Path:
    if task not in PRETRAINED_TASKS:
        raise ValueError(
            f"no shipped models for task {task!r}; choose one of {list(PRETRAINED_TASKS)} or "
            "train your own (examples/train_cae_tasks.py)."
        )
    return ASSETS / task


def load_pretrained(
    task: str = "coats",
) -> tuple[FashionMNISTClassifier, ClassAssociationEmbedding]:
    """The shipped ``(classifier, cae)`` pair of a binary task, both in eval mode on the CPU.

    Args:
        task: ``"coats"`` (pullover vs coat) or ``"planted"`` (garments; class 1 carries
            a planted 6×6 mark), see :mod:`captum_secam.cae.tasks`.

    Example:
        >>> classifier, cae = load_pretrained("coats")
        >>> cae.class_names
        ('Pullover', 'Coat')
    """
    folder = _task_folder(task)
    return load_classifier(folder / "classifier"), ClassAssociationEmbedding.load(folder / "cae")


def save_samples(task: BinaryTask, path: str | Path, n: int = 100) -> Path:
    """Store the first ``n`` images of ``task`` (uint8), labels and regions in an ``.npz``."""
    images = (task.images[:n, 0] * 255.0).round().to(torch.uint8).numpy()
    arrays: dict[str, np.ndarray] = {"images": images, "labels": task.labels[:n].numpy()}
    arrays["class_names"] = np.array(task.class_names)
    if task.regions is not None:
        arrays["regions"] = task.regions[:n, 0].numpy()
    p = Path(path)
    np.savez_compressed(p, **arrays)  # type: ignore[arg-type]
    return p


def sample_task(task: str = "coats") -> BinaryTask:
    """The shipped sample of 100 *test* images of a task (with the planted regions)."""
    with np.load(_task_folder(task) / "samples.npz", allow_pickle=False) as f:
        images = torch.from_numpy(f["images"].astype(np.float32) / 255.0).unsqueeze(1)
        labels = torch.from_numpy(f["labels"].astype(np.int64))
        names = tuple(str(v) for v in f["class_names"])
        regions = torch.from_numpy(f["regions"]).unsqueeze(1) if "regions" in f else None
    return BinaryTask(images, labels, (names[0], names[1]), regions)


def load_samples(task: str = "coats") -> tuple[Tensor, Tensor]:
    """The shipped sample of a task's *test* images: ``(N×1×28×28 in [0, 1], labels N)``.

    Example:
        >>> x, y = load_samples("planted")
        >>> x.shape, sorted(set(y.tolist()))
        (torch.Size([100, 1, 28, 28]), [0, 1])
    """
    sample = sample_task(task)
    return sample.images, sample.labels


def _class_id(value: Any, names: Sequence[str], what: str) -> int | None:
    """``value`` -- a class id, a numeric string or a class name (any case) -- as a class id.

    Raises:
        ValueError: naming the classes when ``value`` is neither an id in range nor a name.
    """
    if value is None:
        return None
    choices = ", ".join(f"{i} = {name!r}" for i, name in enumerate(names))
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        k = int(value)
        if not 0 <= k < len(names):
            raise ValueError(f"{what} {k} is out of range; the classes are {choices}.")
        return k
    if isinstance(value, str):
        key = " ".join(value.replace("_", " ").split()).casefold()
        for i, name in enumerate(names):
            if " ".join(name.split()).casefold() == key:
                return i
        raise ValueError(
            f"{what} {value!r} is neither a class id nor a class name; the classes are {choices}."
        )
    raise ValueError(f"{what} must be a class id or a class name ({choices}), got {value!r}.")


class _Explained(NamedTuple):
    """What :func:`explain_sample` computed (the command line prints a summary of it)."""

    out: Path
    explanation: CaeExplanation
    class_names: tuple[str, ...]
    label: int | None


def _explain_sample(
    index: int,
    out: str | Path,
    *,
    task: str,
    target: int | str | None,
    counterfactual_target: int | str | None,
    path: str,
    t_end: float | None,
    min_confidence: float | None,
    fit_steps: int,
    n_path_images: int,
    classifier: nn.Module | None,
    cae: ClassAssociationEmbedding | None,
    image: Tensor | None,
    label: int | str | None,
) -> _Explained:
    from captum_secam.cae.attribution import CaeCounterfactual
    from captum_secam.cae.figures import plot_counterfactual

    if isinstance(n_path_images, bool) or not isinstance(n_path_images, int) or n_path_images < 2:
        raise ValueError(f"n_path_images must be an int >= 2, got {n_path_images!r}.")
    if classifier is None or cae is None:
        clf0, cae0 = load_pretrained(task)
        classifier = classifier if classifier is not None else clf0
        cae = cae if cae is not None else cae0
    names = tuple(cae.class_names)
    if image is None:
        sample = sample_task(task)
        n = len(sample)
        if (
            isinstance(index, bool)
            or not isinstance(index, numbers.Integral)
            or not 0 <= int(index) < n
        ):
            raise ValueError(
                f"index must be an int in 0..{n - 1} (the shipped {task!r} samples), got {index!r}."
            )
        x = sample.images[int(index) : int(index) + 1]
        label = int(sample.labels[int(index)])
    else:
        if not isinstance(image, Tensor) or not (
            image.dim() in (2, 3) or (image.dim() == 4 and image.shape[0] == 1)
        ):
            raise ValueError(
                "image must be one H×W, C×H×W or 1×C×H×W image tensor in [0, 1], got "
                f"{getattr(image, 'shape', type(image))}."
            )
        x = image.detach().float().reshape(1, -1, *image.shape[-2:])
        label = _class_id(label, names, "label")
    explainer = CaeCounterfactual(classifier, cae)
    with warnings.catch_warnings():
        # a missing flip is reported by the figure's title (and by the command line)
        warnings.filterwarnings("ignore", message="CaeCounterfactual:", category=UserWarning)
        res = explainer.attribute(
            x,
            target=_class_id(target, names, "target"),
            counterfactual_target=_class_id(counterfactual_target, names, "counterfactual_target"),
            path=path,
            t_end=t_end,
            min_confidence=min_confidence,
            fit_steps=fit_steps,
            return_counterfactuals=True,
        )
    assert isinstance(res, CaeExplanation)
    fig = plot_counterfactual(
        res, 0, cae, classifier, x[0], class_names=names, label=label, n_path_images=n_path_images
    )
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    return _Explained(out_path, res, names, label)


def explain_sample(
    index: int = 0,
    out: str | Path = "cae_explanation.png",
    *,
    task: str = "coats",
    target: int | str | None = None,
    counterfactual_target: int | str | None = None,
    path: str = "linear",
    t_end: float | None = None,
    min_confidence: float | None = 0.6,
    fit_steps: int = 30,
    n_path_images: int = 6,
    classifier: nn.Module | None = None,
    cae: ClassAssociationEmbedding | None = None,
    image: Tensor | None = None,
    label: int | str | None = None,
) -> Path:
    """Explain one shipped test image of a task with CAE and write the counterfactual figure.

    Runs :class:`~captum_secam.cae.CaeCounterfactual` on the image and draws
    :func:`~captum_secam.cae.figures.plot_counterfactual`: the original (true label and the
    classifier's prediction), the reconstruction, the counterfactual, the saliency map, and the
    images decoded along the class-code segment from the codes the explanation used; the
    title names the explained class and the class reached, or says that nothing flipped.

    Args:
        index: index into the task's shipped sample of test images (0..99), see
            :func:`sample_task`; ignored when ``image`` is given.
        out: PNG path to write (its folder is created).
        task: ``"coats"`` or ``"planted"`` (:data:`PRETRAINED_TASKS`): whose shipped models
            and samples to use.
        target: class to explain, as an id or a class name (case-insensitive, e.g.
            ``"coat"``); default: the classifier's prediction.
        counterfactual_target: class to move toward (id or name); default: the nearest other
            class-code centroid.
        path, t_end, min_confidence, fit_steps: passed to
            :meth:`CaeCounterfactual.attribute <captum_secam.cae.CaeCounterfactual.attribute>`.
        n_path_images: images drawn along the path (>= 2, rows of at most 6).
        classifier, cae: models to use instead of the task's shipped ones (the class names
            come from ``cae.class_names``).
        image: an H×W, C×H×W or 1×C×H×W image in ``[0, 1]`` to explain instead of ``index``.
        label: its true class (id or name), shown in the figure (optional; with ``index`` the
            sample's label is used).

    Returns:
        The path of the PNG written.

    Raises:
        ValueError: for an unknown task, an ``index`` out of range, an unknown class name or
            id, an image that does not fit the CAE, or options ``attribute`` rejects.

    Example:
        >>> explain_sample(3, "explanation.png", task="planted")  # doctest: +SKIP
        PosixPath('explanation.png')
    """
    return _explain_sample(
        index,
        out,
        task=task,
        target=target,
        counterfactual_target=counterfactual_target,
        path=path,
        t_end=t_end,
        min_confidence=min_confidence,
        fit_steps=fit_steps,
        n_path_images=n_path_images,
        classifier=classifier,
        cae=cae,
        image=image,
        label=label,
    ).out
