"""ShardCache: the shard store on Redis Cluster (or one standalone Redis).

>>> cache = connect("redis://127.0.0.1:7000")            # doctest: +SKIP
>>> m = cache.manifest("imagenet-train")                  # doctest: +SKIP
>>> for index, buf in cache.get_shards(m, range(m.num_shards)):   # doctest: +SKIP
...     table = decode_payload(buf, schema=m.schema)

:class:`ShardCache` is a front over small parts, each over one :class:`Session`:

- ``session``: the client across fork and pickle, ``call`` with retry and breaker, the read threads;
- ``catalog``: the dataset list, versions and manifests; begin and commit;
- ``shards``: writing, checking and reading shard payloads;
- ``removal``: deleting versions and every chunk they had;
- ``capacity``: memory of the primaries, and CapacityExceeded.

Every call rides through failover with :class:`RetryPolicy`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal, overload

import pyarrow as pa

from ...checks import check_seconds
from ...errors import ConfigError, ShardCacheError
from ...units import parse_size
from ..bulk import Into
from ..connection import Client, ConnectOptions
from ..keys import validate_dataset_name
from ..locks import DatasetLock, Lease, live_leases
from ..manifest import Manifest, ShardInfo
from ..retry import RetryPolicy
from ..urls import CacheURL, resolve_url
from .capacity import Capacity, NodeMemory, capacity, max_value_bytes
from .catalog import Catalog
from .removal import delete, writers
from .session import Session
from .shards import Shards

__all__ = ["Capacity", "NodeMemory", "Session", "ShardCache", "connect"]

DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
# Shards carry a TTL by default so that under volatile-lru (`shardcache up`'s default) Redis evicts
# only shards, never metadata (which has none). It is long: its point is to make shards evictable;
# a shard that expires is read through and written back like an evicted one.
DEFAULT_SHARD_TTL = 30 * 86400.0


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

    As a redis-py client over a ``connection_pool``, it can be built over a ``session`` instead
    of a URL (a test's stand-in, say); the session then brings its own url, options, prefix,
    retry and read_concurrency.
    """

    def __init__(
        self,
        url: CacheURL | None = None,
        *,
        options: ConnectOptions | None = None,
        prefix: str = "sc:",
        retry: RetryPolicy | None = None,
        chunk_size: int | str = DEFAULT_CHUNK_SIZE,
        read_concurrency: int = 4,
        shard_ttl: float | str | None = DEFAULT_SHARD_TTL,
        session: Session | None = None,
    ) -> None:
        self.chunk_size = parse_size(chunk_size, name="chunk_size")
        self.shard_ttl = None if shard_ttl is None else check_seconds("shard_ttl", shard_ttl)
        if session is None:
            if url is None:
                raise ConfigError("ShardCache needs a url or a session; build it with shardcache.connect(URL)")
            session = Session(url, options=options, prefix=prefix, retry=retry, read_concurrency=read_concurrency)
        elif url is not None or options is not None or retry is not None or prefix != "sc:" or read_concurrency != 4:
            raise ConfigError("a session brings its own url, options, prefix, retry and read_concurrency: "
                              "give them to the Session, not to ShardCache")
        self.session = session
        self.url, self.options, self.keys, self.retry = session.url, session.options, session.keys, session.retry
        self.read_concurrency, self.stats = session.read_concurrency, session.stats
        self._catalog = Catalog(session, shard_ttl=self.shard_ttl)
        self._shards = Shards(session, self._catalog, chunk_size=self.chunk_size, shard_ttl=self.shard_ttl)
        session.client  # noqa: B018 (connects now, so that a cache that does not answer is reported at once)

    # -- plumbing --------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"ShardCache({self.url.redacted()!r}, prefix={self.keys.prefix!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # The session pickles by its settings and reconnects on the other side.
        return _rebuild, (self.session, self.chunk_size, self.shard_ttl)

    @property
    def client(self) -> Client:
        """The underlying redis-py client (``RedisCluster`` or ``Redis``)."""
        return self.session.client

    @property
    def is_cluster(self) -> bool:
        return self.session.is_cluster

    def node_of(self, key: str | None) -> str | None:
        """The primary that serves ``key`` (``host:port``, as in :meth:`capacity`); None if unknown."""
        return self.session.node_of(key)

    def call(self, method: str, *args: Any, key: str | None = None, **kwargs: Any) -> Any:
        """Run one redis-py client method with retry-until-deadline."""
        return self.session.call(method, *args, key=key, **kwargs)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> ShardCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping(self) -> bool:
        return bool(self.call("PING"))

    # -- datasets and manifests --------------------------------------------------------

    def datasets(self) -> list[str]:
        """Names of every dataset with at least one version."""
        return self._catalog.datasets()

    def versions(self, name: str) -> list[str]:
        """Version ids of ``name``, oldest first."""
        return self._catalog.versions(name)

    def latest_version(self, name: str) -> str | None:
        return self._catalog.latest_version(name)

    def manifest(self, name: str, version: str | None = None) -> Manifest:
        """The manifest of ``version`` (default: the newest, loading or complete).

        A loading manifest comes with the shards written so far marked cached.
        """
        return self._catalog.manifest(name, version)

    def shard_info(self, manifest: Manifest, index: int) -> ShardInfo:
        """The current record of one shard (a loading version may have written it since)."""
        return self._catalog.shard_info(manifest, index)

    # -- writing -------------------------------------------------------------------

    def lock(self, name: str, *, wait: float = 0.0, ttl: float = 30.0, version: str | None = None) -> DatasetLock:
        """Take the writer lock of ``name`` (raises DatasetLocked after ``wait`` s). ``version``: the
        version the holder writes, recorded in the lock's token for ``writers`` and `rm`."""
        lock = DatasetLock(call=self.call, key=self.keys.lock(name), dataset=name, ttl=ttl, version=version)
        lock.acquire(wait=wait)
        return lock

    def part_lock(self, name: str, version: str, part: int, *, wait: float = 0.0, ttl: float = 30.0) -> DatasetLock:
        """Take the lock of part ``part`` of a parallel prefetch of ``version`` (DatasetLocked after ``wait`` s)."""
        lock = DatasetLock(call=self.call, key=self.keys.part_lock(name, version, part), dataset=name, ttl=ttl,
                           what=f"part {part} of dataset {name!r} version {version}")
        lock.acquire(wait=wait)
        return lock

    def record_parts(self, name: str, version: str, parts: int) -> int:
        """Record that ``version`` loads in ``parts`` parts unless a number is recorded; return the recorded one."""
        return self._catalog.record_parts(name, version, parts)

    def recorded_parts(self, name: str, version: str) -> int | None:
        """The number of parts a loading ``version`` was planned in (None: not planned in parts)."""
        return self._catalog.recorded_parts(name, version)

    def begin(self, manifest: Manifest) -> Manifest:
        """Write ``manifest`` as ``loading`` unless that version exists; return the stored one.

        Registers the version and points ``latest`` at it, so loaders started now
        find it and read through what is not cached yet.
        """
        return self._catalog.begin(manifest)

    def put_shard(self, manifest: Manifest, index: int, payload: pa.Buffer | bytes) -> ShardInfo:
        """Write shard ``index`` and record it; writing the same shard twice is harmless.

        For a ``complete`` manifest (a loader writing back a shard it read through), the
        payload must match the checksum the manifest holds, and is laid out in the
        manifest's number of chunks, so that readers of that manifest can read it.
        """
        return self._shards.put_shard(manifest, index, payload)

    def drop_shard(self, manifest: Manifest, index: int) -> Manifest:
        """Remove written shard ``index`` of a version not yet committed; return it marked uncached.

        The prefetcher uses this to make room on a full node under ``allow_partial``
        (UNLINK is allowed while Redis is out of memory). The shard's done record stays
        until commit deletes it; a resumed run checks the keys and reloads the shard.
        """
        return self._shards.drop_shard(manifest, index)

    def commit(self, manifest: Manifest, *, lock: DatasetLock | None = None) -> Manifest:
        """Store ``manifest`` as ``complete``: readers see it only after every shard is written."""
        return self._catalog.commit(manifest, lock=lock)

    def missing_shards(self, manifest: Manifest, *, check_sizes: bool = False) -> list[int]:
        """Indices of shards marked cached whose keys are gone (evicted or lost).

        With ``check_sizes``, also those whose chunks no longer add up to the recorded size
        (truncated or overwritten): the prefetcher's resume check. Either way it is one
        pipelined ``EXISTS`` (or ``STRLEN``) per chunk key; nothing is read.
        """
        return self._shards.missing_shards(manifest, check_sizes=check_sizes)

    # -- reading -------------------------------------------------------------------

    def get_payload(self, manifest: Manifest, index: int, *, into: Into = ()) -> pa.Buffer:
        """The verified payload of one shard; raises ShardMissing or ShardCorrupted.

        ``into`` lists ``(offset, destination)``: the payload's bytes from ``offset`` land in
        ``destination`` (a writable byte memoryview) instead of the returned buffer, where they
        are left undefined, and are received there straight from the socket when they can be (a
        loader builds batches in place this way). The checksum covers them all the same.
        """
        return self._shards.get_payload(manifest, index, into=into)

    def get_table(self, manifest: Manifest, index: int) -> pa.Table:
        """One shard decoded to an Arrow table, validated against the manifest."""
        return self._shards.get_table(manifest, index)

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
        return self._shards.get_shards(manifest, indices, errors=errors, concurrency=concurrency)

    # The hot path's single GET and SET, which tests drive directly.
    def _get(self, key: str, *, hasher: Any = None, into: Into = ()) -> pa.Buffer | None:
        return self._shards.get(key, hasher=hasher, into=into)

    def _set(self, key: str, value: memoryview, *, px: int | None) -> None:
        self._shards.set(key, value, px=px)

    @property
    def _lock(self) -> threading.Lock:
        """The session's lock (tests hold it across a fork)."""
        return self.session._lock

    # -- leases and removal -----------------------------------------------------------

    def lease(self, name: str, version: str = "*", *, ttl: float = 60.0) -> Lease:
        """Hold a renewed lease on ``version`` (``*``: every version) until released."""
        validate_dataset_name(name)
        return Lease(
            call=self.call, key=self.keys.leases(name), dataset=name, version=version, ttl=ttl,
            readers_key=self.keys.readers(name),
        ).acquire()

    def leases(self, name: str) -> list[str]:
        """Live lease members (``VERSION|HOLDER``) of ``name``."""
        return live_leases(self.call, self.keys.leases(name))

    def delete(
        self, name: str, version: str | None = None, *, all_old: bool = False, force: bool = False
    ) -> list[str]:
        """Remove ``version`` (default: every version) of ``name``; return the versions removed.

        ``all_old`` removes every version but the newest (and, while the newest is loading, the newest
        complete one). A version with a live lease raises DatasetInUse, and a loading version that a live
        prefetch (or part) is writing DatasetLocked, unless ``force``; a writer then fails rather than
        write on into the removed version.
        """
        return delete(self.session, self._catalog, name, version, all_old=all_old, force=force)

    def writers(self, name: str, version: str) -> list[str]:
        """Who is loading ``version`` now (a prefetch, or parts of one, by lock holder); [] when no one
        is: a ``loading`` version with no writer was left by a prefetch that failed or was killed."""
        return writers(self.session, self._catalog, name, version)

    # -- capacity ------------------------------------------------------------------

    def capacity(self) -> Capacity:
        """Used and max memory of every primary, and the eviction policy."""
        return capacity(self.session)

    def max_value_bytes(self) -> int | None:
        """The largest value (a manifest) every primary accepts: ``proto-max-bulk-len``; None when
        CONFIG GET is refused (an ACL, a managed service)."""
        return max_value_bytes(self.session)


def _rebuild(session: Session, chunk_size: int, shard_ttl: float | None) -> ShardCache:
    return ShardCache(session=session, chunk_size=chunk_size, shard_ttl=shard_ttl)
