"""The Parquet schema of an explained dataset: one row per image, and the mask codec.

Every row describes one input image, explained or not:

* ``id`` (position in the job's fixed image order), ``path``, ``shard``, ``status``
  (``"ok"`` or ``"error"``) and ``error`` (why the file could not be used);
* ``width``/``height`` of the original image; ``predicted_class``, ``predicted_probability``
  (softmax of the model output), ``target`` (the explained class) and ``target_probability``;
* ``n_segments``, ``scores`` (one float per segment, id order), ``top_k`` (segment ids, best
  first) and ``mask_png`` (the segment ids at the model's input size as a lossless PNG: 8-bit
  for at most 256 segments, 16-bit otherwise);
* ``method``, ``params`` (the method and all its parameters as canonical JSON) and
  ``version`` (captum-secam's);
* ``decode_ms``, ``segment_ms``, ``explain_ms`` (per-image timings; the explanation's share of
  its batch).

Rows of a failed image keep ``id``/``path``/``status``/``error`` and the run's method fields;
the result fields are null.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

__all__ = [
    "TIMING_COLUMNS",
    "decode_mask_png",
    "empty_row",
    "encode_mask_png",
    "parquet_schema",
]

TIMING_COLUMNS = ("decode_ms", "segment_ms", "explain_ms")

_PYARROW_HINT = 'explaining a dataset needs pyarrow: pip install "captum-secam[dataset]"'


def import_pyarrow() -> Any:
    """``pyarrow`` (and ``pyarrow.parquet``), or an ImportError naming the extra."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(_PYARROW_HINT) from err
    return pyarrow


def parquet_schema() -> Any:
    """The ``pyarrow.Schema`` of every shard (the same for one machine and for Ray)."""
    pa = import_pyarrow()
    return pa.schema(
        [
            ("id", pa.int64()),
            ("path", pa.string()),
            ("shard", pa.int32()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("predicted_class", pa.int32()),
            ("predicted_probability", pa.float32()),
            ("target", pa.int32()),
            ("target_probability", pa.float32()),
            ("n_segments", pa.int32()),
            ("scores", pa.list_(pa.float32())),
            ("top_k", pa.list_(pa.int32())),
            ("mask_png", pa.binary()),
            ("method", pa.string()),
            ("params", pa.string()),
            ("version", pa.string()),
            ("decode_ms", pa.float32()),
            ("segment_ms", pa.float32()),
            ("explain_ms", pa.float32()),
        ]
    )


def empty_row(image_id: int, path: str | None, shard: int) -> dict[str, Any]:
    """A row with every result field null (filled in by the job)."""
    row: dict[str, Any] = {name: None for name in parquet_schema().names}
    row.update(id=image_id, path=path, shard=shard)
    return row


def encode_mask_png(mask: np.ndarray) -> bytes:
    """Encode an H×W array of segment ids ``0..K−1`` as PNG bytes (lossless).

    Raises:
        ValueError: Not 2-D, negative ids, or more than 65536 segments.
    """
    from PIL import Image

    labels = np.asarray(mask)
    if labels.ndim != 2:
        raise ValueError(f"a segment mask must be H×W, got shape {labels.shape}")
    if labels.size and int(labels.min()) < 0:
        raise ValueError("segment ids must be >= 0")
    top = int(labels.max()) if labels.size else 0
    if top < 256:
        image = Image.fromarray(labels.astype(np.uint8))
    elif top < 65536:
        image = Image.fromarray(labels.astype(np.uint16))
    else:
        raise ValueError(f"at most 65536 segments fit a 16-bit PNG mask, got {top + 1}")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def decode_mask_png(data: bytes) -> np.ndarray:
    """The H×W ``int64`` segment ids stored by :func:`encode_mask_png`."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image).astype(np.int64)
