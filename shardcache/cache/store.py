"""ShardCache: the shard store on Redis Cluster (or one standalone Redis).

>>> cache = connect("redis://127.0.0.1:7000")            # doctest: +SKIP
>>> m = cache.manifest("imagenet-train")                  # doctest: +SKIP
>>> for index, buf in cache.get_shards(m, range(m.num_shards)):   # doctest: +SKIP
...     table = decode_payload(buf, schema=m.schema)

Reads are one GET per key from a bounded thread pool: for MiB-sized values MGET
and pipelines halve throughput on this kind of machine (shared/BASELINES.md).
Every call rides through failover with :class:`RetryPolicy`.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, overload

import pyarrow as pa
import redis.exceptions as rex
import xxhash

from ..errors import (
    AccessDenied,
    CacheUnavailable,
    CapacityExceeded,
    ConfigError,
    DatasetInUse,
    DatasetLocked,
    DatasetNotFound,
    ManifestCorrupted,
    ShardCacheError,
    ShardCorrupted,
    ShardMissing,
)
from ..units import format_bytes, parse_duration, parse_size
from .breaker import NodeBreaker
from .bulk import Into, NotBulk, read_bulk, write_bulk
from .codec import checksum, decode_payload, split_chunks
from .connection import Client, ConnectOptions, open_client
from .keys import KeySpace, validate_dataset_name, validate_version
from .locks import DatasetLock, Lease, live_leases
from .manifest import MAX_CHUNKS_PER_SHARD, Manifest, ShardInfo, apply_shard_record, record_chunks, shard_record
from .retry import RetryPolicy
from .stats import CacheStats
from .urls import CacheURL, resolve_url

__all__ = ["Capacity", "NodeMemory", "ShardCache", "connect"]

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
# Shards carry a TTL by default so that under volatile-lru (`shardcache up`'s default) Redis evicts
# only shards, never metadata (which has none). It is long: its point is to make shards evictable;
# a shard that expires is read through and written back like an evicted one.
DEFAULT_SHARD_TTL = 30 * 86400.0
MIN_BREAKER_COOLDOWN = 5.0
# Error replies that shardcache's scripts send on purpose (SHARDCACHE_LOCK_LOST...).
_SCRIPT_SIGNAL = "SHARDCACHE_"

_BEGIN = """
local cur = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[3], ARGV[2])
if cur then return cur end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return false
"""
_COMMIT = """
if ARGV[2] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return redis.error_reply('SHARDCACHE_LOCK_LOST')
end
if not redis.call('GET', KEYS[1]) then
  return redis.error_reply('SHARDCACHE_NO_MANIFEST')
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""
# KEYS: leases, versions, latest, then (manifest, done) per version in ARGV[2..]. A key of the wrong
# type (planted by something else) is deleted rather than left to make every `rm` fail: a lease set
# that is not a sorted set protects nothing, and every other key here is removed or rewritten anyway.
_DELETE = """
local function failed(reply) return type(reply) == 'table' and reply['err'] ~= nil end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if failed(redis.pcall('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)) then redis.call('DEL', KEYS[1]) end
if ARGV[1] ~= '1' then
  local blocked = {}
  for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local v = string.match(member, '^([^|]*)|')
    for i = 2, #ARGV do
      if v == ARGV[i] or v == '*' then
        table.insert(blocked, member)
        break
      end
    end
  end
  if #blocked > 0 then return {0, blocked} end
end
local out = {}
for i = 2, #ARGV do
  local mkey = KEYS[4 + 2 * (i - 2)]
  local dkey = KEYS[5 + 2 * (i - 2)]
  local m = redis.pcall('GET', mkey)
  if failed(m) then m = false end
  table.insert(out, m or '')
  local pending = redis.pcall('HGETALL', dkey)
  if failed(pending) then pending = {} end
  table.insert(out, cjson.encode(pending))
  redis.call('DEL', mkey, dkey)
  if failed(redis.pcall('ZREM', KEYS[2], ARGV[i])) then redis.call('DEL', KEYS[2]) end
end
local newest = redis.pcall('ZREVRANGE', KEYS[2], 0, 0)
if failed(newest) then
  redis.call('DEL', KEYS[2])
  newest = {}
end
if newest[1] then redis.call('SET', KEYS[3], newest[1]) else redis.call('DEL', KEYS[3]) end
return {1, out, redis.call('ZCARD', KEYS[2])}
"""


@dataclass(frozen=True)
class NodeMemory:
    """Memory of one primary. ``maxmemory`` 0 means no limit was set."""

    node: str
    used: int
    maxmemory: int
    policy: str
    system: int

    @property
    def free(self) -> int:
        limit = self.maxmemory or self.system
        return max(limit - self.used, 0)


@dataclass(frozen=True)
class Capacity:
    nodes: tuple[NodeMemory, ...]

    @property
    def used(self) -> int:
        return sum(n.used for n in self.nodes)

    @property
    def maxmemory(self) -> int:
        return sum(n.maxmemory for n in self.nodes)

    @property
    def free(self) -> int:
        return sum(n.free for n in self.nodes)

    @property
    def policies(self) -> set[str]:
        return {n.policy for n in self.nodes}


def connect(
    url: str | None = None,
    *,
    password: str | None = None,
    prefix: str = "sc:",
    retry: RetryPolicy | None = None,
    chunk_size: int | str = DEFAULT_CHUNK_SIZE,
    read_concurrency: int = 4,
    shard_ttl: float | str | None = DEFAULT_SHARD_TTL,
    env: Mapping[str, str] | None = None,
    **options: Any,
) -> ShardCache:
    """Connect to the cache at ``url`` (else ``SHARDCACHE_REDIS_URL``).

    Cluster or standalone is detected. ``options`` are :class:`ConnectOptions`
    (timeouts, ``max_connections``, ``ssl_ca_certs``...). ``SHARDCACHE_TLS_CA`` names
    a CA file when ``ssl_ca_certs`` is not given. ``shard_ttl`` (seconds or e.g. ``"7d"``;
    None: no TTL) is the TTL of the shards of the versions this cache begins; it is recorded in
    their manifests, and shards written back later (read-through) follow the manifest.
    """
    env = os.environ if env is None else env
    parsed = resolve_url(url, env=env, password=password)
    if parsed.tls and "ssl_ca_certs" not in options and env.get("SHARDCACHE_TLS_CA"):
        options["ssl_ca_certs"] = env["SHARDCACHE_TLS_CA"]
    try:
        connect_options = ConnectOptions(**options)
    except TypeError as exc:
        raise ConfigError(f"unknown connection option: {exc}") from None
    return ShardCache(
        parsed,
        options=connect_options,
        prefix=prefix,
        retry=retry or RetryPolicy(),
        chunk_size=chunk_size,
        read_concurrency=read_concurrency,
        shard_ttl=shard_ttl,
    )


class ShardCache:
    """Shards, manifests, locks and leases of datasets in one Redis (Cluster).

    Build it with :func:`connect`. It is thread-safe, survives ``fork`` and pickles
    (to DataLoader workers) by reconnecting on the other side.
    """

    def __init__(
        self,
        url: CacheURL,
        *,
        options: ConnectOptions | None = None,
        prefix: str = "sc:",
        retry: RetryPolicy | None = None,
        chunk_size: int | str = DEFAULT_CHUNK_SIZE,
        read_concurrency: int = 4,
        shard_ttl: float | str | None = DEFAULT_SHARD_TTL,
    ) -> None:
        self.url = url
        self.options = options or ConnectOptions()
        self.keys = KeySpace(prefix)
        self.retry = retry or RetryPolicy()
        self.chunk_size = parse_size(chunk_size, name="chunk_size")
        if isinstance(read_concurrency, bool) or not isinstance(read_concurrency, int) or read_concurrency < 1:
            raise ConfigError(f"read_concurrency={read_concurrency!r} must be an integer >= 1")
        self.read_concurrency = read_concurrency
        if shard_ttl is not None and (isinstance(shard_ttl, bool) or parse_duration(shard_ttl, name="shard_ttl") <= 0):
            raise ConfigError(f"shard_ttl={shard_ttl!r} must be a positive duration (seconds, or e.g. '7d') or None")
        self.shard_ttl = None if shard_ttl is None else parse_duration(shard_ttl, name="shard_ttl")
        self.stats = CacheStats()
        self._lock = threading.Lock()
        _INSTANCES.add(self)
        self._pid = -1
        self._client: Client | None = None
        self._is_cluster = False
        self._pool: ThreadPoolExecutor | None = None
        # A node that used up a whole deadline is not waited for again at once (see breaker.py).
        self._breaker = NodeBreaker(cooldown=max(2 * self.retry.deadline, MIN_BREAKER_COOLDOWN))
        self._ensure()

    # -- plumbing --------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"ShardCache({self.url.redacted()!r}, prefix={self.keys.prefix!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Sockets do not cross processes: rebuild from the same settings on the other side.
        return (
            _rebuild,
            (self.url, self.options, self.keys.prefix, self.retry, self.chunk_size,
             self.read_concurrency, self.shard_ttl),
        )

    def _ensure(self) -> Client:
        pid = os.getpid()
        if self._pid != pid or self._client is None:
            with self._lock:
                if self._pid != pid or self._client is None:
                    # After fork the parent's sockets and threads are not ours: start afresh, knowing
                    # from the parent whether this is a cluster.
                    known = self._is_cluster if self._client is not None else None
                    self._client, self._is_cluster = open_client(self.url, self.options, self.retry, cluster=known)
                    self._pool = None
                    self._pid = pid
        assert self._client is not None
        return self._client

    def _after_fork(self) -> None:
        """In a forked child: locks that a parent's thread held at the fork would never be
        released here, so every lock is replaced; the client is rebuilt on first use."""
        self._lock = threading.Lock()
        self.stats.after_fork()
        self._breaker.after_fork()

    @property
    def client(self) -> Client:
        """The underlying redis-py client (``RedisCluster`` or ``Redis``)."""
        return self._ensure()

    @property
    def is_cluster(self) -> bool:
        self._ensure()
        return self._is_cluster

    def _refresh(self, _exc: BaseException) -> None:
        client = self._ensure()
        if self._is_cluster:
            client.nodes_manager.initialize()  # type: ignore[union-attr]

    def node_of(self, key: str | None) -> str | None:
        """The primary that serves ``key`` (``host:port``, as in :meth:`capacity`); None if unknown."""
        self._ensure()
        if key is None or not self._is_cluster:
            return self.url.redacted()
        try:
            node = self._client.get_node_from_key(key)  # type: ignore[union-attr]
            return f"{node.host}:{node.port}"
        except Exception:  # the topology may be in flux; the message still helps without it
            return None

    def _on_wait(self, seconds: float) -> None:
        self.stats.add(retries=1, wait_seconds=seconds)

    def call(self, method: str, *args: Any, key: str | None = None, **kwargs: Any) -> Any:
        """Run one redis-py client method with retry-until-deadline."""
        client = self._ensure()
        fn = getattr(client, method.lower())
        first_key = key if key is not None else (args[0] if args and isinstance(args[0], str) else None)
        if method.upper() == "EVAL" and len(args) > 2:
            first_key = args[2]
        what = f"{method.upper()} {first_key or ''}".strip()
        node = self.node_of(first_key)
        self._breaker.check(node, what=what)
        try:
            result = self.retry.call(
                lambda: fn(*args, **kwargs),
                what=what,
                node=lambda: self.node_of(first_key),
                on_retry=self._refresh,
                on_wait=self._on_wait,
            )
        except rex.OutOfMemoryError:
            raise self._capacity_error(None, node=node) from None
        except AccessDenied:
            raise
        except CacheUnavailable as exc:
            self._breaker.trip(exc.node or node)  # the next calls to that node fail fast
            raise
        except rex.ResponseError as exc:
            if _SCRIPT_SIGNAL in str(exc):  # our own scripts' answers: their callers handle them
                raise
            keys = [str(k) for k in args[2 : 2 + int(args[1])]] if method.upper() == "EVAL" else [first_key or ""]
            raise self._reply_error(exc, what=what, keys=[k for k in keys if k]) from None
        self._breaker.reset(node)
        return result

    def _reply_error(self, exc: rex.ResponseError, *, what: str, keys: Sequence[str]) -> ShardCacheError:
        """A Redis error reply as one of ours: WRONGTYPE (something else wrote the key) is
        ManifestCorrupted naming the key and the fix; any other reply a ShardCacheError."""
        text = " ".join(str(exc).split())[:200]
        if "WRONGTYPE" not in text:
            return ShardCacheError(f"{what}: Redis answered an error ({text}); check it with `shardcache status`")
        names = sorted({n for n in map(self.keys.dataset_of, keys) if n is not None})
        where = keys[0] if len(keys) == 1 else f"one of the keys {', '.join(keys)}"
        if names:
            fix = f"remove the dataset with `shardcache rm {names[0]}` (it deletes the key too), then prefetch it again"
            if keys == [self.keys.leases(names[0])]:  # it only holds readers' leases: the dataset can stay
                fix = f"delete the key with `DEL {keys[0]}`, or {fix}"
        else:
            fix = (f"delete the key with `DEL {where}`: the datasets themselves stay cached, and a prefetch of "
                   "each (nothing is reloaded) lists it again")
        return ManifestCorrupted(
            f"the Redis key {where}{f' of dataset {names[0]!r}' if names else ''} holds a value of the wrong type "
            f"({what}: {text}); something other than shardcache wrote it: {fix}",
            dataset=names[0] if names else None, key=keys[0] if len(keys) == 1 else None,
        )

    def close(self) -> None:
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            if self._client is not None and self._pid == os.getpid():
                try:
                    self._client.close()
                except Exception:
                    pass
            self._client = None

    def __enter__(self) -> ShardCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping(self) -> bool:
        return bool(self.call("PING"))

    # -- datasets and manifests --------------------------------------------------------

    def datasets(self) -> list[str]:
        """Names of every dataset with at least one version."""
        members = self.call("SMEMBERS", self.keys.datasets())
        return sorted(m.decode(errors="replace") if isinstance(m, bytes) else str(m) for m in members)

    def versions(self, name: str) -> list[str]:
        """Version ids of ``name``, oldest first."""
        raw = self.call("ZRANGE", self.keys.versions(name), 0, -1)
        return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in raw]

    def latest_version(self, name: str) -> str | None:
        raw = self.call("GET", self.keys.latest(name))
        return raw.decode(errors="replace") if isinstance(raw, bytes) else raw

    def manifest(self, name: str, version: str | None = None) -> Manifest:
        """The manifest of ``version`` (default: the newest, loading or complete).

        A loading manifest comes with the shards written so far marked cached.
        """
        validate_dataset_name(name)
        if version is None:
            version = self.latest_version(name)
            if version is None:
                raise DatasetNotFound(
                    f"dataset {name!r} is not in the cache {self.url.redacted()}; prefetch it first "
                    "(`shardcache prefetch SOURCE --dataset NAME`) or check `shardcache ls`",
                    dataset=name,
                )
            try:
                validate_version(version)
            except ConfigError:  # the caller passed no version: blame the key, not an argument
                key = self.keys.latest(name)
                raise ManifestCorrupted(
                    f"the Redis key {key} of dataset {name!r}, which names its newest version, holds "
                    f"{version[:80]!r}, not a version id; remove the dataset with `shardcache rm {name}`, then "
                    "prefetch it again",
                    dataset=name, key=key,
                ) from None
        validate_version(version)
        raw = self.call("GET", self.keys.manifest(name, version))  # WRONGTYPE: ManifestCorrupted
        if raw is None:
            raise DatasetNotFound(
                f"version {version!r} of dataset {name!r} is not in the cache (removed, or its manifest was "
                "evicted); see `shardcache info` for versions, or prefetch it again",
                dataset=name,
                version=version,
            )
        manifest = Manifest.from_json(raw, expected_name=name, expected_version=version)
        for shard in manifest.shards:
            if shard.key != self.keys.shard(name, version, shard.index):
                raise ManifestCorrupted(
                    f"the manifest of {name!r} points shard {shard.index} at a foreign key; remove it with "
                    f"`shardcache rm {name} --version {version}` and prefetch again",
                    dataset=name,
                    version=version,
                    shard=shard.index,
                )
        if manifest.state == "loading":
            manifest = self._merge_done(manifest)
        return manifest

    def _merge_done(self, manifest: Manifest) -> Manifest:
        """``manifest`` with the shards recorded in ``done:V`` (written since ``begin``) marked cached."""
        records = self.call("HGETALL", self.keys.done(manifest.name, manifest.version))
        shards = list(manifest.shards)
        for field, raw in records.items():
            text = field.decode(errors="replace") if isinstance(field, bytes) else str(field)
            if not (text.isascii() and text.isdigit()) or int(text) >= len(shards):
                continue  # not a shard of this manifest: ignore rather than trust it
            index = int(text)
            if not shards[index].cached:
                shards[index] = self._recorded(manifest, shards[index], raw)
        return manifest.replace(shards=tuple(shards))

    def _recorded(self, manifest: Manifest, shard: ShardInfo, raw: bytes | str) -> ShardInfo:
        try:
            return apply_shard_record(shard, raw)
        except ManifestCorrupted as exc:
            raise ManifestCorrupted(
                f"{exc} (dataset {manifest.name!r} version {manifest.version}); remove the version with "
                f"`shardcache rm {manifest.name} --version {manifest.version}` and prefetch again",
                dataset=manifest.name, version=manifest.version, shard=shard.index,
            ) from None

    def shard_info(self, manifest: Manifest, index: int) -> ShardInfo:
        """The current record of one shard (a loading version may have written it since)."""
        shard = manifest.shards[index]
        if shard.cached or manifest.state == "complete":
            return shard
        raw = self.call("HGET", self.keys.done(manifest.name, manifest.version), str(index))
        return shard if raw is None else self._recorded(manifest, shard, raw)

    # -- writing -------------------------------------------------------------------

    def lock(self, name: str, *, wait: float = 0.0, ttl: float = 30.0) -> DatasetLock:
        """Take the writer lock of ``name`` (raises DatasetLocked after ``wait`` s)."""
        lock = DatasetLock(call=self.call, key=self.keys.lock(name), dataset=name, ttl=ttl)
        lock.acquire(wait=wait)
        return lock

    def begin(self, manifest: Manifest) -> Manifest:
        """Write ``manifest`` as ``loading`` unless that version exists; return the stored one.

        Registers the version and points ``latest`` at it, so loaders started now
        find it and read through what is not cached yet.
        """
        name, version = manifest.name, manifest.version
        keys = self.keys
        manifest = self._with_ttl_policy(manifest)
        # Listed first, so that a writer dying between the two calls leaves nothing `ls` cannot see.
        self.call("SADD", keys.datasets(), name)
        existing = self.call(
            "EVAL", _BEGIN, 3, keys.manifest(name, version), keys.versions(name), keys.latest(name),
            manifest.replace(state="loading").to_json(), version, repr(manifest.created_at),
        )
        if existing is None:
            return manifest.replace(state="loading")
        return self.manifest(name, version)

    def _with_ttl_policy(self, manifest: Manifest) -> Manifest:
        """``manifest`` recording this cache's shard TTL (0: none), unless it records one already."""
        if manifest.shard_ttl is not None:
            return manifest
        return manifest.replace(shard_ttl=self.shard_ttl or 0.0)

    def put_shard(self, manifest: Manifest, index: int, payload: pa.Buffer | bytes) -> ShardInfo:
        """Write shard ``index`` and record it; writing the same shard twice is harmless.

        For a ``complete`` manifest (a loader writing back a shard it read through), the
        payload must match the checksum the manifest holds, and is laid out in the
        manifest's number of chunks, so that readers of that manifest can read it.
        """
        if not 0 <= index < manifest.num_shards:
            raise ConfigError(f"index={index!r} is not a shard of {manifest.name!r} (0..{manifest.num_shards - 1})")
        shard = manifest.shards[index]
        view = memoryview(payload)
        nbytes = view.nbytes
        digest = checksum(view)
        if manifest.state == "complete" and shard.cached:
            if (nbytes, digest) != (shard.nbytes, shard.checksum):
                raise ConfigError(
                    f"the payload of shard {index} of {manifest.name!r} version {manifest.version} "
                    f"({nbytes} bytes, xxh3 {digest}) differs from the committed manifest's "
                    f"({shard.nbytes} bytes, xxh3 {shard.checksum}); the version is complete, so write a new version"
                )
            count = shard.chunks  # exactly as many as the manifest names (readers concatenate them)
            chunks = [view[nbytes * c // count : nbytes * (c + 1) // count] for c in range(count)]
        else:
            chunks = list(split_chunks(view, chunk_size=self.chunk_size))
        if len(chunks) > MAX_CHUNKS_PER_SHARD:
            raise ConfigError(
                f"shard {index} of {manifest.name!r} is {format_bytes(nbytes)}, which needs {len(chunks)} chunks of "
                f"chunk_size={self.chunk_size}, over {MAX_CHUNKS_PER_SHARD}; raise chunk_size or make smaller shards"
            )
        done_key = self.keys.done(manifest.name, manifest.version)
        loading = manifest.state == "loading"
        # An intent record first, so that `rm` finds every chunk even if we die midway (a
        # committed manifest already names the chunks of its cached shards).
        if len(chunks) > 1 and not (manifest.state == "complete" and shard.cached):
            self.call("HSET", done_key, str(index), json.dumps({"pending": len(chunks)}))
        # The dataset's policy, as its manifest records it: a loader writing a shard back follows it.
        ttl = manifest.shard_ttl if manifest.shard_ttl is not None else self.shard_ttl
        px = int(ttl * 1000) if ttl else None
        try:
            for c, chunk in enumerate(chunks):
                self._set(self.keys.chunk(shard.key, c), chunk, px=px)
        except CapacityExceeded as exc:
            raise self._capacity_error(nbytes, dataset=manifest.name, node=exc.node) from exc
        written = shard.written(nbytes=nbytes, checksum=digest, chunks=len(chunks))
        if loading:
            self.call("HSET", done_key, str(index), shard_record(written))
        self.stats.add(bytes_written=nbytes, shards_written=1)
        return written

    def drop_shard(self, manifest: Manifest, index: int) -> Manifest:
        """Remove written shard ``index`` of a version not yet committed; return it marked uncached.

        The prefetcher uses this to make room on a full node under ``allow_partial``
        (UNLINK is allowed while Redis is out of memory). The shard's done record stays
        until commit deletes it; a resumed run checks the keys and reloads the shard.
        """
        shard = manifest.shards[index]
        for c in range(max(shard.chunks, 1)):
            self.call("UNLINK", self.keys.chunk(shard.key, c))
        return manifest.with_shard(ShardInfo(index=shard.index, key=shard.key, rows=shard.rows, source=shard.source))

    def commit(self, manifest: Manifest, *, lock: DatasetLock | None = None) -> Manifest:
        """Store ``manifest`` as ``complete``: readers see it only after every shard is written."""
        if lock is not None:
            lock.check()
        if manifest.state == "loading":
            # Shards another process (or an earlier run) wrote count too, not only those the caller tracked.
            manifest = self._merge_done(manifest)
        final = self._with_ttl_policy(manifest).replace(state="complete")
        keys = self.keys
        try:
            self.call(
                "EVAL", _COMMIT, 3, keys.manifest(final.name, final.version), keys.done(final.name, final.version),
                keys.lock(final.name), final.to_json(), lock.token if lock else "",
            )
        except rex.ResponseError as exc:
            if "SHARDCACHE_LOCK_LOST" in str(exc):
                raise DatasetLocked(
                    f"the writer lock of {final.name!r} was taken by another writer before commit; run again",
                    dataset=final.name,
                ) from None
            if "SHARDCACHE_NO_MANIFEST" in str(exc):
                raise DatasetNotFound(
                    f"version {final.version} of {final.name!r} was removed while being written; run again",
                    dataset=final.name,
                    version=final.version,
                ) from None
            raise
        return final

    def missing_shards(self, manifest: Manifest, *, check_sizes: bool = False) -> list[int]:
        """Indices of shards marked cached whose keys are gone (evicted or lost).

        With ``check_sizes``, also those whose chunks no longer add up to the recorded size
        (truncated or overwritten): the prefetcher's resume check. Either way it is one
        pipelined ``EXISTS`` (or ``STRLEN``) per chunk key; nothing is read.
        """
        client = self._ensure()
        cached = [s for s in manifest.shards if s.cached]
        if not cached:
            return []

        def run() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for s in cached:
                for c in range(s.chunks):
                    key = self.keys.chunk(s.key, c)
                    if check_sizes:
                        pipe.strlen(key)
                    else:
                        pipe.exists(key)
            replies = pipe.execute(raise_on_error=False)
            for r in replies:  # a busy or failing-over node: raised, so the policy retries it
                if isinstance(r, Exception) and "WRONGTYPE" not in str(r):
                    raise r
            # A chunk key of the wrong type (STRLEN answers WRONGTYPE) counts as missing: it is rewritten.
            return [0 if isinstance(r, Exception) else r for r in replies]

        what = "STRLEN shards" if check_sizes else "EXISTS shards"
        replies = iter(self.retry.call(run, what=what, on_retry=self._refresh, on_wait=self._on_wait))
        missing = []
        for s in cached:
            got = [int(next(replies)) for _ in range(s.chunks)]  # consume every reply of this shard
            if (sum(got) != s.nbytes) if check_sizes else not all(got):
                missing.append(s.index)
        return missing

    # -- reading -------------------------------------------------------------------

    def get_payload(self, manifest: Manifest, index: int, *, into: Into = ()) -> pa.Buffer:
        """The verified payload of one shard; raises ShardMissing or ShardCorrupted.

        ``into`` lists ``(offset, destination)``: the payload's bytes from ``offset`` land in
        ``destination`` (a writable byte memoryview) instead of the returned buffer, where they
        are left undefined, and are received there straight from the socket when they can be (a
        loader builds batches in place this way). The checksum covers them all the same.
        """
        shard = self.shard_info(manifest, index)
        if not shard.cached:
            self.stats.add(misses=1)
            raise ShardMissing(
                f"shard {index} of {manifest.name!r} version {manifest.version} was not cached "
                "(partial or unfinished prefetch); it is read through from the source",
                dataset=manifest.name, version=manifest.version, shard=index,
            )
        payload: pa.Buffer | rex.ResponseError | None
        digest = None
        try:
            read = self._read_chunks(shard, into)
            payload, digest = (None, None) if read is None else read
        except (rex.ResponseError, ManifestCorrupted) as exc:  # WRONGTYPE: something else was planted there
            payload = exc
        if payload is None:
            self.stats.add(misses=1)
            raise ShardMissing(
                f"shard {index} of {manifest.name!r} version {manifest.version} is gone from Redis (evicted or "
                "lost with a node); it is read through from the source, or re-run the prefetch",
                dataset=manifest.name, version=manifest.version, shard=index,
            )
        if isinstance(payload, Exception) or payload.size != shard.nbytes or digest != shard.checksum:
            self.stats.add(corrupted=1)
            got = type(payload).__name__ if isinstance(payload, Exception) else f"{payload.size} bytes"
            raise ShardCorrupted(
                f"shard {index} of {manifest.name!r} version {manifest.version} failed its xxh3-64 checksum "
                f"({got}, expected {shard.nbytes} bytes); it is read through from the source",
                dataset=manifest.name, version=manifest.version, shard=index,
            )
        self.stats.add(hits=1, bytes_read=shard.nbytes)
        return payload

    def _read_chunks(self, shard: ShardInfo, into: Into = ()) -> tuple[pa.Buffer, str] | None:
        """The concatenated chunks of ``shard`` and their checksum; None if one is gone. Reading
        stops as soon as the bytes exceed the recorded size, so a planted record cannot make us
        read without end. ``into``: see :meth:`get_payload`."""
        if shard.chunks == 1:
            hasher = xxhash.xxh3_64()  # fed while the bytes arrive (bulk.py)
            payload = self._get(shard.key, hasher=hasher, into=into)
            return None if payload is None else (payload, hasher.hexdigest())
        parts: list[pa.Buffer] = []
        size = 0
        for c in range(shard.chunks):
            part = self._get(self.keys.chunk(shard.key, c))
            if part is None:
                return None
            parts.append(part)
            size += part.size
            if size > shard.nbytes:
                break  # corrupt: the checksum check rejects it
        joined = pa.py_buffer(b"".join(parts))
        _copy_into(joined, into)
        return joined, checksum(joined)

    def _get(self, key: str, *, hasher: Any = None, into: Into = ()) -> pa.Buffer | None:
        """GET of one shard or chunk, with the retry policy; ``hasher`` (an xxhash object in its
        initial state) is fed the value; ``into``: see :meth:`get_payload`.

        While no node's breaker is open, the first try reads the value straight into an
        Arrow buffer (bulk.py): this is the hot path. Any failure or unusual reply repeats
        the GET through redis-py and :meth:`call`, which handle redirects, errors and retries.
        """
        if not self._breaker.tripped:
            try:
                return read_bulk(self._ensure(), key, cluster=self._is_cluster, hasher=hasher, into=into)
            except (NotBulk, rex.RedisError, rex.RedisClusterException, OSError) as exc:
                log.debug("direct GET of %s fell back to redis-py: %s", key, type(exc).__name__)
                if hasher is not None:
                    hasher.reset()  # it may hold part of the value
        value = self.call("GET", key)
        if value is None:
            return None
        if hasher is not None:
            hasher.update(value)
        buffer = pa.py_buffer(value)
        _copy_into(buffer, into)
        return buffer

    def _set(self, key: str, value: memoryview, *, px: int | None) -> None:
        """SET of one chunk, with the retry policy; the write-side twin of :meth:`_get`.

        The first try sends the value from its own memory (bulk.py); any failure or other reply
        than ``+OK`` repeats the SET through redis-py and :meth:`call` (OOM becomes CapacityExceeded).
        """
        if not self._breaker.tripped:
            try:
                write_bulk(self._ensure(), key, value, cluster=self._is_cluster, px=px)
                return
            except (NotBulk, rex.RedisError, rex.RedisClusterException, OSError) as exc:
                log.debug("direct SET of %s fell back to redis-py: %s", key, type(exc).__name__)
        self.call("SET", key, value, px=px)

    def get_table(self, manifest: Manifest, index: int) -> pa.Table:
        """One shard decoded to an Arrow table, validated against the manifest."""
        buf = self.get_payload(manifest, index)
        try:
            return decode_payload(
                buf, schema=manifest.schema, dataset=manifest.name, version=manifest.version,
                shard=index, max_rows=manifest.shards[index].rows,
            )
        except ShardCorrupted:
            self.stats.add(corrupted=1)
            raise

    def _executor(self) -> ThreadPoolExecutor:
        self._ensure()
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.read_concurrency, thread_name_prefix="shardcache-read"
                )
            return self._pool

    @overload
    def get_shards(
        self, manifest: Manifest, indices: Iterable[int], *, errors: Literal["raise"] = ...,
        concurrency: int | None = ...,
    ) -> Iterator[tuple[int, pa.Buffer]]: ...
    @overload
    def get_shards(
        self, manifest: Manifest, indices: Iterable[int], *, errors: Literal["return"],
        concurrency: int | None = ...,
    ) -> Iterator[tuple[int, pa.Buffer | ShardCacheError]]: ...

    def get_shards(
        self,
        manifest: Manifest,
        indices: Iterable[int],
        *,
        errors: Literal["raise", "return"] = "raise",
        concurrency: int | None = None,
    ) -> Iterator[tuple[int, Any]]:
        """Fetch many shards concurrently; yield ``(index, payload)`` in request order.

        At most ``concurrency`` (default ``read_concurrency``) GETs are in flight.
        With ``errors="return"``, a missing, corrupt or unreachable shard is yielded
        as its exception instead of raised, so a caller can read it through.
        """
        if errors not in ("raise", "return"):
            raise ConfigError(f"errors={errors!r} must be 'raise' or 'return'")
        if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                        or concurrency < 1):
            raise ConfigError(f"concurrency={concurrency!r} must be an integer >= 1 or None")
        width = min(concurrency or self.read_concurrency, self.read_concurrency)
        pool = self._executor()
        pending: deque[tuple[int, Future[pa.Buffer]]] = deque()
        todo = iter(indices)
        try:
            for index in todo:
                pending.append((index, pool.submit(self.get_payload, manifest, index)))
                if len(pending) >= width:
                    yield self._result(*pending.popleft(), errors=errors)
            while pending:
                yield self._result(*pending.popleft(), errors=errors)
        finally:
            for _, fut in pending:
                fut.cancel()

    @staticmethod
    def _result(index: int, fut: Future[pa.Buffer], *, errors: str) -> tuple[int, Any]:
        try:
            return index, fut.result()
        except (ShardMissing, ShardCorrupted, CacheUnavailable) as exc:
            if errors == "raise":
                raise
            return index, exc

    # -- leases and removal -----------------------------------------------------------

    def lease(self, name: str, version: str = "*", *, ttl: float = 60.0) -> Lease:
        """Hold a renewed lease on ``version`` (``*``: every version) until released."""
        validate_dataset_name(name)
        return Lease(call=self.call, key=self.keys.leases(name), dataset=name, version=version, ttl=ttl).acquire()

    def leases(self, name: str) -> list[str]:
        """Live lease members (``VERSION|HOLDER``) of ``name``."""
        return live_leases(self.call, self.keys.leases(name))

    def delete(
        self, name: str, version: str | None = None, *, all_old: bool = False, force: bool = False
    ) -> list[str]:
        """Remove ``version`` (default: every version) of ``name``; return the versions removed.

        ``all_old`` removes every version but the newest. A version with a live lease
        raises DatasetInUse unless ``force``.
        """
        validate_dataset_name(name)
        if version is not None and all_old:
            raise ConfigError(f"give version={version!r} or all_old=True, not both")
        # Keys of the wrong type do not stop `rm`: it is how a user cleans up after them (the script
        # deletes them); each is named in a warning.
        broken = False
        try:
            versions = self.versions(name)
        except ManifestCorrupted as exc:
            log.warning("%s; `rm` goes on without it", exc)
            versions, broken = [], True
        latest = self._lenient(lambda: self.latest_version(name), None)
        latest = latest if isinstance(latest, str) and _is_version(latest) else None
        if version is not None:
            validate_version(version)
            present = version in versions or self._lenient(
                lambda: self.call("GET", self.keys.manifest(name, version)), b"") is not None
            if not present:
                raise DatasetNotFound(
                    f"dataset {name!r} has no version {version!r}; versions: {', '.join(versions) or 'none'}",
                    dataset=name, version=version,
                )
            targets = [version]
        elif all_old:
            newest = latest if latest in versions else (versions[-1] if versions else None)
            targets = [v for v in versions if v != newest]
        else:
            targets = versions or ([latest] if broken and latest else [])
            if not targets and not broken and name not in self._lenient(self.datasets, [name]):
                raise DatasetNotFound(f"dataset {name!r} is not in the cache; see `shardcache ls`", dataset=name)
        if not targets and not (broken and version is None and not all_old):
            return []
        # Read which shards each version has before the script removes that record: if the
        # script's reply is lost and it is retried, the retry finds the manifests gone.
        before: dict[str, tuple[Any, Any]] = {}
        for v in targets:
            manifest_key, done_key = self.keys.manifest(name, v), self.keys.done(name, v)
            before[v] = (self._lenient(functools.partial(self.call, "GET", manifest_key), None),
                         self._lenient(functools.partial(self.call, "HGETALL", done_key), {}))
        keys = [self.keys.leases(name), self.keys.versions(name), self.keys.latest(name)]
        for v in targets:
            keys += [self.keys.manifest(name, v), self.keys.done(name, v)]
        reply = self.call("EVAL", _DELETE, len(keys), *keys, "1" if force else "0", *targets)
        if int(reply[0]) == 0:
            holders = [m.decode(errors="replace") if isinstance(m, bytes) else str(m) for m in reply[1]]
            raise DatasetInUse(
                f"dataset {name!r} is in use by {len(holders)} reader(s) ({', '.join(holders[:3])}); "
                "wait for the jobs to finish or their leases to expire, or pass force",
                dataset=name, leases=holders,
            )
        outs = reply[1]
        for i, v in enumerate(targets):
            manifest_raw, records = before[v]
            counts = _chunk_counts(name, v, [manifest_raw, outs[2 * i]], [records, _flat_pairs(outs[2 * i + 1])])
            self._unlink(name, (self.keys.chunk(self.keys.shard(name, v, index), c)
                                for index, count in sorted(counts.items()) for c in range(count)))
        if int(reply[2]) == 0:
            try:
                self.call("SREM", self.keys.datasets(), name)
                if self.call("ZCARD", self.keys.versions(name)):  # a writer began a new version meanwhile
                    self.call("SADD", self.keys.datasets(), name)
            except ManifestCorrupted as exc:  # the dataset list is broken: the dataset is gone all the same
                log.warning("%s", exc)
        return targets

    @staticmethod
    def _lenient(read: Callable[[], T], default: T) -> T:
        """``read()``, or ``default`` when a key it reads has the wrong type (logged): for `rm`."""
        try:
            return read()
        except ManifestCorrupted as exc:
            log.warning("%s; `rm` goes on without it", exc)
            return default

    def _unlink(self, name: str, keys: Iterable[str], *, batch: int = 500) -> None:
        """UNLINK ``keys`` in pipelined batches (small replies, so pipelining pays here)."""
        client = self._ensure()
        todo = iter(keys)
        while chunk := list(itertools.islice(todo, batch)):

            def run(chunk: Sequence[str] = chunk) -> None:
                pipe = client.pipeline(transaction=False)
                for k in chunk:
                    pipe.unlink(k)
                pipe.execute()

            self.retry.call(run, what=f"deleting shards of {name!r}", on_retry=self._refresh, on_wait=self._on_wait)

    # -- capacity ------------------------------------------------------------------

    def capacity(self) -> Capacity:
        """Used and max memory of every primary, and the eviction policy."""
        client = self._ensure()

        def run() -> Any:
            if self._is_cluster:
                # One call per primary: with a single primary, redis-py would return its reply unkeyed.
                primaries = client.get_primaries()  # type: ignore[union-attr]
                return {node.name: client.info("memory", target_nodes=node) for node in primaries}
            return {self.url.redacted(): client.info("memory")}

        raw = self.retry.call(run, what="INFO memory", on_retry=self._refresh, on_wait=self._on_wait)
        nodes = []
        for node, info in sorted(raw.items()):
            nodes.append(
                NodeMemory(
                    node=str(node),
                    used=int(info.get("used_memory", 0)),
                    maxmemory=int(info.get("maxmemory", 0)),
                    policy=str(info.get("maxmemory_policy", "unknown")),
                    system=int(info.get("total_system_memory", 0)),
                )
            )
        return Capacity(nodes=tuple(nodes))

    def _capacity_error(
        self, needed: int | None, *, dataset: str | None = None, node: str | None = None
    ) -> CapacityExceeded:
        try:
            cap = self.capacity()
            free, total = cap.free, cap.maxmemory
        except ShardCacheError:
            cap, free, total = None, None, 0
        what = f" while writing {dataset!r}" if dataset else ""
        # Keys spread by hash: one full node stops a load even when the others have room, so name it.
        full = next((n for n in cap.nodes if n.node == node), None) if cap is not None and node else None
        where = (
            f"; node {full.node} uses {format_bytes(full.used)} of its maxmemory {format_bytes(full.maxmemory)}"
            if full is not None and full.maxmemory else ""
        )
        return CapacityExceeded(
            f"Redis is out of memory{what} (OOM command not allowed under maxmemory"
            f"{' ' + format_bytes(total) if total else ''}, {format_bytes(free or 0)} free{where}); "
            "free space with `shardcache rm`, raise maxmemory, or use --allow-partial, then run again: "
            "the prefetch resumes where it stopped",
            needed=needed, available=free, node=node,
        )


# Every live ShardCache, so that a forked child (a DataLoader worker) can replace their locks.
_INSTANCES: weakref.WeakSet[ShardCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for cache in list(_INSTANCES):
        cache._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _rebuild(
    url: CacheURL, options: ConnectOptions, prefix: str, retry: RetryPolicy, chunk_size: int,
    read_concurrency: int, shard_ttl: float | None,
) -> ShardCache:
    return ShardCache(
        url, options=options, prefix=prefix, retry=retry, chunk_size=chunk_size,
        read_concurrency=read_concurrency, shard_ttl=shard_ttl,
    )


def _flat_pairs(raw: Any) -> dict[Any, Any]:
    """A HGETALL reply that came through Lua's cjson: a flat ``[field, value, ...]`` list
    (an empty one encodes as ``{}``)."""
    try:
        flat = json.loads(raw) if raw else []
    except (ValueError, RecursionError):
        return {}
    if not isinstance(flat, list):
        return {}
    return dict(zip(flat[::2], flat[1::2], strict=False))


def _chunk_counts(
    name: str, version: str, manifests: Sequence[Any], records: Sequence[Mapping[Any, Any]]
) -> dict[int, int]:
    """Shard index -> number of chunk keys, from raw manifests and ``done`` records; lenient,
    since a damaged manifest is exactly what `rm` must still clean up, but capped per shard."""
    counts: dict[int, int] = {}
    for raw in manifests:
        if not raw:
            continue
        try:
            doc = json.loads(raw)
            shards = doc["shards"] if isinstance(doc, dict) and isinstance(doc.get("shards"), list) else []
        except (ValueError, RecursionError):
            log.warning("the manifest of %r %s is malformed; only shards it names clearly are removed", name, version)
            continue
        for index, s in enumerate(shards):
            chunks = s.get("chunks") if isinstance(s, dict) else None
            count = chunks if isinstance(chunks, int) and not isinstance(chunks, bool) else 1
            counts[index] = max(counts.get(index, 1), min(max(count, 1), MAX_CHUNKS_PER_SHARD))
    for pairs in records:
        for field, value in pairs.items():
            text = field.decode(errors="replace") if isinstance(field, bytes) else str(field)
            if text.isascii() and text.isdigit() and len(text) < 12:
                counts[int(text)] = max(counts.get(int(text), 1), record_chunks(value))
    return counts


def _is_version(text: str) -> bool:
    try:
        validate_version(text)
    except ConfigError:
        return False
    return True


def _copy_into(payload: pa.Buffer, into: Into) -> None:
    """Copy ``payload``'s ranges to their ``into`` destinations (what bulk.read_bulk does while
    receiving); a payload too short for them is left for the checksum check to reject."""
    view = memoryview(payload).cast("B")
    for offset, dest in into:
        if offset + dest.nbytes <= len(view):
            dest[:] = view[offset : offset + dest.nbytes]
