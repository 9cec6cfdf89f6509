"""Read an explained dataset back, and draw the explanation of any row over its photo."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from captum_secam.dataset.schema import decode_mask_png, import_pyarrow, parquet_schema
from captum_secam.dataset.store import read_manifest

__all__ = ["draw_overlay", "read_results", "row_explanation"]


def read_results(
    out: str | os.PathLike[str], columns: list[str] | None = None, as_pandas: bool = False
) -> Any:
    """All finished rows of an output folder, sorted by image id.

    Only shards listed in the manifest are read, so a folder being written (or left by a
    killed run) gives the complete shards so far, never a partial one.

    Args:
        out: The folder written by :func:`~captum_secam.dataset.explain_dataset`.
        columns: Columns to read (default: all; see :mod:`captum_secam.dataset.schema`).
        as_pandas: Return a ``pandas.DataFrame`` (needs pandas) instead of a pyarrow Table.

    Returns:
        A ``pyarrow.Table`` (or DataFrame) with one row per finished image.

    Example:
        >>> import pyarrow.compute as pc
        >>> table = read_results("explained/")
        >>> table.filter(pc.field("status") == "error").column("error")
    """
    pa = import_pyarrow()
    manifest = read_manifest(out)
    schema = parquet_schema()
    if columns is not None:
        unknown = sorted(set(columns) - set(schema.names))
        if unknown:
            raise ValueError(f"unknown column(s) {unknown}; the columns are {schema.names}")
        schema = pa.schema([schema.field(c) for c in columns])
    tables = [
        pa.parquet.read_table(os.path.join(os.fspath(out), name), columns=columns)
        for name in sorted(manifest["shards"])
    ]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    if as_pandas:
        try:
            return table.to_pandas()
        except ImportError as err:  # pragma: no cover - pandas is optional
            raise ImportError("as_pandas=True needs pandas: pip install pandas") from err
    return table


def _row(table: Any, row: int) -> dict[str, Any]:
    n = table.num_rows if hasattr(table, "num_rows") else len(table)
    if not 0 <= row < n:
        raise IndexError(f"row {row} is out of range for a table of {n} rows")
    if hasattr(table, "slice"):
        return dict(table.slice(row, 1).to_pylist()[0])
    return dict(table.iloc[row].to_dict())


def row_explanation(table: Any, row: int) -> dict[str, Any]:
    """One row with its mask decoded (H×W int64) and its scores as a float32 array.

    Raises:
        ValueError: The row is a failed image (its ``error`` says why).
    """
    record = _row(table, row)
    if record["status"] != "ok":
        raise ValueError(f"row {row} ({record['path']}) was not explained: {record['error']}")
    record["mask"] = decode_mask_png(record["mask_png"])
    record["scores"] = np.asarray(record["scores"], dtype=np.float32)
    return record


def draw_overlay(
    out: str | os.PathLike[str],
    row: int,
    table: Any = None,
    photo: np.ndarray | None = None,
    ax: Any = None,
    top_k: bool = True,
    class_names: Any = None,
) -> Any:
    """Draw row ``row``'s per-segment scores over its photo (Captum's blended heat map).

    Args:
        out: The output folder (its manifest gives the image folder and size).
        row: Row index in ``table``.
        table: From :func:`read_results` (read from ``out`` if None).
        photo: The photo, for rows without a readable file (torch Dataset inputs).
        ax: Matplotlib axes (a new figure's if None).
        top_k: Outline the row's top-k segments (yellow).
        class_names: Names of the classes, to title the panel with the target's name.

    Returns:
        The axes.
    """
    from captum_secam.dataset.sources import decode_image
    from captum_secam.segmentation import scores_to_mask
    from captum_secam.visualization import show_attribution

    manifest = read_manifest(out)
    table = read_results(out) if table is None else table
    record = row_explanation(table, row)
    size = int(manifest["config"]["image_size"])
    if photo is None:
        photo = _photo_of(record, manifest, size)
    else:
        photo, _ = decode_image(np.asarray(photo), size)
    mask = torch.from_numpy(record["mask"])[None, None]
    scores = torch.from_numpy(record["scores"])[None]
    painted = scores_to_mask(scores, mask)
    target = record["target"] if class_names is None else class_names[record["target"]]
    title = (
        f"{record['method']}: {target} "
        f"(p = {record['target_probability']:.2f}), {record['n_segments']} segments"
    )
    ax = show_attribution(painted, photo, ax=ax, title=title)
    if top_k and record["top_k"]:
        chosen = np.isin(record["mask"], np.asarray(record["top_k"])).astype(np.float64)
        ax.contour(chosen, levels=[0.5], colors="yellow", linewidths=1.5)
    return ax


def _photo_of(record: dict[str, Any], manifest: dict[str, Any], size: int) -> np.ndarray:
    from captum_secam.dataset.sources import decode_image

    path = record["path"]
    if path is None:
        raise ValueError(
            f"row of image {record['id']} has no file (a torch Dataset input); pass photo="
        )
    root = manifest["config"].get("root")
    full = path if root is None else os.path.join(root, path)
    with open(full, "rb") as handle:
        photo, _ = decode_image(handle.read(), size)
    return photo
