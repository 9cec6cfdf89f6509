"""``explain_dataset``: explain every image of a folder into a resumable Parquet dataset.

DataLoader workers read, decode, resize, preprocess and segment the images (off the model's
critical path); the main process runs the method on whole batches on the CPU or CUDA, and
writes each finished shard atomically (:mod:`captum_secam.dataset.store`).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from captum.attr import Attribution
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from captum_secam.dataset.methods import BatchExplainer, MethodSpec, resolve_method, top_k_ids
from captum_secam.dataset.schema import empty_row, encode_mask_png, import_pyarrow
from captum_secam.dataset.sources import (
    ImageSource,
    Normalize,
    PreparedImage,
    describe_callable,
    prepare_image,
)
from captum_secam.dataset.store import OutputStore

__all__ = ["DEFAULT_SHARD_SIZE", "DatasetSummary", "explain_dataset"]

DEFAULT_SHARD_SIZE = 256


@dataclass
class DatasetSummary:
    """What one call of :func:`explain_dataset` did.

    Attributes:
        out: The output folder.
        n_images: Images in the dataset (every one has a row once the run is complete).
        n_explained: Images explained by this call.
        n_skipped: Images found already finished (earlier runs) and skipped.
        n_failed: Images of this call that could not be decoded (their rows hold the reason).
        failures: ``(path or id, reason)`` for this call's failures.
        shards_written: Shards written by this call.
        seconds: Wall time of this call (model set-up excluded).
        ignored_files: Files of the folder without an image extension.
    """

    out: str
    n_images: int
    n_explained: int = 0
    n_skipped: int = 0
    n_failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    shards_written: int = 0
    seconds: float = 0.0
    ignored_files: int = 0

    @property
    def images_per_second(self) -> float:
        """Images (explained or failed) processed per second by this call."""
        done = self.n_explained + self.n_failed
        return done / self.seconds if self.seconds > 0 else 0.0


class _PreparedImages(Dataset[PreparedImage]):
    """The per-image work of DataLoader workers (index = image id)."""

    def __init__(
        self,
        source: ImageSource,
        image_size: int,
        preprocess: Callable[[np.ndarray], Tensor],
        segmentation: dict[str, Any] | None,
    ) -> None:
        self.source = source
        self.image_size = image_size
        self.preprocess = preprocess
        self.segmentation = segmentation

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, image_id: int) -> PreparedImage:
        try:
            item, read_ms = self.source.load(image_id)
        except OSError as err:  # unreadable file: recorded like an undecodable one
            return PreparedImage(image_id, None, None, None, None, f"OSError: {err}", 0.0, 0.0)
        return prepare_image(
            image_id, item, read_ms, self.image_size, self.preprocess, self.segmentation
        )


def _keep_list(batch: list[PreparedImage]) -> list[PreparedImage]:
    return batch


def shard_batches(store: OutputStore, shards: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches of image ids that never straddle shards (fixed composition, so reruns match)."""
    batches: list[list[int]] = []
    for shard in shards:
        ids = list(store.shard_ids(shard))
        batches.extend(ids[i : i + batch_size] for i in range(0, len(ids), batch_size))
    return batches


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) of the model's parameters and buffers."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def layer_name(model: nn.Module, layer: nn.Module | None) -> str | None:
    """The dotted name of ``layer`` in ``model``.

    Raises:
        ValueError: ``layer`` is not a submodule of ``model``.
    """
    if layer is None:
        return None
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError(
        f"layer {type(layer).__name__} is not part of the model; pass a submodule of the same "
        "model instance, e.g. model.layer4"
    )


def job_config(
    source: ImageSource,
    model: nn.Module,
    layer: nn.Module | None,
    spec: MethodSpec,
    *,
    preprocess: Callable[..., Any],
    image_size: int,
    segmentation: dict[str, Any],
    target: int | None,
    top_k: int,
) -> dict[str, Any]:
    """Everything that determines the rows; a rerun must match it exactly."""
    from captum_secam import __version__

    return {
        "images": source.fingerprint(),
        "root": source.root,
        "model": f"{type(model).__qualname__}:{model_fingerprint(model)}",
        "layer": layer_name(model, layer),
        "method": spec.name,
        "params": spec.params,
        "preprocess": describe_callable(preprocess),
        "image_size": image_size,
        "segmentation": segmentation,
        "target": target,
        "top_k": top_k,
        "version": __version__,
    }


def result_rows(
    prepared: list[PreparedImage],
    explainer: BatchExplainer,
    shard_size: int,
    device: torch.device,
    top_k: int,
) -> list[dict[str, Any]]:
    """Explain one batch of prepared images and build their rows (failures included)."""
    from captum_secam import __version__

    spec = explainer.spec
    rows = []
    for item in prepared:
        row = empty_row(item.image_id, None, item.image_id // shard_size)
        row.update(
            method=spec.name,
            params=spec.params_json(),
            version=__version__,
            decode_ms=item.decode_ms,
            segment_ms=item.segment_ms,
            width=item.width,
            height=item.height,
            status="ok" if item.error is None else "error",
            error=item.error,
        )
        rows.append(row)
    good = [i for i, item in enumerate(prepared) if item.error is None]
    if not good:
        return rows
    start = time.perf_counter()
    x = torch.stack([prepared[i].inputs for i in good]).to(device)  # type: ignore[misc]
    mask = torch.stack([prepared[i].mask for i in good])[:, None].to(device, torch.long)  # type: ignore[misc]
    result = explainer.explain(x, mask, [prepared[i].image_id for i in good])
    share = (time.perf_counter() - start) * 1000.0 / len(good)
    masks_np = mask[:, 0].cpu().numpy()
    for j, i in enumerate(good):
        scores = result.scores[j]
        rows[i].update(
            predicted_class=int(result.predicted_class[j]),
            predicted_probability=float(result.predicted_probability[j]),
            target=int(result.target[j]),
            target_probability=float(result.target_probability[j]),
            n_segments=int(scores.shape[0]),
            scores=[float(v) for v in scores],
            top_k=top_k_ids(scores, top_k),
            mask_png=encode_mask_png(masks_np[j]),
            explain_ms=share,
        )
    return rows


def _check_options(image_size: int, top_k: int, batch_size: int, num_workers: int) -> None:
    for name, value, minimum in (
        ("image_size", image_size, 8),
        ("top_k", top_k, 1),
        ("batch_size", batch_size, 1),
        ("num_workers", num_workers, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    first = next(iter(model.parameters()), None)
    model_device = first.device if first is not None else torch.device("cpu")
    if device is None:
        return model_device
    wanted = torch.device(device)
    if wanted.type != model_device.type or (
        wanted.index is not None and wanted.index != model_device.index
    ):
        raise ValueError(
            f"the model is on {model_device} but device={str(wanted)!r}; move it first with "
            f"model.to({str(wanted)!r})"
        )
    return model_device


@dataclass
class _Run:
    """One run's moving parts, shared by the single-process loop and the Ray driver."""

    source: ImageSource
    store: OutputStore
    top_k: int
    summary: DatasetSummary
    buffers: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, rows: list[dict[str, Any]], on_progress: Callable[[int], None]) -> None:
        for row in rows:
            image_id = int(row["id"])
            row["path"] = self.source.paths[image_id]
            if row["status"] != "ok":
                self.summary.n_failed += 1
                self.summary.failures.append((str(row["path"] or image_id), str(row["error"])))
            else:
                self.summary.n_explained += 1
            shard = int(row["shard"])
            self.buffers.setdefault(shard, []).append(row)
            if len(self.buffers[shard]) == len(self.store.shard_ids(shard)):
                self.store.write_shard(shard, self.buffers.pop(shard))
                self.summary.shards_written += 1
        on_progress(len(rows))


def explain_dataset(
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Dataset[Any],
    model: nn.Module,
    out: str | os.PathLike[str],
    *,
    layer: nn.Module | None = None,
    method: str | Attribution = "secam",
    method_params: dict[str, Any] | None = None,
    preprocess: Callable[[np.ndarray], Tensor] | None = None,
    image_size: int = 224,
    segmentation: dict[str, Any] | None = None,
    target: int | None = None,
    top_k: int = 4,
    batch_size: int = 32,
    num_workers: int = 2,
    device: str | torch.device | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = False,
) -> DatasetSummary:
    r"""Explain every image into a Parquet dataset in ``out``, resuming an earlier run.

    Each image is resized to ``image_size``², preprocessed, segmented (SLIC, see
    :data:`~captum_secam.secam.DEFAULT_SEGMENTATION`) in DataLoader workers and explained in
    batches by ``method``; per image, the per-segment scores :math:`s_j` (for SeCam,
    :math:`s_j = \frac{1}{|S_j|}\sum_{(x,y)\in S_j}\tilde M_c(x,y)`) are stored with the mask,
    the prediction and the top-k segments (schema: :mod:`captum_secam.dataset.schema`).

    Rerunning the same call skips finished shards and, after a crash or ``kill -9`` at any
    point, completes the output so that it equals an uninterrupted run's (timing columns
    aside; bit-for-bit with the same ``batch_size`` and device). A different method,
    parameters, model, preprocessing or image list on the same ``out`` is refused.

    Args:
        images: A folder (all image files below it, sorted by relative path), a list of image
            files (kept in its order), or a torch ``Dataset`` of images (PIL, numpy H×W×C or
            C×H×W tensors in [0, 1], optionally ``(image, label)`` tuples).
        model: The classifier; put it on ``device`` first. Eval mode is used (and restored).
        out: Output folder: new, empty, or the output of the same run.
        layer: Layer for ``"secam"`` and ``"gradcam"`` (e.g. ``model.layer4``).
        method: ``"secam"``, ``"gradcam"``, ``"lime"``, ``"kernelshap"``,
            ``"feature_ablation"``, ``"shapley_sampling"``, or a Captum ``Attribution``
            instance (e.g. ``CaeCounterfactual``) returning input-shaped maps.
        method_params: The method's parameters (JSON values); see
            :mod:`captum_secam.dataset.methods` for each method's defaults.
        preprocess: Maps the resized H×W×3 uint8 photo to the model's C×H×W input; default
            ``Normalize(0, 255)`` (values in [0, 1]). Must be picklable for workers.
        image_size: Side of the square the images are resized to.
        segmentation: Keyword arguments of :func:`~captum_secam.segment` (default SLIC-50 at
            working size 128).
        target: Class explained in every image; ``None``: each image's predicted class.
        top_k: Segment ids stored per row in ``top_k`` (fewer when an image has fewer).
        batch_size: Images per forward/backward pass.
        num_workers: DataLoader worker processes (0: all work in this process).
        device: Where the model runs; must be the model's device (default: it).
        shard_size: Images per Parquet shard (fixed for the life of ``out``).
        progress: Show a tqdm progress bar (images/s and ETA).

    Returns:
        A :class:`DatasetSummary`.

    Raises:
        ValueError: No images, bad options, an unknown method or parameter, a model on
            another device, or an ``out`` that is not empty and not this run's
            (:class:`~captum_secam.dataset.store.DatasetConfigError`).

    Example:
        >>> from captum_secam.dataset import read_results
        >>> summary = explain_dataset("photos/", model, "explained/", layer=model._bn1)
        >>> table = read_results("explained/")
    """
    setup = plan_run(
        images,
        model,
        out,
        layer=layer,
        method=method,
        method_params=method_params,
        preprocess=preprocess,
        image_size=image_size,
        segmentation=segmentation,
        target=target,
        top_k=top_k,
        batch_size=batch_size,
        num_workers=num_workers,
        shard_size=shard_size,
    )
    source, store, summary = setup.source, setup.store, setup.summary
    run_device = _resolve_device(model, device)
    explainer = BatchExplainer(model, layer, setup.spec, target)
    with store.open(), _eval_mode(model):
        pending = store.pending_shards()
        summary.n_skipped = len(source) - sum(len(store.shard_ids(s)) for s in pending)
        batches = shard_batches(store, pending, batch_size)
        loader = DataLoader(
            _PreparedImages(source, image_size, setup.preprocess, setup.segmentation),
            batch_sampler=batches,
            num_workers=num_workers,
            collate_fn=_keep_list,
        )
        run = _Run(source, store, top_k, summary)
        start = time.perf_counter()
        with _progress_bar(progress, len(source), summary.n_skipped) as update:
            for prepared in loader:
                rows = result_rows(prepared, explainer, shard_size, run_device, top_k)
                run.add(rows, update)
        summary.seconds = time.perf_counter() - start
        store.finish()
    return summary


@dataclass
class RunSetup:
    """The checked inputs of a run (shared by :func:`explain_dataset` and the Ray job)."""

    source: ImageSource
    spec: MethodSpec
    preprocess: Callable[[np.ndarray], Tensor]
    segmentation: dict[str, Any]
    store: OutputStore
    summary: DatasetSummary


def plan_run(
    images: Any,
    model: nn.Module,
    out: str | os.PathLike[str],
    *,
    layer: nn.Module | None,
    method: str | Attribution,
    method_params: dict[str, Any] | None,
    preprocess: Callable[[np.ndarray], Tensor] | None,
    image_size: int,
    segmentation: dict[str, Any] | None,
    target: int | None,
    top_k: int,
    batch_size: int,
    num_workers: int,
    shard_size: int,
) -> RunSetup:
    """Validate every argument and build the output store (not yet opened)."""
    import_pyarrow()
    _check_options(image_size, top_k, batch_size, num_workers)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if target is not None and (not isinstance(target, int) or isinstance(target, bool)):
        raise ValueError(f"target must be a class index (int) or None, got {target!r}")
    source = ImageSource.from_input(images)
    spec = resolve_method(method, method_params)
    preprocess = preprocess if preprocess is not None else Normalize(0.0, 255.0)
    seg = _segmentation_config(segmentation)
    config = job_config(
        source,
        model,
        layer,
        spec,
        preprocess=preprocess,
        image_size=image_size,
        segmentation=seg,
        target=target,
        top_k=top_k,
    )
    store = OutputStore(out, config, len(source), shard_size)
    summary = DatasetSummary(os.fspath(out), len(source), ignored_files=len(source.ignored))
    return RunSetup(source, spec, preprocess, seg, store, summary)


def _segmentation_config(segmentation: dict[str, Any] | None) -> dict[str, Any]:
    from captum_secam.secam import _segmentation_params

    params = _segmentation_params(segmentation)
    params.setdefault("method", "slic")
    return params


class _eval_mode:
    """Run the model in eval mode; restore every module's flag afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> None:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for module, flag in self.flags:
            module.training = flag


class _progress_bar:
    """A tqdm bar (images/s, ETA) or a no-op; yields an ``update(n)`` function."""

    def __init__(self, enabled: bool, total: int, initial: int) -> None:
        self.bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="img", smoothing=0.1)

    def __enter__(self) -> Callable[[int], None]:
        return self.bar.update if self.bar is not None else (lambda _n: None)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
