"""Nodes failing under a training loop: killed with and without replicas, restarted empty,
stalled with SIGSTOP, and shards evicted under memory pressure.

Each test reads one epoch of a 2400-row dataset (24 shards, batches of 50) through the
CachedDataLoader, injects the fault after a few batches, and checks that every id was
delivered exactly once with its own payload and that no exception reached the loop.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from shardcache.cache import Manifest, ShardCache
from shardcache.dataloader import CachedDataLoader
from shardcache.localcluster import LocalCluster
from shardcache.prefetcher import prefetch

from .harness import SHARD_SIZE, assert_exactly_once, epoch_ids, iterate_with, unique_name

pytestmark = pytest.mark.faults

ROWS = range(2400)
BATCH = 50
FAULT_AT = 8  # batches consumed before the fault: about a sixth of the epoch
# Small enough that most shards are still to be read when the fault hits.
READAHEAD = "24KiB"
HANG_S = 120.0  # an epoch that takes longer than this is a hang, not slowness


def loader_for(cache: ShardCache, dataset: str, **kwargs: Any) -> CachedDataLoader:
    kwargs.setdefault("num_workers", 0)
    return CachedDataLoader(dataset, cache=cache, batch_size=BATCH, readahead=READAHEAD, seed=7, **kwargs)


def shards_on(cluster: LocalCluster, manifest: Manifest, port: int) -> set[int]:
    return {s.index for s in manifest.shards if cluster.primary_for_key(s.key) == port}


def busiest_primary(cluster: LocalCluster, cache: ShardCache, manifest: Manifest, *, spare_metadata: bool) -> int:
    """The primary holding most shards; with ``spare_metadata``, not the one holding the manifest."""
    meta = cluster.primary_for_key(cache.keys.manifest(manifest.name, manifest.version))
    counts = Counter(cluster.primary_for_key(s.key) for s in manifest.shards)
    ranked = [port for port, _ in counts.most_common() if not (spare_metadata and port == meta)]
    return ranked[0]


def within(seconds: float, fn: Callable[[], list[int]]) -> list[int]:
    """``fn()`` on a watchdog thread: a hang fails the test instead of blocking the suite."""
    result: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="fault-epoch", daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the epoch did not finish within {seconds:.0f}s: the loader hangs"
    if errors:
        raise errors[0]
    return result[0]


@pytest.fixture
def dataset(source: Path) -> Callable[[ShardCache], Manifest]:
    def load(cache: ShardCache) -> Manifest:
        return prefetch(source, dataset=unique_name("faults"), cache=cache, shard_size=SHARD_SIZE)

    return load


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_primary_killed_mid_epoch_with_replicas_rides_through(
    workers: int, make_cluster: Callable[..., LocalCluster], caches: Callable[..., ShardCache],
    dataset: Callable[[ShardCache], Manifest],
) -> None:
    cluster = make_cluster(masters=3, replicas=1)
    # A deadline longer than the failover (about 3 s with a 500 ms node timeout): nothing reads through.
    cache = caches(cluster.url, deadline=15.0)
    manifest = dataset(cache)
    victim = busiest_primary(cluster, cache, manifest, spare_metadata=False)
    moved = shards_on(cluster, manifest, victim)
    loader = loader_for(cache, manifest.name, num_workers=workers)

    ids = within(HANG_S, lambda: iterate_with(loader, at=FAULT_AT, action=lambda: cluster.kill_node(victim)))

    assert_exactly_once(ids, ROWS)
    stats = loader.stats()
    assert (stats.misses, stats.read_throughs) == (0, 0), stats  # every shard came from Redis
    if workers == 0:
        assert cache.stats.retries > 0, "the kill did not land mid-epoch"
    assert moved
    assert not shards_on(cluster, manifest, victim), "the replica did not take over"
    loader.set_epoch(1)
    assert_exactly_once(epoch_ids(loader), ROWS)  # the next epoch runs on the promoted replica


@pytest.mark.slow
@pytest.mark.parametrize("holds_manifest", [False, True], ids=["shards-only", "manifest-and-lease-too"])
def test_primary_killed_without_replicas_reads_the_lost_shards_through(
    holds_manifest: bool, make_cluster: Callable[..., LocalCluster], caches: Callable[..., ShardCache],
    dataset: Callable[[ShardCache], Manifest],
) -> None:
    cluster = make_cluster(masters=3, replicas=0)
    cache = caches(cluster.url, deadline=2.0)
    manifest = dataset(cache)
    if holds_manifest:  # the loader's reader lease lives there too: releasing it and taking the next one fail
        victim = cluster.primary_for_key(cache.keys.manifest(manifest.name, manifest.version))
    else:
        victim = busiest_primary(cluster, cache, manifest, spare_metadata=True)
    lost = shards_on(cluster, manifest, victim)
    loader = loader_for(cache, manifest.name)

    ids = within(HANG_S, lambda: iterate_with(loader, at=FAULT_AT, action=lambda: cluster.kill_node(victim)))

    assert_exactly_once(ids, ROWS)
    stats = loader.stats()
    assert 0 < stats.read_throughs <= len(lost), stats
    assert stats.written_back == 0  # nowhere to write: those slots have no node
    loader.set_epoch(1)
    assert_exactly_once(within(HANG_S, lambda: epoch_ids(loader)), ROWS)
    assert loader.stats().read_throughs == stats.read_throughs + len(lost)


@pytest.mark.slow
def test_node_restarted_empty_its_shards_are_read_through_then_written_back(
    make_cluster: Callable[..., LocalCluster], caches: Callable[..., ShardCache],
    dataset: Callable[[ShardCache], Manifest],
) -> None:
    cluster = make_cluster(masters=3, replicas=0)
    cache = caches(cluster.url)
    manifest = dataset(cache)
    victim = busiest_primary(cluster, cache, manifest, spare_metadata=True)
    lost = shards_on(cluster, manifest, victim)
    loader = loader_for(cache, manifest.name)

    ids = within(HANG_S, lambda: iterate_with(
        loader, at=FAULT_AT, action=lambda: cluster.restart_node(victim, empty=True)))
    assert_exactly_once(ids, ROWS)
    assert 0 < loader.stats().read_throughs <= len(lost)
    loader.set_epoch(1)
    assert_exactly_once(epoch_ids(loader), ROWS)

    # Over the two epochs each lost shard was rebuilt once and written back; now all are cached again.
    stats = loader.stats()
    assert stats.read_throughs == stats.written_back == len(lost), stats
    assert cache.missing_shards(manifest) == []
    loader.set_epoch(2)
    before = loader.stats().read_throughs
    assert_exactly_once(epoch_ids(loader), ROWS)
    assert loader.stats().read_throughs == before


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [0, 1])
def test_node_stalled_past_the_deadline_wait_is_bounded(
    replicas: int, make_cluster: Callable[..., LocalCluster], caches: Callable[..., ShardCache],
    dataset: Callable[[ShardCache], Manifest],
) -> None:
    cluster = make_cluster(masters=3, replicas=replicas)
    cache = caches(cluster.url, deadline=3.0, socket_timeout=1.0)
    manifest = dataset(cache)
    victim = busiest_primary(cluster, cache, manifest, spare_metadata=True)
    stalled = shards_on(cluster, manifest, victim)
    loader = loader_for(cache, manifest.name)
    try:
        ids = within(HANG_S, lambda: iterate_with(loader, at=FAULT_AT, action=lambda: cluster.stall_node(victim)))
    finally:
        cluster.resume_node(victim)
    assert_exactly_once(ids, ROWS)
    stats = loader.stats()
    if replicas == 0:
        assert 0 < stats.read_throughs <= len(stalled), stats  # nothing else can serve those slots
    assert cache.stats.retries > 0, "the stall did not land mid-epoch"


@pytest.mark.slow
def test_eviction_under_maxmemory_while_training_reads_through(
    make_cluster: Callable[..., LocalCluster], caches: Callable[..., ShardCache],
    dataset: Callable[[ShardCache], Manifest],
) -> None:
    cluster = make_cluster(masters=3, replicas=0, maxmemory="4mb", maxmemory_policy="allkeys-lru")
    cache = caches(cluster.url)
    manifest = dataset(cache)
    loader = loader_for(cache, manifest.name)

    def memory_pressure() -> None:
        # Another tenant writes 3x the cluster's memory: allkeys-lru evicts the least recently used keys.
        filler = b"x" * (256 * 1024)
        for i in range(3 * 3 * 4 * 4):
            cache.client.set(f"other-tenant:{unique_name('k')}:{i}", filler)

    ids = within(HANG_S, lambda: iterate_with(loader, at=FAULT_AT, action=memory_pressure))

    assert_exactly_once(ids, ROWS)
    stats = loader.stats()
    assert stats.read_throughs > 0, f"nothing was evicted: {stats}"
    evicted = sum(int(redis.Redis(port=p).info("stats")["evicted_keys"]) for p in cluster.ports)
    assert evicted > 0

