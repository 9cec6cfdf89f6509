"""Explain a whole dataset: streaming, resumable Parquet output, one machine or a Ray cluster.

Needs the ``dataset`` extra (pyarrow); :func:`explain_dataset_ray` also needs ``ray``.

Example:
    >>> summary = explain_dataset("photos/", model, "explained/", layer=model._bn1)
    >>> table = read_results("explained/")
    >>> draw_overlay("explained/", row=0)
"""

from captum_secam.dataset.job import DEFAULT_SHARD_SIZE, DatasetSummary, explain_dataset
from captum_secam.dataset.methods import METHODS
from captum_secam.dataset.ray_job import explain_dataset_ray
from captum_secam.dataset.reader import draw_overlay, read_results, row_explanation
from captum_secam.dataset.schema import decode_mask_png, encode_mask_png, parquet_schema
from captum_secam.dataset.sources import IMAGE_EXTENSIONS, Normalize
from captum_secam.dataset.store import DatasetConfigError, read_manifest

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "IMAGE_EXTENSIONS",
    "METHODS",
    "DatasetConfigError",
    "DatasetSummary",
    "Normalize",
    "decode_mask_png",
    "draw_overlay",
    "encode_mask_png",
    "explain_dataset",
    "explain_dataset_ray",
    "parquet_schema",
    "read_manifest",
    "read_results",
    "row_explanation",
]
