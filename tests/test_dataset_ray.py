"""explain_dataset_ray on a real local Ray instance (ray.init(num_cpus=2)) equals the local job."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from captum_secam.dataset import (  # noqa: E402
    explain_dataset,
    explain_dataset_ray,
    read_manifest,
    read_results,
)
from captum_secam.dataset.schema import TIMING_COLUMNS  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import _dataset_helpers  # noqa: E402
from _dataset_helpers import IMAGE_SIZE, N_GOOD, SEGMENTATION, make_folder, tiny_model  # noqa: E402

OPTIONS: dict[str, Any] = {
    "image_size": IMAGE_SIZE,
    "segmentation": SEGMENTATION,
    "batch_size": 4,
    "shard_size": 4,
}


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # Workers cannot import the tests folder: ship the model's module by value.
    ray.cloudpickle.register_pickle_by_value(_dataset_helpers)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(_dataset_helpers)
    torch.set_num_threads(threads)


def test_ray_equals_single_process(local_ray: None, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    make_folder(str(folder))
    model = tiny_model()
    explain_dataset(
        folder, model, tmp_path / "local", layer=model.features, num_workers=0, **OPTIONS
    )
    summary = explain_dataset_ray(
        folder, model, tmp_path / "ray", layer=model.features, num_threads=1, **OPTIONS
    )
    assert (summary.n_explained, summary.n_failed) == (N_GOOD, 2)
    local = read_results(tmp_path / "local").to_pylist()
    remote = read_results(tmp_path / "ray").to_pylist()
    assert read_results(tmp_path / "ray").schema == read_results(tmp_path / "local").schema
    assert [r["id"] for r in remote] == list(range(N_GOOD + 2))
    worst = 0.0
    for a, b in zip(local, remote, strict=True):
        if a["status"] == "ok":
            worst = max(worst, float(np.abs(np.subtract(a["scores"], b["scores"])).max()))
        for key in set(a) - {
            "scores",
            "predicted_probability",
            "target_probability",
            *TIMING_COLUMNS,
        }:
            assert a[key] == b[key], key
        if a["status"] == "ok":
            assert a["predicted_probability"] == pytest.approx(b["predicted_probability"], abs=1e-6)
    assert worst <= 1e-6
    assert read_manifest(tmp_path / "ray")["config"] == read_manifest(tmp_path / "local")["config"]

    # Ray resumes a local run's output (same manifest): only the missing shard is computed.
    os.remove(tmp_path / "local" / "part-00001.parquet")
    again = explain_dataset_ray(folder, model, tmp_path / "local", layer=model.features, **OPTIONS)
    assert again.shards_written == 1 and again.n_skipped == N_GOOD + 2 - 4
    assert [r["id"] for r in read_results(tmp_path / "local").to_pylist()] == list(
        range(N_GOOD + 2)
    )


def test_ray_validation(local_ray: None, tmp_path: Path) -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        explain_dataset_ray(tmp_path, model, tmp_path / "o", concurrency=0)
    with pytest.raises(ValueError, match="num_gpus must be >= 0"):
        explain_dataset_ray(tmp_path, model, tmp_path / "o", num_gpus=-1)
    with pytest.raises(TypeError, match="folder or a list"):
        explain_dataset_ray(torch.utils.data.TensorDataset(torch.zeros(2)), model, tmp_path)  # type: ignore[arg-type]
