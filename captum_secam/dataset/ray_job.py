"""``explain_dataset_ray``: the same job on Ray Data, for a cluster of CPUs or GPUs.

``ray.data.read_binary_files`` reads the pending images; Ray tasks (one CPU each) decode,
resize, preprocess and segment them; a pool of ``concurrency`` actors (``num_gpus`` each) holds the
model and the explainer and explains whole batches; the driver streams the rows back and writes
the same shards, manifest and schema as :func:`~captum_secam.dataset.explain_dataset` (so the
two engines can even resume each other's output).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from captum.attr import Attribution
from torch import Tensor, nn

from captum_secam.dataset.job import (
    DEFAULT_SHARD_SIZE,
    DatasetSummary,
    _eval_mode,
    _progress_bar,
    _Run,
    layer_name,
    plan_run,
    result_rows,
)
from captum_secam.dataset.methods import BatchExplainer, MethodSpec
from captum_secam.dataset.sources import PreparedImage, prepare_image

__all__ = ["explain_dataset_ray"]

_RAY_HINT = 'the Ray engine needs Ray Data: pip install "captum-secam[ray]"'


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(_RAY_HINT) from err
    return ray


def _prepare_batch(
    batch: dict[str, np.ndarray],
    image_size: int,
    preprocess: Callable[[np.ndarray], Tensor],
    segmentation: dict[str, Any],
) -> dict[str, np.ndarray]:
    """Ray task: bytes of image files -> model inputs and superpixel masks (numpy batch)."""
    torch.set_num_threads(1)
    prepared = [
        prepare_image(-1, bytes(data), 0.0, image_size, preprocess, segmentation)
        for data in batch["bytes"]
    ]
    columns = _to_columns(prepared, image_size)
    columns["path"] = np.array([os.path.abspath(str(p)) for p in batch["path"]], dtype=object)
    return columns


def _to_columns(prepared: list[PreparedImage], size: int) -> dict[str, np.ndarray]:
    good = next((p.inputs for p in prepared if p.inputs is not None), None)
    channels = 3 if good is None else int(good.shape[0])
    inputs = np.zeros((len(prepared), channels, size, size), dtype=np.float32)
    masks = np.zeros((len(prepared), size, size), dtype=np.int32)
    for i, item in enumerate(prepared):
        if item.inputs is not None and item.mask is not None:
            inputs[i] = item.inputs.numpy()
            masks[i] = item.mask.numpy()
    return {
        "inputs": inputs,
        "mask": masks,
        "error": np.array([p.error or "" for p in prepared], dtype=object),
        "width": np.array([p.width or 0 for p in prepared], dtype=np.int64),
        "height": np.array([p.height or 0 for p in prepared], dtype=np.int64),
        "decode_ms": np.array([p.decode_ms for p in prepared], dtype=np.float64),
        "segment_ms": np.array([p.segment_ms for p in prepared], dtype=np.float64),
    }


def _from_columns(batch: dict[str, np.ndarray], id_of: dict[str, int]) -> list[PreparedImage]:
    items = []
    for i in range(len(batch["path"])):
        failed = bool(batch["error"][i])
        items.append(
            PreparedImage(
                image_id=id_of[str(batch["path"][i])],
                inputs=None if failed else torch.from_numpy(np.array(batch["inputs"][i])),
                mask=None if failed else torch.from_numpy(np.array(batch["mask"][i])),
                width=None if failed else int(batch["width"][i]),
                height=None if failed else int(batch["height"][i]),
                error=str(batch["error"][i]) if failed else None,
                decode_ms=float(batch["decode_ms"][i]),
                segment_ms=float(batch["segment_ms"][i]),
            )
        )
    return items


class _ExplainBatches:
    """Model actor: holds the model and the explainer, explains whole batches."""

    def __init__(
        self,
        id_of: Any,
        model: nn.Module,
        layer: str | None,
        spec: MethodSpec,
        target: int | None,
        top_k: int,
        shard_size: int,
        device: str,
        num_threads: int | None,
    ) -> None:
        import ray

        if num_threads is not None:
            torch.set_num_threads(num_threads)
        # The path -> id table is fetched once per actor, not shipped with every batch.
        self.id_of: dict[str, int] = ray.get(id_of) if isinstance(id_of, ray.ObjectRef) else id_of
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        module = None if layer is None else self.model.get_submodule(layer)
        self.explainer = BatchExplainer(self.model, module, spec, target)
        self.top_k = top_k
        self.shard_size = shard_size

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        from captum_secam.dataset.schema import import_pyarrow, parquet_schema

        pa = import_pyarrow()
        rows = result_rows(
            _from_columns(batch, self.id_of),
            self.explainer,
            self.shard_size,
            self.device,
            self.top_k,
        )
        return pa.Table.from_pylist(rows, schema=parquet_schema())


def explain_dataset_ray(
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
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
    concurrency: int = 1,
    num_gpus: float = 0.0,
    num_threads: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = False,
) -> DatasetSummary:
    """Explain every image with Ray Data into the same Parquet output as ``explain_dataset``.

    Arguments shared with :func:`~captum_secam.dataset.explain_dataset` mean the same and give
    the same rows (per-segment scores equal to within float32 rounding, ~1e-7: batches may be
    grouped differently). Ray is started locally unless ``ray.init`` was called (for a
    cluster: ``ray.init(address="auto")`` first). Every Ray worker must be able to import the
    model's class.

    Args:
        images: A folder or a list of image files (a torch Dataset is not supported here).
        model: The classifier (CPU); each model actor gets a copy, moved to CUDA when
            ``num_gpus > 0``.
        concurrency: Number of model actors.
        num_gpus: GPUs per model actor (0: CPU actors).
        num_threads: torch threads in each model actor (default: torch's choice).

    Returns:
        A :class:`~captum_secam.dataset.DatasetSummary`.
    """
    ray = _import_ray()
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if num_gpus < 0:
        raise ValueError(f"num_gpus must be >= 0, got {num_gpus}")
    if not isinstance(images, (str, os.PathLike, list, tuple)):
        raise TypeError("explain_dataset_ray takes a folder or a list of image files")
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
        num_workers=0,
        shard_size=shard_size,
    )
    source, store, summary = setup.source, setup.store, setup.summary
    with store.open(), _eval_mode(model):
        pending = store.pending_shards()
        ids = [i for s in pending for i in store.shard_ids(s)]
        summary.n_skipped = len(source) - len(ids)
        run = _Run(source, store, top_k, summary)
        start = time.perf_counter()
        if ids:
            if not ray.is_initialized():
                ray.init()
            files = [os.path.abspath(source.file(i)) for i in ids]
            id_of = ray.put(dict(zip(files, ids, strict=True)))
            dataset = ray.data.read_binary_files(files, include_paths=True)
            dataset = dataset.map_batches(
                _prepare_batch,
                fn_kwargs={
                    "image_size": image_size,
                    "preprocess": setup.preprocess,
                    "segmentation": setup.segmentation,
                },
                batch_size=batch_size,
                num_cpus=1,
            )
            dataset = dataset.map_batches(
                _ExplainBatches,
                fn_constructor_kwargs={
                    "id_of": id_of,
                    "model": model,
                    "layer": layer_name(model, layer),
                    "spec": setup.spec,
                    "target": target,
                    "top_k": top_k,
                    "shard_size": shard_size,
                    "device": "cuda" if num_gpus > 0 else "cpu",
                    "num_threads": num_threads,
                },
                batch_size=batch_size,
                compute=ray.data.ActorPoolStrategy(size=concurrency),  # fixed pool of actors
                num_gpus=num_gpus,
                num_cpus=0 if num_gpus > 0 else 1,
            )
            with _progress_bar(progress, len(source), summary.n_skipped) as update:
                for table in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
                    run.add(table.to_pylist(), update)
        summary.seconds = time.perf_counter() - start
        store.finish()
    return summary
