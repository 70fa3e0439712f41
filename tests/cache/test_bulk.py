"""The direct GET into an Arrow buffer and SET from one (bulk.py) against real servers: same bytes as
redis-py, and every reply they do not handle leaves the connection usable or drops it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import pyarrow as pa
import pytest
import redis.exceptions as rex
import xxhash

from shardcache.cache import RetryPolicy, ShardCache, checksum, connect
from shardcache.cache.bulk import NotBulk, _exchange, _exchange_set, _SparseRegions, read_bulk, write_bulk
from shardcache.cache.store import shards as store_module
from shardcache.localcluster import LocalCluster


def key() -> str:
    return f"sc:test:bulk:{uuid.uuid4().hex}"


@pytest.mark.parametrize("size", [0, 1, 200, 65_536, 5 * 1024 * 1024 + 3])
def test_same_bytes_as_redis_py(cache: ShardCache, size: int) -> None:
    k, value = key(), os.urandom(size)
    cache.client.set(k, value)
    try:
        got = read_bulk(cache.client, k, cluster=cache.is_cluster)
        assert isinstance(got, pa.Buffer)
        assert got.to_pybytes() == value == cache.client.get(k)
    finally:
        cache.client.delete(k)
    assert read_bulk(cache.client, k, cluster=cache.is_cluster) is None


@pytest.mark.parametrize("size", [0, 5, 256 * 1024, 5 * 1024 * 1024 + 3])
def test_the_checksum_is_taken_while_the_value_arrives(cache: ShardCache, size: int) -> None:
    k, value = key(), os.urandom(size)
    cache.client.set(k, value)
    try:
        hasher = xxhash.xxh3_64()
        got = read_bulk(cache.client, k, cluster=cache.is_cluster, hasher=hasher)
        assert got is not None
        assert got.to_pybytes() == value
        assert hasher.hexdigest() == checksum(value), "the payload only, without the trailing CRLF"
    finally:
        cache.client.delete(k)


def test_a_direct_read_that_fails_midway_leaves_nothing_in_the_checksum(
    cache: ShardCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    k, value = key(), os.urandom(300_000)
    cache.client.set(k, value)

    def cut_short(client: object, key: str, *, cluster: bool, hasher: object = None, into: object = ()) -> None:
        if hasher is not None:
            hasher.update(value[:1000])  # type: ignore[attr-defined]
        raise rex.ConnectionError("Connection reset by peer")

    monkeypatch.setattr(store_module, "read_bulk", cut_short)
    try:
        hasher = xxhash.xxh3_64()
        got = cache._get(k, hasher=hasher)  # falls back to redis-py
        assert got is not None
        assert got.to_pybytes() == value
        assert hasher.hexdigest() == checksum(value)
    finally:
        cache.client.delete(k)


def test_ranges_are_received_into_their_destinations(cache: ShardCache) -> None:
    k, value = key(), os.urandom(3 * 1024 * 1024 + 5)
    cache.client.set(k, value)
    # One range inside the first bytes received with the reply line, one across the hash steps, one at the end.
    spans = [(0, 100), (150, 1_000_000), (len(value) - 7, 7)]
    dests = [bytearray(n) for _, n in spans]
    try:
        hasher = xxhash.xxh3_64()
        into = [(offset, memoryview(d)) for (offset, _), d in zip(spans, dests, strict=True)]
        got = read_bulk(cache.client, k, cluster=cache.is_cluster, hasher=hasher, into=into)
        assert got is not None
        assert got.size == len(value)
        for (offset, n), d in zip(spans, dests, strict=True):
            assert bytes(d) == value[offset : offset + n]
        assert got.to_pybytes()[100:150] == value[100:150], "bytes between the ranges land in the buffer"
        assert got.to_pybytes()[1_000_150 : len(value) - 7] == value[1_000_150:-7]
        assert hasher.hexdigest() == checksum(value), "the checksum covers the placed bytes too"
    finally:
        cache.client.delete(k)


def test_values_received_partly_elsewhere_reuse_mappings_nothing_views() -> None:
    regions = _SparseRegions()
    first = regions.buffer(3 * _SparseRegions.STEP + 5, ())
    assert first.size == 3 * _SparseRegions.STEP + 5
    assert first.is_mutable
    view = memoryview(first).cast("B")
    view[-5:] = b"hello"
    assert regions.buffer(3 * _SparseRegions.STEP + 9, ()).address != first.address, "still viewed: a new one"
    kept = first.address
    del first, view
    again = regions.buffer(3 * _SparseRegions.STEP + 9, ())
    assert again.address == kept, "the same size class, viewed by nothing: reused"
    assert regions.buffer(100, ()).address != kept, "another size class"


def test_a_forked_child_maps_its_own_regions() -> None:
    regions = _SparseRegions()
    parent = regions.buffer(1000, ())
    memoryview(parent).cast("B")[:5] = b"first"
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own pool, and the parent's bytes copied on write, never shared
        try:
            child = regions.buffer(1000, ())
            memoryview(parent).cast("B")[:5] = b"child"
            os.write(writer, b"ok" if child.address != parent.address else b"shared")
        finally:
            os._exit(0)
    os.close(writer)
    assert os.read(reader, 16) == b"ok"
    os.waitpid(pid, 0)
    assert parent.to_pybytes()[:5] == b"first", "a private mapping: the child's write stays in the child"


def test_a_value_too_short_for_its_ranges_is_left_to_redis_py(cache: ShardCache) -> None:
    k, value = key(), os.urandom(5000)
    cache.client.set(k, value)
    try:
        with pytest.raises(NotBulk, match="no room"):
            read_bulk(cache.client, k, cluster=cache.is_cluster, into=[(4000, memoryview(bytearray(2000)))])
        got = read_bulk(cache.client, k, cluster=cache.is_cluster)  # the dropped connection is replaced
        assert got is not None
        assert got.to_pybytes() == value
    finally:
        cache.client.delete(k)


def test_the_redis_py_fallback_fills_the_destinations_too(cache: ShardCache, monkeypatch: pytest.MonkeyPatch) -> None:
    k, value = key(), os.urandom(300_000)
    cache.client.set(k, value)

    def refuse(*args: object, **kwargs: object) -> None:
        raise NotBulk("MOVED 1 elsewhere:1")

    monkeypatch.setattr(store_module, "read_bulk", refuse)
    try:
        dest = bytearray(1000)
        hasher = xxhash.xxh3_64()
        got = cache._get(k, hasher=hasher, into=[(5000, memoryview(dest))])
        assert got is not None
        assert got.to_pybytes() == value
        assert bytes(dest) == value[5000:6000]
        assert hasher.hexdigest() == checksum(value)
    finally:
        cache.client.delete(k)


@pytest.mark.parametrize("size", [0, 1, 200, 65_536, 5 * 1024 * 1024 + 3])
def test_write_bulk_stores_the_same_bytes(cache: ShardCache, size: int) -> None:
    k, value = key(), os.urandom(size)
    try:
        write_bulk(cache.client, k, pa.py_buffer(value), cluster=cache.is_cluster, px=None)
        assert cache.client.get(k) == value
        assert cache.client.pttl(k) == -1
        write_bulk(cache.client, k, memoryview(value[::-1]), cluster=cache.is_cluster, px=60_000)
        assert cache.client.get(k) == value[::-1]
        assert 0 < cache.client.pttl(k) <= 60_000
    finally:
        cache.client.delete(k)


def test_error_reply_leaves_the_connection_in_step(cache: ShardCache) -> None:
    k = key()
    cache.client.rpush(k, b"a list, not a string")
    value_key = key()
    cache.client.set(value_key, b"after the error")
    try:
        for _ in range(3):  # the pool hands out the same connection again: it must still be in step
            with pytest.raises(NotBulk, match="WRONGTYPE"):
                read_bulk(cache.client, k, cluster=cache.is_cluster)
            got = read_bulk(cache.client, value_key, cluster=cache.is_cluster)
            assert got is not None
            assert got.to_pybytes() == b"after the error"
    finally:
        cache.client.delete(k, value_key)


@pytest.mark.onlycluster
def test_redirect_is_left_to_redis_py(cache: ShardCache) -> None:
    client = cache.client
    k = key()
    client.set(k, b"v")
    try:
        owner = client.get_node_from_key(k)
        other = next(n for n in client.get_primaries() if n.name != owner.name)
        pool = client.get_redis_connection(other).connection_pool
        conn = pool.get_connection()
        try:
            with pytest.raises(NotBulk, match="MOVED"):
                _exchange(conn, k)
            conn.send_command("PING")
            assert conn.read_response() in (b"PONG", "PONG")
        finally:
            pool.release(conn)
        # Through the store, the redirect is followed.
        assert cache._get(k) == pa.py_buffer(b"v")
        conn = pool.get_connection()
        try:
            with pytest.raises(NotBulk, match="MOVED"):
                _exchange_set(conn, k, memoryview(b"w" * 70_000), None)
            conn.send_command("PING")
            assert conn.read_response() in (b"PONG", "PONG")
        finally:
            pool.release(conn)
        cache._set(k, memoryview(b"w"), px=None)
        assert client.get(k) == b"w"
    finally:
        client.delete(k)


def test_a_stalled_server_times_out_and_drops_the_connection(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    server = cluster_factory(masters=1, replicas=0, cluster=False)
    with connect(server.url, env={}, socket_timeout=0.3, retry=RetryPolicy(deadline=0.5)) as cache:
        cache.client.set("k", b"v" * 1000)
        server.stall_node(server.port)
        try:
            with pytest.raises(rex.TimeoutError):
                read_bulk(cache.client, "k", cluster=False)
        finally:
            server.resume_node(server.port)
        got = read_bulk(cache.client, "k", cluster=False)
        assert got is not None
        assert got.size == 1000
