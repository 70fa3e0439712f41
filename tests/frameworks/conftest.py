"""Fixtures of the framework tests (Lightning, transformers.Trainer; Accelerate and torchrun in their own files).

Every test runs the framework as a user would: real processes with gloo on CPU, a small cached dataset
with a unique ``id`` column, and the delivered ids written per rank and epoch to JSON files, so that
the tests count them (:func:`check_epoch`). The processes are launched by :mod:`.launch`.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardcache.cache import Manifest, ShardCache, connect
from shardcache.prefetcher import prefetch

ROWS = 1000
# Rendezvous ports of the launched ranks (MASTER_PORT), apart from the Redis fixtures' ranges.
RENDEZVOUS_PORTS = (28000, 28999)  # below the ephemeral range (tests/conftest.py)


@pytest.fixture(scope="session")
def framework_cache(redis_url: str) -> Iterator[ShardCache]:
    with connect(redis_url) as c:
        yield c


@pytest.fixture(scope="session")
def framework_dataset(framework_cache: ShardCache, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manifest]:
    """``ROWS`` rows with ids 0..ROWS-1 in uneven shards (read only: share it)."""
    root = tmp_path_factory.mktemp("framework-source")
    ids = np.arange(ROWS, dtype=np.int64)
    sizes = (20 + 20 * np.sin(ids / 30.0)).astype(int)
    table = pa.table({"id": pa.array(ids), "pad": pa.array([bytes(int(s)) for s in sizes], type=pa.binary())})
    for k, (lo, hi) in enumerate([(0, 450), (450, ROWS)]):
        pq.write_table(table.slice(lo, hi - lo), root / f"part-{k}.parquet", row_group_size=64)
    name = f"test-fw-{uuid.uuid4().hex[:8]}"
    manifest = prefetch(str(root), dataset=name, cache=framework_cache, shard_size="4KiB")
    assert manifest.num_shards >= 8
    yield manifest
    framework_cache.delete(name, force=True)


def check_epoch(per_rank: list[list[list[int]]], *, padding: int, what: str) -> list[int]:
    """Every id of the dataset once across ranks, at most ``padding`` repeats; returns rank 0's order."""
    counts = Counter(i for batches in per_rank for batch in batches for i in batch)
    missing = set(range(ROWS)) - set(counts)
    assert not missing, f"{what}: {len(missing)} ids never delivered"
    assert set(counts) == set(range(ROWS)), f"{what}: ids outside the dataset"
    repeats = sum(c - 1 for c in counts.values())
    assert repeats <= padding, f"{what}: {repeats} ids delivered twice (padding allows {padding})"
    return [i for batch in per_rank[0] for i in batch]


def rendezvous_port(free_ports) -> int:  # type: ignore[no-untyped-def]
    return free_ports(1, *RENDEZVOUS_PORTS, bus=False)


def read_ranks(out: Path, prefix: str, world_size: int) -> list[dict]:
    import json

    return [json.loads((out / f"{prefix}-rank{r}.json").read_text()) for r in range(world_size)]
