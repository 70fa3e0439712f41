"""Capacity: refusing what does not fit, caching what fits, and Redis running out of memory midway."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import redis

from shardcache.cache import connect
from shardcache.errors import CapacityExceeded
from shardcache.prefetcher import Progress, read_source_shard, run_prefetch

from .conftest import cached_ids, write_parquet_files

pytestmark = pytest.mark.slow

WIDTH = 16_000  # bytes per row: incompressible, image-like


@pytest.fixture
def small_cache(cluster_factory):
    cluster = cluster_factory(masters=3, replicas=0, maxmemory="12mb", maxmemory_policy="noeviction")
    with connect(cluster.url) as cache:
        yield cache


def test_too_big_raises_before_writing_anything(small_cache, tmp_path: Path) -> None:
    tmp_path = tmp_path / "src"
    write_parquet_files(tmp_path, files=4, rows=640, row_group_size=200, width=WIDTH)  # ~41 MB
    with pytest.raises(CapacityExceeded) as info:
        run_prefetch(tmp_path, dataset="big", cache=small_cache, shard_size="1MiB")
    err = info.value
    assert err.needed is not None
    assert err.available is not None
    assert err.needed > err.available
    assert "allow_partial" in str(err)
    assert small_cache.datasets() == []


def test_allow_partial_caches_what_fits(small_cache, tmp_path: Path) -> None:
    tmp_path = tmp_path / "src"
    write_parquet_files(tmp_path, files=4, rows=640, row_group_size=200, width=WIDTH)
    report = run_prefetch(tmp_path, dataset="big", cache=small_cache, shard_size="1MiB", allow_partial=True)
    m = report.manifest
    assert report.state == "complete"
    assert not report.failed
    assert 0 < report.uncached < m.num_shards
    assert report.uncached == sum(1 for s in m.shards if not s.cached)
    assert report.written == m.cached_shards
    ids: list[int] = []
    for shard in m.shards:  # cached shards from Redis, the rest read through from the source
        table = small_cache.get_table(m, shard.index) if shard.cached else read_source_shard(m, shard.index)
        ids += table.column("id").to_pylist()
    assert ids == list(range(4 * 640))


def _fill(cache, *, leave_mb: int = 0) -> list[str]:
    """Fill every node with junk until Redis refuses more."""
    keys = []
    for i in range(400):
        key = f"junk:{i}"
        try:
            cache.client.set(key, b"j" * (512 * 1024))
            keys.append(key)
        except redis.exceptions.OutOfMemoryError:
            continue
    return keys


def test_out_of_memory_midway_then_resume(small_cache, tmp_path: Path) -> None:
    tmp_path = tmp_path / "src"
    write_parquet_files(tmp_path, files=2, rows=320, row_group_size=160, width=WIDTH)  # ~10 MB, fits
    junk: list[str] = []

    def fill_after_first(p: Progress) -> None:
        if p.bytes_done > 0 and not junk:
            junk.extend(_fill(small_cache))

    # max_inflight of one shard: the junk goes in while at most one write is in flight, so the shards read
    # after it meet a full Redis. (With the default 64 MiB, every shard could be submitted, and written,
    # before the first progress call.)
    with pytest.raises(CapacityExceeded, match="out of memory"):
        run_prefetch(tmp_path, dataset="oom", cache=small_cache, shard_size="1MiB", max_inflight="1MiB",
                     progress=fill_after_first)
    m = small_cache.manifest("oom")
    assert m.state == "loading"
    assert 0 < m.cached_shards < m.num_shards

    small_cache.client.delete(*junk)
    report = run_prefetch(tmp_path, dataset="oom", cache=small_cache, shard_size="1MiB")
    assert report.state == "complete"
    assert report.skipped == m.cached_shards
    assert Counter(cached_ids(small_cache, report.manifest)) == Counter(range(640))
