"""The output folder: a manifest, a lock, and Parquet shards written atomically.

Layout of ``OUT``::

    manifest.json          the run's configuration, the shard plan and the finished shards
    part-00000.parquet     rows of images 0 .. shard_size-1 (sorted by id)
    part-00001.parquet     ...
    .lock                  locked (fcntl.lockf) while a job writes

Image ``i`` always belongs to shard ``i // shard_size``, so a rerun recomputes exactly the
shards the manifest does not list. A shard is written to a temporary file in ``OUT``, flushed
to disk and renamed over its final name (``os.replace``, atomic on POSIX); only then is it
added to the manifest, itself rewritten the same way. A ``kill -9`` therefore leaves either a
listed, complete shard or no listed shard: never a partial or duplicated one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from captum_secam.dataset.schema import import_pyarrow, parquet_schema

__all__ = ["MANIFEST_NAME", "DatasetConfigError", "OutputStore", "read_manifest", "shard_name"]

MANIFEST_NAME = "manifest.json"
_LOCK_NAME = ".lock"
_TMP_PREFIX = ".tmp-"
_FORMAT = 1


class DatasetConfigError(ValueError):
    """The output folder belongs to another run (other method, parameters, model or images)."""


def shard_name(shard: int) -> str:
    """File name of a shard."""
    return f"part-{shard:05d}.parquet"


def atomic_replace(source: str, destination: str) -> None:
    """Rename ``source`` over ``destination`` (atomic; one function so tests can crash here)."""
    os.replace(source, destination)


def _write_bytes_atomically(path: str, data: bytes) -> None:
    tmp = os.path.join(
        os.path.dirname(path), f"{_TMP_PREFIX}{os.getpid()}-{os.path.basename(path)}"
    )
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    atomic_replace(tmp, path)


def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an output folder.

    Raises:
        FileNotFoundError: ``out`` has no manifest (not an explain-dataset output).
    """
    path = os.path.join(os.fspath(out), MANIFEST_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{os.fspath(out)!r} has no {MANIFEST_NAME}; it is not the output of explain_dataset"
        )
    with open(path, encoding="utf-8") as handle:
        return dict(json.load(handle))


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


class OutputStore:
    """Writes the shards of one run into ``out`` and records them in the manifest.

    Args:
        out: The output folder (created if needed).
        config: Everything that determines the rows (method, parameters, model, images...).
        n_images: Number of images of the run.
        shard_size: Images per shard.
    """

    def __init__(
        self, out: str | os.PathLike[str], config: dict[str, Any], n_images: int, shard_size: int
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out = os.fspath(out)
        self.config = json.loads(json.dumps(config, sort_keys=True))
        self.n_images = n_images
        self.shard_size = shard_size
        self.n_shards = -(-n_images // shard_size)
        self.finished: dict[str, dict[str, int]] = {}

    @contextmanager
    def open(self) -> Iterator[OutputStore]:
        """Lock the folder, check or create the manifest, and remove stale temporary files."""
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise ValueError(f"--out {self.out!r} is a file; pass a folder")
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, _LOCK_NAME), "w") as lock:
            # A POSIX record lock belongs to this process: forked DataLoader workers do not
            # inherit it, so it dies with the job even if a worker outlives a kill -9.
            try:
                fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                raise RuntimeError(
                    f"another job is writing {self.out!r}; wait for it or use another folder"
                ) from err
            try:
                self._load_or_create()
                yield self
            finally:
                fcntl.lockf(lock, fcntl.LOCK_UN)

    def _load_or_create(self) -> None:
        for name in os.listdir(self.out):
            if name.startswith(_TMP_PREFIX):  # left by a killed run
                os.remove(os.path.join(self.out, name))
        path = os.path.join(self.out, MANIFEST_NAME)
        if os.path.isfile(path):
            manifest = read_manifest(self.out)
            plan = {"n_images": self.n_images, "shard_size": self.shard_size}
            old_plan = {k: manifest.get(k) for k in plan}
            changes = _differences(manifest.get("config", {}), self.config)
            changes += _differences(old_plan, plan)
            if changes:
                raise DatasetConfigError(
                    f"{self.out!r} holds the results of another run, so adding to it would mix "
                    "runs; use a new output folder (or delete this one). Differences: "
                    + "; ".join(changes)
                )
            self.finished = dict(manifest.get("shards", {}))
        else:
            non_job = [n for n in os.listdir(self.out) if n != _LOCK_NAME]
            if non_job:
                raise ValueError(
                    f"{self.out!r} is not empty and has no {MANIFEST_NAME}; explain into a new "
                    "or empty folder so no other file is mistaken for results"
                )
            self._save_manifest()

    def _save_manifest(self, complete: bool = False) -> None:
        manifest = {
            "format": _FORMAT,
            "config": self.config,
            "n_images": self.n_images,
            "shard_size": self.shard_size,
            "n_shards": self.n_shards,
            "shards": dict(sorted(self.finished.items())),
            "complete": complete,
        }
        data = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
        _write_bytes_atomically(os.path.join(self.out, MANIFEST_NAME), data)

    def shard_ids(self, shard: int) -> range:
        """The image ids of a shard."""
        return range(shard * self.shard_size, min(self.n_images, (shard + 1) * self.shard_size))

    def pending_shards(self) -> list[int]:
        """Shards not listed in the manifest (or whose file was deleted since), in order."""
        return [
            s
            for s in range(self.n_shards)
            if shard_name(s) not in self.finished
            or not os.path.isfile(os.path.join(self.out, shard_name(s)))
        ]

    def write_shard(self, shard: int, rows: list[dict[str, Any]]) -> None:
        """Write one complete shard atomically, then list it in the manifest.

        Raises:
            ValueError: ``rows`` are not exactly the shard's images, once each.
        """
        pa = import_pyarrow()
        rows = sorted(rows, key=lambda r: int(r["id"]))
        if [int(r["id"]) for r in rows] != list(self.shard_ids(shard)):
            raise ValueError(f"shard {shard} must hold images {self.shard_ids(shard)} once each")
        table = pa.Table.from_pylist(rows, schema=parquet_schema())
        final = os.path.join(self.out, shard_name(shard))
        tmp = os.path.join(self.out, f"{_TMP_PREFIX}{os.getpid()}-{shard_name(shard)}")
        with open(tmp, "wb") as handle:
            pa.parquet.write_table(table, handle, compression="zstd")
            handle.flush()
            os.fsync(handle.fileno())
        atomic_replace(tmp, final)
        errors = sum(1 for r in rows if r["status"] != "ok")
        self.finished[shard_name(shard)] = {"rows": len(rows), "errors": errors}
        self._save_manifest()

    def finish(self) -> None:
        """Mark the run complete once every shard is listed."""
        if not self.pending_shards():
            self._save_manifest(complete=True)
