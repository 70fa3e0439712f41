"""Fixtures for running the components with kfp.local: a local KFP session and a tiny dataset."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardcache.cache import ShardCache, connect

ROWS_PER_FILE = 300
FILES = 2
FEATURES = 4
SHARD_SIZE = "4KiB"  # a few shards out of a few KB


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "kubeflow"


def load_example(name: str = "pipeline") -> ModuleType:
    """The example pipeline module ``examples/kubeflow/NAME.py``, imported from its file."""
    spec = importlib.util.spec_from_file_location(f"kubeflow_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

@pytest.fixture
def kfp_local(tmp_path: Path) -> Path:
    """``kfp.local`` running tasks as subprocesses of this interpreter; returns the pipeline root."""
    from kfp import local

    root = tmp_path / "kfp-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               workspace_root=str(tmp_path / "kfp-workspace"))
    return root


def write_parquet(folder: Path, *, files: int = FILES, rows: int = ROWS_PER_FILE, seed: int = 0) -> Path:
    """``files`` Parquet files of ``rows`` rows: a fixed-size list ``features`` and a ``label`` linear in them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    weights = np.arange(1, FEATURES + 1, dtype=np.float32) / FEATURES
    for k in range(files):
        x = rng.standard_normal((rows, FEATURES), dtype=np.float32)
        y = x @ weights + np.float32(0.01) * rng.standard_normal(rows, dtype=np.float32)
        features = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), FEATURES)
        pq.write_table(pa.table({"features": features, "label": pa.array(y)}), folder / f"part-{k}.parquet")
    return folder


@pytest.fixture(scope="session")
def preinstalled() -> Any:
    """The components' functions as lightweight components without the pip prelude.

    This virtual environment already holds shardcache and kfp, and pip takes seconds per
    step even when everything is installed; the prelude itself is run by the tests of the
    shipped YAML (test_shipped_components_run) and of the example pipeline.
    """
    from kfp import dsl

    from shardcache.kubeflow_components import components, ops

    return components.Components(**{
        name: dsl.component(base_image=components.BASE_IMAGE, install_kfp_package=False)(getattr(ops, name))
        for name in ("prefetch_op", "plan_op", "commit_op", "cache_status_op", "verify_op", "evict_op")
    })


@pytest.fixture
def train_data(tmp_path: Path) -> Path:
    return write_parquet(tmp_path / "train")


@pytest.fixture
def dataset(redis_url: str) -> Iterator[str]:
    """A unique dataset name, removed from the shared cluster afterwards."""
    name = f"kfp-{uuid.uuid4().hex[:10]}"
    yield name
    with connect(redis_url) as cache:
        remove(cache, name)


def remove(cache: ShardCache, name: str) -> None:
    if name in cache.datasets():
        cache.delete(name, force=True)
