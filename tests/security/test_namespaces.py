"""Confusable dataset names never read each other's shards, end to end through the loader.

``a:b`` against ``a`` and ``b``, the percent-encoded spelling ``a%3Ab``, a name that looks
like a hash tag: each is prefetched from its own source (disjoint ids) and each loader
delivers exactly its own source's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults.harness import assert_exactly_once, epoch_ids, write_source

from shardcache.cache import ShardCache, connect
from shardcache.dataloader import CachedDataLoader
from shardcache.errors import DatasetNotFound
from shardcache.prefetcher import prefetch

ROWS = 300


@pytest.fixture
def cache(redis_url: str) -> Iterator[ShardCache]:
    with connect(redis_url, env={}) as c:
        yield c


def test_confusable_names_never_share_shards(cache: ShardCache, tmp_path: Path) -> None:
    a, b = f"ns-{uuid.uuid4().hex[:8]}", f"x-{uuid.uuid4().hex[:8]}"
    names = [f"{a}:{b}", a, b, f"{a}%3A{b}", f"{a}:{b}:0", f"{{d={a}}}", f"{a}:{b} "]
    manifests = {}
    try:
        for k, name in enumerate(names):
            source = write_source(tmp_path / f"source-{k}", rows=ROWS, files=1, start=k * 10_000)
            manifests[name] = prefetch(source, dataset=name, cache=cache, shard_size="4KiB")
        keys = [{s.key for s in m.shards} for m in manifests.values()]
        assert sum(len(k) for k in keys) == len(set().union(*keys)), "two datasets share a shard key"

        for k, name in enumerate(names):
            loader = CachedDataLoader(name, cache=cache, batch_size=32, num_workers=0)
            assert_exactly_once(epoch_ids(loader), range(k * 10_000, k * 10_000 + ROWS))
            for other, m in manifests.items():  # a version id of one name means nothing under another
                if other != name:
                    with pytest.raises(DatasetNotFound):
                        cache.manifest(name, m.version)
    finally:
        for name in manifests:
            cache.delete(name, force=True)
