"""A primary dies while readers and a writer run: the replica takes over within seconds, and the
store's retry-with-deadline hides it. Every read succeeds, nothing is lost, nothing is written twice."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

import pyarrow as pa
import pytest

from shardcache.cache import ShardCache, connect, encode_table
from shardcache.localcluster import LocalCluster

from .conftest import new_manifest, tables, write_version

pytestmark = [pytest.mark.slow, pytest.mark.onlycluster]


def busiest_primary(cluster: LocalCluster, keys: list[str]) -> int:
    return Counter(cluster.primary_for_key(k) for k in keys).most_common(1)[0][0]


def test_reads_and_writes_ride_through_a_primary_failover(cluster_factory: Callable[..., LocalCluster]) -> None:
    cluster = cluster_factory(masters=3, replicas=1)
    cache: ShardCache = connect(cluster.url, env={})  # the default policy: a 20 s deadline
    name = f"test-{uuid.uuid4().hex[:8]}"
    parts = tables(24, rows=200)
    expected = [encode_table(t) for t in parts]
    m = write_version(cache, name, parts)
    victim = busiest_primary(cluster, [s.key for s in m.shards])

    stop = threading.Event()
    errors: list[BaseException] = []
    passes = {"read": 0}

    def read_loop() -> None:
        try:
            while not stop.is_set():
                for i, buf in cache.get_shards(m, range(m.num_shards)):
                    assert buf.equals(expected[i]), f"shard {i} came back different"
                passes["read"] += 1
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read_loop, name="failover-reader")
    reader.start()
    try:
        while passes["read"] < 2 and reader.is_alive():
            time.sleep(0.01)
        before = passes["read"]
        cluster.kill_node(victim)
        # A writer starts a new version while the slots of the dead primary have no owner.
        second = tables(12, rows=100, start=10_000)
        with cache.lock(name) as lock:
            v2 = cache.begin(new_manifest(name, second, version="v2"))
            for i, t in enumerate(second):
                cache.put_shard(v2, i, encode_table(t))
            v2 = cache.commit(v2, lock=lock)
        cluster.wait_healthy(timeout=30)
        healed = passes["read"]
        while passes["read"] < healed + 2 and reader.is_alive():
            time.sleep(0.01)
    finally:
        stop.set()
        reader.join(timeout=60)
    assert errors == []
    assert passes["read"] > before  # reads went on through the failover
    assert busiest_primary(cluster, [s.key for s in m.shards]) != victim  # a replica took its slots
    stats = cache.stats.snapshot()
    assert stats["retries"] > 0  # the store rode through it; nothing surfaced
    assert stats["corrupted"] == 0
    # Nothing lost: every shard of both versions is there, whole.
    assert cache.missing_shards(m) == []
    assert v2.cached_shards == 12
    assert [cache.get_table(v2, i).equals(t) for i, t in enumerate(second)] == [True] * 12
    # Nothing done twice: the new version registered once, its shards once each.
    assert cache.versions(name) == ["v1", "v2"]
    assert cache.client.exists(*[cache.keys.chunk(s.key, 1) for s in v2.shards]) == 0
    assert all(isinstance(cache.get_payload(v2, i), pa.Buffer) for i in range(12))
    cache.delete(name)
    cache.close()
