"""A memory squeeze on `shardcache up`'s default settings never evicts metadata (issue 16, item 6).

`up` (and docker-compose, deploy/k8s) run ``volatile-lru``: only keys with a TTL may be evicted.
Shards are written with one (``shard_ttl``, recorded in the manifest), metadata never is. So a
squeeze evicts shards only: readers still find the dataset, read the evicted shards through,
write them back following the manifest's TTL policy, and the next epoch hits again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from shardcache.cache import ShardCache
from shardcache.cache.store import DEFAULT_SHARD_TTL
from shardcache.dataloader import CachedDataLoader
from shardcache.localcluster import DEFAULT_POLICY, LocalCluster
from shardcache.prefetcher import prefetch

from .harness import SHARD_SIZE, assert_exactly_once, epoch_ids, unique_name

pytestmark = pytest.mark.faults

ROWS = range(2400)


def squeeze(cache: ShardCache, cluster: LocalCluster, *, times: float = 3.0) -> int:
    """Another tenant writes ``times`` the cluster's memory in keys with a TTL; returns the keys evicted."""
    filler = b"x" * (64 * 1024)
    for i in range(int(times * cache.capacity().maxmemory / len(filler))):
        cache.client.set(f"tenant:{unique_name('k')}:{i}", filler, ex=3600)
    return sum(int(redis.Redis(port=p).info("stats")["evicted_keys"]) for p in cluster.ports)


@pytest.mark.slow
def test_memory_squeeze_on_the_default_up_settings_evicts_shards_only_and_heals(
    make_cluster: Callable[..., LocalCluster], caches: Callable[..., ShardCache], source: Path,
) -> None:
    cluster = make_cluster(masters=3, replicas=0, maxmemory="4mb")  # `up`'s default policy
    assert DEFAULT_POLICY == "volatile-lru"
    writer = caches(cluster.url)  # connect()'s default shard TTL
    name = unique_name("squeeze")
    manifest = prefetch(source, dataset=name, cache=writer, shard_size=SHARD_SIZE)
    assert manifest.shard_ttl == DEFAULT_SHARD_TTL
    metadata = [writer.keys.datasets(), writer.keys.latest(name), writer.keys.versions(name),
                writer.keys.manifest(name, manifest.version)]

    assert squeeze(writer, cluster) > 0
    assert writer.missing_shards(manifest), "the squeeze evicted no shard"
    assert all(writer.client.exists(k) for k in metadata), "metadata was evicted"
    assert all(writer.client.ttl(k) == -1 for k in metadata)

    # A new reader, connected by plain URL with no shard TTL of its own, finds the dataset, reads
    # the evicted shards through and writes them back with the TTL the manifest records.
    reader = caches(cluster.url, shard_ttl=None)
    loader = CachedDataLoader(name, cache=reader, batch_size=50, seed=1, num_workers=0)
    assert_exactly_once(epoch_ids(loader), ROWS)
    first = loader.stats()
    assert first.read_throughs > 0
    assert first.written_back > 0, first
    ttls = [reader.client.pttl(s.key) for s in manifest.shards]
    assert all(0 < t <= DEFAULT_SHARD_TTL * 1000 for t in ttls), ttls  # evictable again, never pinned

    # The next epoch hits again.
    assert_exactly_once(epoch_ids(loader), ROWS)
    second = loader.stats()
    assert second.read_throughs == first.read_throughs, second
    assert not reader.missing_shards(manifest)
