"""The shard store against real servers: writing, reading, manifests, corruption, removal, capacity."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import signal
import threading

import pyarrow as pa
import pytest

from shardcache.cache import ShardCache, connect, decode_payload, encode_table
from shardcache.cache.manifest import MAX_CHUNKS_PER_SHARD
from shardcache.cache.store.removal import _chunk_counts
from shardcache.errors import (
    ConfigError,
    DatasetInUse,
    DatasetNotFound,
    ManifestCorrupted,
    ShardCorrupted,
    ShardMissing,
)

from .conftest import TEST_RETRY, new_manifest, tables, write_version


def raw(cache: ShardCache):
    """The redis-py client, to look at and tamper with keys behind the store's back."""
    return cache.client


def test_round_trip(cache: ShardCache, name: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="shardcache.cache.store")
    parts = tables(3)
    written = write_version(cache, name, parts)

    m = cache.manifest(name)
    assert m == written
    assert (m.name, m.version, m.state, m.num_shards) == (name, "v1", "complete", 3)
    assert m.num_rows == sum(t.num_rows for t in parts)
    assert m.schema.equals(parts[0].schema)
    assert all(s.cached and s.chunks == 1 for s in m.shards)
    assert m.nbytes == sum(len(encode_table(t)) for t in parts)
    assert m.shards[1].source[0].row_start == parts[0].num_rows

    got = list(cache.get_shards(m, [2, 0, 1, 0]))
    assert [i for i, _ in got] == [2, 0, 1, 0]
    for i, buf in got:
        # The payload is a plain Arrow IPC stream: any Arrow client can read it.
        assert pa.ipc.open_stream(buf).read_all().equals(parts[i])
    assert cache.get_table(m, 1).equals(parts[1])
    assert not [r for r in caplog.records if "fell back" in r.getMessage()]  # the direct GET did it all
    stats = cache.stats.snapshot()
    assert stats["hits"] == 5
    assert stats["bytes_read"] == sum(m.shards[i].nbytes for i in (2, 0, 1, 0, 1))
    assert stats["shards_written"] == 3


def test_loading_version_is_readable_as_it_fills(cache: ShardCache, name: str) -> None:
    parts = tables(3)
    with cache.lock(name):
        m = cache.begin(new_manifest(name, parts))
        cache.put_shard(m, 1, encode_table(parts[1]))

        seen = cache.manifest(name)
        assert seen.state == "loading"
        assert [s.cached for s in seen.shards] == [False, True, False]
        # A reader holding the older manifest object still finds the shard written since.
        assert cache.get_table(m, 1).equals(parts[1])
        results = dict(cache.get_shards(m, range(3), errors="return"))
        assert isinstance(results[0], ShardMissing)
        assert results[0].shard == 0
        assert isinstance(results[1], pa.Buffer)
        with pytest.raises(ShardMissing, match="not cached"):
            cache.get_payload(m, 2)
    assert cache.stats.snapshot()["misses"] == 3  # shards 0 and 2 in get_shards, then 2 again


def test_drop_shard_before_commit_leaves_it_uncached(cache: ShardCache, name: str) -> None:
    """What the prefetcher does to make room for the manifest on a full node (allow_partial)."""
    parts = tables(3)
    m = write_version(cache, name, parts, commit=False)
    with cache.lock(name) as lock:
        m = cache.drop_shard(m, 1)
        assert [s.cached for s in m.shards] == [True, False, True]
        assert not raw(cache).exists(m.shards[1].key)
        final = cache.commit(m.replace(state="complete"), lock=lock)
    stored = cache.manifest(name)
    assert stored == final
    assert [s.cached for s in stored.shards] == [True, False, True]
    with pytest.raises(ShardMissing, match="not cached"):
        cache.get_payload(stored, 1)


def test_put_shard_is_idempotent(cache: ShardCache, name: str) -> None:
    parts = tables(2)
    with cache.lock(name) as lock:
        m = cache.begin(new_manifest(name, parts))
        first = cache.put_shard(m, 0, encode_table(parts[0]))
        again = cache.put_shard(m, 0, encode_table(parts[0]))
        assert first == again
        m = cache.commit(m, lock=lock)
    # One copy: the shard key and no stray chunk keys next to it.
    assert raw(cache).exists(m.shards[0].key, m.shards[0].key + ":1") == 1
    assert cache.manifest(name).shards[0] == first
    assert not cache.manifest(name).shards[1].cached


def test_begin_again_returns_the_stored_version(cache: ShardCache, name: str) -> None:
    parts = tables(2)
    done = write_version(cache, name, parts)
    again = cache.begin(new_manifest(name, tables(5)))
    assert again == done
    assert again.state == "complete"
    assert cache.versions(name) == ["v1"]


def test_commit_counts_shards_the_caller_did_not_track(cache: ShardCache, name: str) -> None:
    parts = tables(3)
    with cache.lock(name) as lock:
        m = cache.begin(new_manifest(name, parts))
        for i, t in enumerate(parts):
            cache.put_shard(m, i, encode_table(t))  # the returned records are dropped on purpose
        final = cache.commit(m, lock=lock)
    assert final.cached_shards == 3
    assert cache.manifest(name) == final


def test_chunked_shards(url: str, name: str) -> None:
    parts = tables(2, rows=400)
    with connect(url, chunk_size=1000, retry=TEST_RETRY, env={}) as small:
        m = write_version(small, name, parts)
        assert all(s.chunks == -(-s.nbytes // 1000) and s.chunks > 2 for s in m.shards)
        keys = [small.keys.chunk(s.key, c) for s in m.shards for c in range(s.chunks)]
        assert raw(small).exists(*keys) == len(keys)
        for i, buf in small.get_shards(m, [0, 1]):
            assert decode_payload(buf, schema=m.schema).equals(parts[i])
        # A reader with another chunk size reads the same shards: the layout is in the manifest.
        with connect(url, retry=TEST_RETRY, env={}) as big:
            assert big.get_table(big.manifest(name), 1).equals(parts[1])
        assert small.delete(name) == ["v1"]
        assert raw(small).exists(*keys) == 0


def test_write_back_keeps_the_committed_layout(url: str, name: str) -> None:
    parts = tables(1, rows=400)
    with connect(url, chunk_size=1000, retry=TEST_RETRY, env={}) as small:
        m = write_version(small, name, parts)
    with connect(url, retry=TEST_RETRY, env={}) as big:
        big.client.delete(*[big.keys.chunk(m.shards[0].key, c) for c in range(m.shards[0].chunks)])
        with pytest.raises(ShardMissing):
            big.get_payload(m, 0)
        # A loader that read the shard through writes it back, with its own (larger) chunk size.
        assert big.put_shard(m, 0, encode_table(parts[0])) == m.shards[0]
        assert big.get_table(m, 0).equals(parts[0])
        with pytest.raises(ConfigError, match="differs from the committed manifest"):
            big.put_shard(m, 0, encode_table(tables(1, rows=400, start=1)[0]))
        # Whatever number of chunks the manifest names, the write-back produces exactly that many.
        odd = m.with_shard(dataclasses.replace(m.shards[0], chunks=m.shards[0].nbytes // 2 + 1))
        big.put_shard(odd, 0, encode_table(parts[0]))
        assert big.get_table(odd, 0).equals(parts[0])
        big.client.delete(*[big.keys.chunk(m.shards[0].key, c) for c in range(odd.shards[0].chunks)])


def test_corrupted_shard_is_detected_and_counted(cache: ShardCache, name: str) -> None:
    m = write_version(cache, name, tables(3))
    key = m.shards[1].key
    payload = bytearray(raw(cache).get(key))
    payload[len(payload) // 2] ^= 0xFF
    raw(cache).set(key, bytes(payload))
    raw(cache).set(m.shards[2].key, bytes(payload[:-8]))  # truncated

    with pytest.raises(ShardCorrupted, match="checksum") as info:
        cache.get_payload(m, 1)
    assert (info.value.dataset, info.value.version, info.value.shard) == (name, "v1", 1)
    results = dict(cache.get_shards(m, range(3), errors="return"))
    assert isinstance(results[0], pa.Buffer)
    assert isinstance(results[1], ShardCorrupted)
    assert isinstance(results[2], ShardCorrupted)
    with pytest.raises(ShardCorrupted):
        list(cache.get_shards(m, range(3), concurrency=1))  # one at a time: shard 2 is never read
    assert cache.stats.snapshot()["corrupted"] == 4


def test_corrupted_chunk_is_detected(url: str, name: str) -> None:
    with connect(url, chunk_size=1000, retry=TEST_RETRY, env={}) as small:
        m = write_version(small, name, tables(1, rows=400))
        shard = m.shards[0]
        small.client.set(small.keys.chunk(shard.key, 1), b"x" * 1000)
        with pytest.raises(ShardCorrupted):
            small.get_payload(m, 0)
        small.client.set(small.keys.chunk(shard.key, 1), b"x" * 10_000_000)  # oversized: reading stops early
        with pytest.raises(ShardCorrupted):
            small.get_payload(m, 0)
        small.client.delete(small.keys.chunk(shard.key, 1))
        with pytest.raises(ShardMissing):
            small.get_payload(m, 0)
        assert small.stats.snapshot()["corrupted"] == 2


def test_planted_values_of_another_type(cache: ShardCache, name: str) -> None:
    m = write_version(cache, name, tables(2))
    raw(cache).delete(m.shards[0].key)
    raw(cache).rpush(m.shards[0].key, b"not a string")
    with pytest.raises(ShardCorrupted):
        cache.get_payload(m, 0)
    manifest_key = cache.keys.manifest(name, "v1")
    raw(cache).delete(manifest_key)
    raw(cache).hset(manifest_key, "a", "b")
    with pytest.raises(ManifestCorrupted):
        cache.manifest(name)
    raw(cache).delete(manifest_key)
    raw(cache).set(manifest_key, b"{not json")
    with pytest.raises(ManifestCorrupted):
        cache.manifest(name)


def test_manifest_pointing_at_foreign_keys_is_refused(cache: ShardCache, name: str) -> None:
    m = write_version(cache, name, tables(2))
    doc = json.loads(m.to_json())
    doc["shards"][0]["key"] = "sc:s:other-dataset:v1:0"
    raw(cache).set(cache.keys.manifest(name, "v1"), json.dumps(doc))
    with pytest.raises(ManifestCorrupted, match="foreign key"):
        cache.manifest(name)


def test_malformed_done_record_is_reported(cache: ShardCache, name: str) -> None:
    parts = tables(2)
    with cache.lock(name):
        m = cache.begin(new_manifest(name, parts))
        raw(cache).hset(cache.keys.done(name, "v1"), "0", b'{"nbytes": 5, "checksum": [1]}')
        raw(cache).hset(cache.keys.done(name, "v1"), "1", b"\xff\xfe")
        raw(cache).hset(cache.keys.done(name, "v1"), "not-a-shard", b"ignored")
        with pytest.raises(ManifestCorrupted):
            cache.manifest(name)
        with pytest.raises(ManifestCorrupted):
            cache.get_payload(m, 1)


def test_missing_shard(cache: ShardCache, name: str) -> None:
    m = write_version(cache, name, tables(3))
    raw(cache).delete(m.shards[2].key)
    assert cache.missing_shards(m) == [2]
    with pytest.raises(ShardMissing, match="gone from Redis") as info:
        cache.get_payload(m, 2)
    assert info.value.shard == 2
    assert cache.stats.snapshot()["misses"] == 1


def test_truncated_shard_is_missing_when_sizes_are_checked(cache: ShardCache, name: str) -> None:
    m = write_version(cache, name, tables(3))
    raw(cache).set(m.shards[0].key, b"short")
    raw(cache).delete(m.shards[2].key)
    assert cache.missing_shards(m, check_sizes=True) == [0, 2]
    assert cache.missing_shards(m) == [2]  # the truncated key exists: only its size tells


def test_datasets_versions_and_manifests(cache: ShardCache, name: str) -> None:
    v1 = write_version(cache, name, tables(2), version="v1")
    v2 = write_version(cache, name, tables(3), version="v2")
    assert name in cache.datasets()
    assert cache.versions(name) == ["v1", "v2"]
    assert cache.latest_version(name) == "v2"
    assert cache.manifest(name) == v2
    assert cache.manifest(name, "v1") == v1
    with pytest.raises(DatasetNotFound, match="prefetch it first") as info:
        cache.manifest(name + "-nope")
    assert info.value.dataset == name + "-nope"
    with pytest.raises(DatasetNotFound) as info:
        cache.manifest(name, "v9")
    assert info.value.version == "v9"
    with pytest.raises(ConfigError):
        cache.manifest(name, "bad version")


def test_delete_versions(cache: ShardCache, name: str) -> None:
    ms = [write_version(cache, name, tables(2), version=v) for v in ("v1", "v2", "v3")]
    assert cache.delete(name, "v2") == ["v2"]
    assert raw(cache).exists(*[s.key for s in ms[1].shards]) == 0
    assert cache.versions(name) == ["v1", "v3"]
    assert cache.delete(name, all_old=True) == ["v1"]
    assert cache.versions(name) == ["v3"]
    assert cache.manifest(name) == ms[2]
    with pytest.raises(DatasetNotFound):
        cache.delete(name, "v1")
    with pytest.raises(ConfigError):
        cache.delete(name, "v3", all_old=True)
    assert cache.delete(name) == ["v3"]
    assert name not in cache.datasets()
    assert raw(cache).exists(*[s.key for m in ms for s in m.shards]) == 0
    with pytest.raises(DatasetNotFound):
        cache.manifest(name)
    with pytest.raises(DatasetNotFound):
        cache.delete(name)


def test_delete_removes_the_chunks_of_an_unfinished_version(url: str, name: str) -> None:
    with connect(url, chunk_size=1000, retry=TEST_RETRY, env={}) as small:
        parts = tables(3, rows=400)
        m = small.begin(new_manifest(name, parts))
        small.put_shard(m, 0, encode_table(parts[0]))
        # A writer that died midway through shard 1: its intent record and two chunks made it.
        small.client.hset(small.keys.done(name, "v1"), "1", json.dumps({"pending": 5}))
        small.client.set(small.keys.chunk(m.shards[1].key, 0), b"a")
        small.client.set(small.keys.chunk(m.shards[1].key, 3), b"b")
        written = [small.keys.chunk(m.shards[0].key, c) for c in range(-(-len(encode_table(parts[0])) // 1000))]
        assert small.delete(name) == ["v1"]
        leftovers = [*written, small.keys.chunk(m.shards[1].key, 0), small.keys.chunk(m.shards[1].key, 3)]
        assert small.client.exists(*leftovers) == 0
        assert small.client.exists(small.keys.done(name, "v1"), small.keys.manifest(name, "v1")) == 0


def test_delete_respects_leases(cache: ShardCache, name: str) -> None:
    write_version(cache, name, tables(1), version="v1")
    write_version(cache, name, tables(1), version="v2")
    with cache.lease(name, "v1") as lease:
        assert cache.leases(name) == [lease.member]
        with pytest.raises(DatasetInUse, match="in use by 1 reader") as info:
            cache.delete(name, "v1")
        assert info.value.leases == [lease.member]
        assert cache.delete(name, all_old=False, version="v2") == ["v2"]  # another version is free
        assert cache.versions(name) == ["v1"]
    assert cache.leases(name) == []
    with cache.lease(name):  # "*": every version
        with pytest.raises(DatasetInUse):
            cache.delete(name)
        assert cache.delete(name, force=True) == ["v1"]


def test_expired_lease_does_not_block(cache: ShardCache, name: str) -> None:
    write_version(cache, name, tables(1))
    raw(cache).zadd(cache.keys.leases(name), {"v1|dead-host:1:abc": 1})  # expired in 1970
    assert cache.leases(name) == []
    assert cache.delete(name) == ["v1"]


def test_capacity(cache: ShardCache) -> None:
    cap = cache.capacity()
    assert len(cap.nodes) >= 3 if cache.is_cluster else len(cap.nodes) == 1  # one entry per primary
    assert all(n.used > 0 and n.policy for n in cap.nodes)
    assert cap.used == sum(n.used for n in cap.nodes)
    assert cap.free >= 0
    assert cap.policies


def test_shard_cache_pickles_by_reconnecting(cache: ShardCache, name: str) -> None:
    m = write_version(cache, name, tables(2))
    clone = pickle.loads(pickle.dumps(cache))
    try:
        assert clone is not cache
        assert clone.client is not cache.client
        assert clone.get_table(m, 1).equals(cache.get_table(m, 1))
        assert (clone.chunk_size, clone.keys.prefix) == (cache.chunk_size, cache.keys.prefix)
    finally:
        clone.close()


def test_fork_while_a_thread_holds_the_locks(cache: ShardCache, name: str) -> None:
    parts = tables(1)
    m = write_version(cache, name, parts)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with cache._lock, cache.stats._lock:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold, name="lock-holder")
    holder.start()
    held.wait()
    pid = os.fork()
    if pid == 0:  # the child: a DataLoader worker forked at the worst moment
        signal.alarm(20)  # a deadlock ends the child instead of hanging the suite
        try:
            ok = cache.get_table(m, 0).equals(parts[0]) and cache.stats.snapshot()["hits"] >= 1
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    release.set()
    holder.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_prefix_keeps_caches_apart(url: str, name: str) -> None:
    with connect(url, prefix="sc-other:", retry=TEST_RETRY, env={}) as other, \
            connect(url, retry=TEST_RETRY, env={}) as default:
        m = write_version(other, name, tables(1))
        assert m.shards[0].key.startswith("sc-other:")
        assert name in other.datasets()
        assert name not in default.datasets()
        other.delete(name)


def test_a_shard_needing_too_many_chunks_is_refused(url: str, name: str) -> None:
    parts = tables(1, rows=400)
    with connect(url, chunk_size=1, retry=TEST_RETRY, env={}) as tiny:
        m = tiny.begin(new_manifest(name, parts))
        with pytest.raises(ConfigError, match="raise chunk_size"):
            tiny.put_shard(m, 0, encode_table(parts[0]))


def test_rm_finds_chunks_in_any_record_it_read() -> None:
    # delete() reads the manifest and the records before its script removes them, and merges
    # that with what the script returns: a retried script (its first reply lost) returns nothing.
    manifest = json.dumps({"shards": [{"chunks": 3}, {"chunks": 1}, "junk", {"chunks": 10**9}]})
    counts = _chunk_counts("ds", "v1", [manifest, ""], [{b"1": b'{"pending": 4}'}, {"5": "not json"}])
    assert counts == {0: 3, 1: 4, 2: 1, 3: MAX_CHUNKS_PER_SHARD, 5: 1}
    assert _chunk_counts("ds", "v1", ["", b"[" * 100_000], [{}]) == {}


def test_bad_arguments(cache: ShardCache, name: str) -> None:
    m = write_version(cache, name, tables(2))
    with pytest.raises(ConfigError, match="concurrency"):
        list(cache.get_shards(m, [0], concurrency=0))
    with pytest.raises(ConfigError, match="errors"):
        list(cache.get_shards(m, [0], errors="ignore"))  # type: ignore[call-overload]
    with pytest.raises(ConfigError, match="index"):
        cache.put_shard(m, 5, b"")
    with pytest.raises(ConfigError):
        cache.manifest("")
    with pytest.raises(ConfigError, match="read_concurrency"):
        connect(cache.url.redacted(), read_concurrency=0, env={})
