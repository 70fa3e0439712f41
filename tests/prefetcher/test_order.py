"""order="epoch0": shards load in the order a seeded loader first reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shardcache.cache import ShardCache
from shardcache.prefetcher import Progress, run_prefetch
from shardcache.prefetcher.order import load_order
from shardcache.sampling import row_offsets, shard_stream

from .conftest import cached_ids, write_parquet_files


def _first_seen(ids: np.ndarray, rows: list[int]) -> list[int]:
    shards = np.searchsorted(row_offsets(rows), ids, side="right") - 1
    out: list[int] = []
    for s in shards.tolist():
        if s not in out:
            out.append(s)
    return out


@pytest.mark.parametrize("seed", [0, 7])
def test_one_rank_follows_the_shard_stream(seed: int) -> None:
    rows = [10, 10, 7, 10, 3, 10]
    expected = _first_seen(shard_stream(rows, seed=seed, epoch=0), rows)
    assert load_order(rows, order="epoch0", seed=seed) == expected
    assert load_order(rows, order="source") == list(range(6))


def test_ranks_are_interleaved() -> None:
    rows = [10] * 8
    stream = shard_stream(rows, seed=3, epoch=0)
    parts = [_first_seen(stream[:40], rows), _first_seen(stream[40:], rows)]
    order = load_order(rows, order="epoch0", seed=3, world_size=2)
    assert order[:2] == [parts[0][0], parts[1][0]]  # each rank's first shard comes first
    assert order[2:4] == [parts[0][1], parts[1][1]]
    assert sorted(order) == list(range(8))


def test_epoch0_prefetch_writes_first_read_shards_first(cache: ShardCache, dataset_name: str,
                                                        tmp_path: Path) -> None:
    write_parquet_files(tmp_path, files=2, rows=200)
    seen: list[int] = []

    def watch(p: Progress) -> None:
        if p.bytes_done and not seen:  # after the first write: which shard is in Redis?
            m = cache.manifest(dataset_name)
            seen.extend(s.index for s in m.shards if s.cached)

    report = run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="8KiB", order="epoch0",
                          seed=5, workers=1, max_inflight=1, progress=watch)
    m = report.manifest
    first = load_order([s.rows for s in m.shards], order="epoch0", seed=5)[0]
    assert first in seen
    assert len(seen) <= 2
    assert first != 0
    assert cached_ids(cache, m) == list(range(400))
    # the order does not change the data, so not the version either
    assert run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="8KiB").noop
