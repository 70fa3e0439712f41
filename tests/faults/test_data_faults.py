"""Bytes changing under a training loop: shards corrupted in place, the manifest deleted, the
whole dataset removed with ``rm --force``.

What shardcache does (README, Reliability):

* a corrupted shard fails its xxh3-64 checksum, is rebuilt from the source (read-through)
  and, since the rebuilt bytes match the manifest's checksum, written back: the cache heals;
* a manifest deleted (or evicted) mid-epoch does not disturb loaders that hold it: they keep
  reading, and read through whatever else is gone; a loader started afterwards gets
  ``DatasetNotFound`` saying the version was removed or evicted, and a prefetch re-run
  restores it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from shardcache.cache import ShardCache
from shardcache.dataloader import CachedDataLoader
from shardcache.errors import DatasetNotFound, ShardCorrupted
from shardcache.localcluster import LocalCluster
from shardcache.prefetcher import prefetch

from .harness import SHARD_SIZE, assert_exactly_once, cached_ids, epoch_ids, iterate_with, unique_name

pytestmark = pytest.mark.faults

ROWS = range(2400)


@pytest.fixture
def cache(make_cluster: Callable[..., LocalCluster], caches: Callable[..., ShardCache]) -> ShardCache:
    return caches(make_cluster(masters=3, replicas=0).url)


def loader_for(cache: ShardCache, dataset: str) -> CachedDataLoader:
    return CachedDataLoader(dataset, cache=cache, batch_size=50, readahead="24KiB", seed=3)


def test_shards_corrupted_in_place_mid_epoch_are_read_through_and_healed(cache: ShardCache, source: Path) -> None:
    manifest = prefetch(source, dataset=unique_name("corrupt"), cache=cache, shard_size=SHARD_SIZE)
    loader = loader_for(cache, manifest.name)

    def flip_a_byte_in_every_shard() -> None:
        for shard in manifest.shards:
            middle = shard.nbytes // 2
            byte = cache.client.getrange(shard.key, middle, middle)
            cache.client.setrange(shard.key, middle, bytes([byte[0] ^ 0xFF]))

    ids = iterate_with(loader, at=8, action=flip_a_byte_in_every_shard)
    assert_exactly_once(ids, ROWS)
    stats = loader.stats()
    assert stats.corrupted > 0, stats
    assert stats.read_throughs == stats.corrupted == stats.written_back, stats

    # Shards read before the flip are still corrupt: the store refuses them rather than decode them.
    with pytest.raises(ShardCorrupted, match="checksum"):
        cached_ids(cache, manifest)
    loader.set_epoch(1)
    assert_exactly_once(epoch_ids(loader), ROWS)  # reads those through too, and writes them back
    assert cached_ids(cache, manifest) == list(ROWS)  # every shard in Redis is intact again


def test_manifest_deleted_mid_epoch_running_loaders_finish_new_ones_get_a_clear_error(
    cache: ShardCache, source: Path,
) -> None:
    manifest = prefetch(source, dataset=unique_name("no-manifest"), cache=cache, shard_size=SHARD_SIZE)
    loader = loader_for(cache, manifest.name)

    def delete_manifest() -> None:
        assert cache.client.delete(cache.keys.manifest(manifest.name, manifest.version)) == 1

    assert_exactly_once(iterate_with(loader, at=8, action=delete_manifest), ROWS)
    assert loader.stats().read_throughs == 0  # the shards are still there
    loader.set_epoch(1)
    assert_exactly_once(epoch_ids(loader), ROWS)  # a running job is not disturbed

    with pytest.raises(DatasetNotFound, match="removed, or its manifest was evicted") as caught:
        loader_for(cache, manifest.name)
    assert manifest.name in str(caught.value)
    assert "prefetch" in str(caught.value)

    prefetch(source, dataset=manifest.name, cache=cache, shard_size=SHARD_SIZE)  # restores it
    assert_exactly_once(epoch_ids(loader_for(cache, manifest.name)), ROWS)


def test_dataset_removed_with_force_mid_epoch_is_read_through(cache: ShardCache, source: Path) -> None:
    manifest = prefetch(source, dataset=unique_name("rm-force"), cache=cache, shard_size=SHARD_SIZE)
    loader = loader_for(cache, manifest.name)

    def remove() -> None:
        assert cache.delete(manifest.name, force=True) == [manifest.version]

    assert_exactly_once(iterate_with(loader, at=8, action=remove), ROWS)
    stats = loader.stats()
    assert stats.read_throughs > 0, stats
    # Nothing is written back for a removed version: rm stays removed.
    assert stats.written_back == 0, stats
    assert cache.datasets().count(manifest.name) == 0
    # Not a chunk of it stays on any primary (a write-back racing the removal undoes itself).
    pattern = f"{cache.keys.prefix}s:{cache.keys.encode(manifest.name)}:*"
    for node in cache.client.get_primaries():  # type: ignore[union-attr]
        assert cache.client.keys(pattern, target_nodes=node) == []  # type: ignore[call-arg]
