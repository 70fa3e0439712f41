"""Fixtures of the loader tests: one cached dataset with a unique ``id`` column, shared by the session.

Rows carry a ``blob`` whose size varies along the source, so shards hold uneven row counts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardcache.cache import Manifest, ShardCache, connect
from shardcache.dataloader import CachedDataLoader
from shardcache.prefetcher import prefetch

ROWS = 700
IMAGE_BYTES = 48


def make_table(rows: int, *, start: int = 0) -> pa.Table:
    ids = np.arange(start, start + rows, dtype=np.int64)
    rng = np.random.default_rng(start)
    images = rng.integers(0, 256, (rows, IMAGE_BYTES), dtype=np.uint8)
    # Blob sizes swing between 0 and ~300 bytes along the source, so shards get uneven row counts.
    sizes = (150 + 150 * np.sin(ids / 40.0)).astype(int)
    return pa.table(
        {
            "id": pa.array(ids),
            "image": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(IMAGE_BYTES), rows, [None, pa.py_buffer(images.tobytes())]
            ),
            "label": pa.array((ids % 10).astype(np.int16)),
            "vec": pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ids, 3).astype(np.float32)), 3),
            "name": pa.array([f"row-{i}" for i in ids]),
            "blob": pa.array([bytes(int(s)) for s in sizes], type=pa.binary()),
        }
    )


def write_source(root: Path, rows: int, *, files: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cuts = np.linspace(0, rows, files + 1).astype(int)
    for k in range(files):
        pq.write_table(make_table(cuts[k + 1] - cuts[k], start=cuts[k]), root / f"part-{k}.parquet", row_group_size=97)
    return root


def unique_name(prefix: str) -> str:
    return f"test-dl-{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def cache(redis_url: str) -> Iterator[ShardCache]:
    with connect(redis_url) as c:
        yield c


@pytest.fixture(scope="session")
def source_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_source(tmp_path_factory.mktemp("loader-source"), ROWS)


@pytest.fixture(scope="session")
def dataset(cache: ShardCache, source_dir: Path) -> Iterator[Manifest]:
    """The shared dataset (read only: tests that damage shards make their own with ``make_dataset``)."""
    name = unique_name("shared")
    manifest = prefetch(str(source_dir), dataset=name, cache=cache, shard_size="6KiB")
    assert manifest.num_shards >= 8
    assert len({s.rows for s in manifest.shards}) > 2
    yield manifest
    cache.delete(name, force=True)


@pytest.fixture
def make_dataset(cache: ShardCache, tmp_path: Path) -> Iterator[Callable[..., Manifest]]:
    """``make(rows=300, **prefetch options)``: a fresh dataset of this test, removed afterwards."""
    names: list[str] = []

    def make(rows: int = 300, **options: Any) -> Manifest:
        name = unique_name("own")
        names.append(name)
        root = write_source(tmp_path / name, rows)
        return prefetch(str(root), dataset=name, cache=cache, shard_size=options.pop("shard_size", "6KiB"), **options)

    yield make
    for name in names:
        cache.delete(name, force=True)


def ids_of(batches: list[dict[str, Any]]) -> list[int]:
    return [int(i) for b in batches for i in b["id"].tolist()]


def run_ranks(
    name: str, cache: ShardCache, world_size: int, *, stop: int | None = None, **options: Any
) -> tuple[list[list[list[int]]], list[CachedDataLoader]]:
    """Every simulated rank's batches (as id lists), each rank stopping after ``stop`` batches if given."""
    out, loaders = [], []
    for rank in range(world_size):
        loader = CachedDataLoader(name, cache=cache, rank=rank, world_size=world_size, **options)
        batches = []
        for batch in loader:
            batches.append(batch["id"].tolist())
            if stop is not None and len(batches) == stop:
                break
        out.append(batches)
        loaders.append(loader)
    return out, loaders
