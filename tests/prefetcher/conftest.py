"""Helpers for the prefetcher tests: small sources with a row id, and checks that every row is cached once."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardcache.cache import ShardCache, checksum, connect, encode_table
from shardcache.cache.manifest import Manifest
from shardcache.prefetcher import read_source_shard


def image_table(start: int, n: int, *, width: int = 256, seed: int = 0) -> pa.Table:
    """Rows ``id`` = start..start+n, an image-like fixed-size binary column and a string."""
    rng = np.random.default_rng(seed + start)
    pixels = pa.py_buffer(rng.integers(0, 255, n * width, dtype=np.uint8).tobytes())
    img = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pixels])
    ids = np.arange(start, start + n, dtype=np.int64)
    return pa.table({"id": ids, "img": img, "name": [f"row-{i}" for i in ids]})


def write_parquet_files(root: Path, *, files: int = 3, rows: int = 400, row_group_size: int = 150,
                        width: int = 256) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(files):
        path = root / f"part-{k:03d}.parquet"
        pq.write_table(image_table(k * rows, rows, width=width), path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def cached_ids(cache: ShardCache, manifest: Manifest) -> list[int]:
    """Every ``id`` held in the cache for ``manifest``, in shard order."""
    out: list[int] = []
    for index in range(manifest.num_shards):
        out += cache.get_table(manifest, index).column("id").to_pylist()
    return out


def assert_rebuilds(cache: ShardCache, manifest: Manifest, **kwargs: object) -> None:
    """Every shard rebuilt from the source equals the cached one, checksum included."""
    for index, shard in enumerate(manifest.shards):
        table = read_source_shard(manifest, index, **kwargs)  # type: ignore[arg-type]
        assert checksum(encode_table(table, compression=manifest.compression)) == shard.checksum
        assert table.equals(cache.get_table(manifest, index))


@pytest.fixture
def cache(redis_url: str) -> Iterator[ShardCache]:
    with connect(redis_url) as c:
        yield c


@pytest.fixture
def dataset_name(cache: ShardCache) -> Iterator[str]:
    name = f"pf-{uuid.uuid4().hex[:10]}"
    yield name
    try:
        cache.delete(name, force=True)
    except Exception:
        pass


@pytest.fixture
def parquet_source(tmp_path: Path) -> Callable[..., Path]:
    def make(**kwargs: int) -> Path:
        root = tmp_path / "src"
        write_parquet_files(root, **kwargs)
        return root

    return make
