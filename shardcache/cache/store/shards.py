"""Shard payloads: writing them in chunks, checking they are still there, reading and verifying them.

Reads are one GET per key from a bounded thread pool: for 1-4 MiB values, MGET and pipelines
measured slower than one GET at a time (at 4 MiB about half the throughput, on a 2-vCPU VM, for
redis-py pipelines, ``mget_nonatomic`` and ``redis-benchmark -P 8`` alike). While no node's
breaker is open, a GET or SET first goes straight between the socket and Arrow memory (bulk.py);
anything unusual repeats it through redis-py and the session's ``call``.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import Any, NoReturn

import pyarrow as pa
import redis.exceptions as rex
import xxhash

from ...checks import check_int
from ...errors import (
    CacheUnavailable,
    CapacityExceeded,
    ConfigError,
    DatasetNotFound,
    ManifestCorrupted,
    ShardCacheError,
    ShardCorrupted,
    ShardMissing,
)
from ...units import format_bytes
from ..bulk import Into, NotBulk, read_bulk, write_bulk
from ..codec import checksum, decode_payload, split_chunks
from ..manifest import MAX_CHUNKS_PER_SHARD, Manifest, ShardInfo, shard_record
from .capacity import capacity_error
from .catalog import Catalog
from .session import Session

__all__ = ["Shards"]

log = logging.getLogger(__name__)

# KEYS: manifest, done. ARGV: shard index, record. The record of a shard of a loading version is
# written only while its manifest exists: a version removed mid-load (`rm`) is never re-created
# by a writer that is still running (it would hold memory that no manifest names).
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""
# KEYS: manifest. Run after the chunks of a shard of a committed version are written (evicted shards
# restored, a loader's write-back): `rm` may have removed the version meanwhile, and its chunks must
# then go too (they would hold memory, with their TTL, that no manifest names and no `rm` finds).
_PRESENT = "return redis.call('EXISTS', KEYS[1])"


class Shards:
    """The shards of one session's datasets. ``chunk_size`` bounds the value of one key; ``shard_ttl``
    is the TTL of shards written for a manifest that records none."""

    def __init__(self, session: Session, catalog: Catalog, *, chunk_size: int, shard_ttl: float | None) -> None:
        self.session = session
        self.catalog = catalog
        self.chunk_size = chunk_size
        self.shard_ttl = shard_ttl

    # -- writing -------------------------------------------------------------------

    def put_shard(self, manifest: Manifest, index: int, payload: pa.Buffer | bytes) -> ShardInfo:
        if not 0 <= index < manifest.num_shards:
            raise ConfigError(f"index={index!r} is not a shard of {manifest.name!r} (0..{manifest.num_shards - 1})")
        session, keys = self.session, self.session.keys
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
        loading = manifest.state == "loading"
        # An intent record first, so that `rm` finds every chunk even if we die midway (a
        # committed manifest already names the chunks of its cached shards).
        if len(chunks) > 1 and not (manifest.state == "complete" and shard.cached):
            self._record(manifest, index, json.dumps({"pending": len(chunks)}).encode(), written=0)
        # The dataset's policy, as its manifest records it: a loader writing a shard back follows it.
        ttl = manifest.shard_ttl if manifest.shard_ttl is not None else self.shard_ttl
        px = int(ttl * 1000) if ttl else None
        # Chunks of a shard no manifest names yet are taken back when the write fails: else a shard left
        # uncached (allow_partial, a full node) would keep the chunks that did fit, which nothing reads.
        named = manifest.state == "complete" and shard.cached
        c = 0
        try:
            for c, chunk in enumerate(chunks):
                self.set(keys.chunk(shard.key, c), chunk, px=px)
        except ShardCacheError as exc:
            if not named:  # chunk c too: its SET may have landed with the reply lost, then failed on a retry
                self._unlink_quietly(shard.key, c + 1)
            if isinstance(exc, CapacityExceeded):
                raise capacity_error(session, nbytes, dataset=manifest.name, node=exc.node) from exc
            raise
        written = shard.written(nbytes=nbytes, checksum=digest, chunks=len(chunks))
        if loading:
            try:
                self._record(manifest, index, shard_record(written), written=len(chunks))
            except DatasetNotFound:  # removed meanwhile: _record took the chunks back
                raise
            except ShardCacheError:  # e.g. the node holding the records is full or down: not recorded
                self._unlink_quietly(shard.key, len(chunks))
                raise
        elif not int(session.call("EVAL", _PRESENT, 1, keys.manifest(manifest.name, manifest.version))):
            self._removed(manifest, index, written=len(chunks))
        session.stats.add(bytes_written=nbytes, shards_written=1)
        return written

    def _record(self, manifest: Manifest, index: int, record: bytes, *, written: int) -> None:
        """Record shard ``index`` in ``done:V`` if the version is still there; else UNLINK its first
        ``written`` chunks and raise DatasetNotFound (removed mid-load: nothing of it may stay)."""
        session, keys = self.session, self.session.keys
        name, version = manifest.name, manifest.version
        kept = session.call("EVAL", _RECORD, 2, keys.manifest(name, version), keys.done(name, version),
                            str(index), record)
        if not int(kept):
            self._removed(manifest, index, written=written)

    def _removed(self, manifest: Manifest, index: int, *, written: int) -> NoReturn:
        """UNLINK the first ``written`` chunks of shard ``index`` of a version removed while they were
        written, and raise DatasetNotFound."""
        session, keys = self.session, self.session.keys
        name, version = manifest.name, manifest.version
        for c in range(written):
            session.call("UNLINK", keys.chunk(manifest.shards[index].key, c))
        raise DatasetNotFound(
            f"version {version} of {name!r} was removed (`shardcache rm`) while it was being written; the "
            "shards written for it were removed too; prefetch it again to load it anew",
            dataset=name, version=version,
        )

    def _unlink_quietly(self, shard_key: str, written: int) -> None:
        """UNLINK the first ``written`` chunks of a shard whose write failed; an UNLINK that fails too is
        logged (`rm` of the version removes them: its records name them)."""
        try:
            for c in range(written):
                self.session.call("UNLINK", self.session.keys.chunk(shard_key, c))
        except ShardCacheError as exc:
            log.warning("could not remove the chunks of %s after a failed write: %s", shard_key, exc)

    def drop_shard(self, manifest: Manifest, index: int) -> Manifest:
        shard = manifest.shards[index]
        for c in range(max(shard.chunks, 1)):
            self.session.call("UNLINK", self.session.keys.chunk(shard.key, c))
        return manifest.with_shard(ShardInfo(index=shard.index, key=shard.key, rows=shard.rows, source=shard.source))

    def missing_shards(self, manifest: Manifest, *, check_sizes: bool = False) -> list[int]:
        client, keys = self.session.client, self.session.keys
        cached = [s for s in manifest.shards if s.cached]
        if not cached:
            return []

        def run() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for s in cached:
                for c in range(s.chunks):
                    key = keys.chunk(s.key, c)
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

        replies = iter(self.session.retry_call(run, what="STRLEN shards" if check_sizes else "EXISTS shards"))
        missing = []
        for s in cached:
            got = [int(next(replies)) for _ in range(s.chunks)]  # consume every reply of this shard
            if (sum(got) != s.nbytes) if check_sizes else not all(got):
                missing.append(s.index)
        return missing

    def set(self, key: str, value: memoryview, *, px: int | None) -> None:
        """SET of one chunk, with the retry policy; the write-side twin of :meth:`get`.

        The first try sends the value from its own memory (bulk.py); any failure or other reply
        than ``+OK`` repeats the SET through redis-py and ``call`` (OOM becomes CapacityExceeded).
        """
        session = self.session
        if not session.breaker.tripped:
            try:
                write_bulk(session.client, key, value, cluster=session.is_cluster, px=px)
                return
            except (NotBulk, rex.RedisError, rex.RedisClusterException, OSError) as exc:
                log.debug("direct SET of %s fell back to redis-py: %s", key, type(exc).__name__)
        session.call("SET", key, value, px=px)

    # -- reading -------------------------------------------------------------------

    def get_payload(self, manifest: Manifest, index: int, *, into: Into = ()) -> pa.Buffer:
        stats = self.session.stats
        shard = self.catalog.shard_info(manifest, index)
        if not shard.cached:
            stats.add(misses=1)
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
            stats.add(misses=1)
            raise ShardMissing(
                f"shard {index} of {manifest.name!r} version {manifest.version} is gone from Redis (evicted or "
                "lost with a node); it is read through from the source, or re-run the prefetch",
                dataset=manifest.name, version=manifest.version, shard=index,
            )
        if isinstance(payload, Exception) or payload.size != shard.nbytes or digest != shard.checksum:
            stats.add(corrupted=1)
            got = type(payload).__name__ if isinstance(payload, Exception) else f"{payload.size} bytes"
            raise ShardCorrupted(
                f"shard {index} of {manifest.name!r} version {manifest.version} failed its xxh3-64 checksum "
                f"({got}, expected {shard.nbytes} bytes); it is read through from the source",
                dataset=manifest.name, version=manifest.version, shard=index,
            )
        stats.add(hits=1, bytes_read=shard.nbytes)
        return payload

    def _read_chunks(self, shard: ShardInfo, into: Into = ()) -> tuple[pa.Buffer, str] | None:
        """The concatenated chunks of ``shard`` and their checksum; None if one is gone. Reading
        stops as soon as the bytes exceed the recorded size, so a planted record cannot make us
        read without end. ``into``: see ``ShardCache.get_payload``."""
        if shard.chunks == 1:
            hasher = xxhash.xxh3_64()  # fed while the bytes arrive (bulk.py)
            payload = self.get(shard.key, hasher=hasher, into=into)
            return None if payload is None else (payload, hasher.hexdigest())
        parts: list[pa.Buffer] = []
        size = 0
        for c in range(shard.chunks):
            part = self.get(self.session.keys.chunk(shard.key, c))
            if part is None:
                return None
            parts.append(part)
            size += part.size
            if size > shard.nbytes:
                break  # corrupt: the checksum check rejects it
        joined = pa.py_buffer(b"".join(parts))
        _copy_into(joined, into)
        return joined, checksum(joined)

    def get(self, key: str, *, hasher: Any = None, into: Into = ()) -> pa.Buffer | None:
        """GET of one shard or chunk, with the retry policy; ``hasher`` (an xxhash object in its
        initial state) is fed the value; ``into``: see ``ShardCache.get_payload``.

        While no node's breaker is open, the first try reads the value straight into an
        Arrow buffer (bulk.py): this is the hot path. Any failure or unusual reply repeats
        the GET through redis-py and ``call``, which handle redirects, errors and retries.
        """
        session = self.session
        if not session.breaker.tripped:
            try:
                return read_bulk(session.client, key, cluster=session.is_cluster, hasher=hasher, into=into)
            except (NotBulk, rex.RedisError, rex.RedisClusterException, OSError) as exc:
                log.debug("direct GET of %s fell back to redis-py: %s", key, type(exc).__name__)
                if hasher is not None:
                    hasher.reset()  # it may hold part of the value
        value = session.call("GET", key)
        if value is None:
            return None
        if hasher is not None:
            hasher.update(value)
        buffer = pa.py_buffer(value)
        _copy_into(buffer, into)
        return buffer

    def get_table(self, manifest: Manifest, index: int) -> pa.Table:
        buf = self.get_payload(manifest, index)
        try:
            return decode_payload(
                buf, schema=manifest.schema, dataset=manifest.name, version=manifest.version,
                shard=index, max_rows=manifest.shards[index].rows,
            )
        except ShardCorrupted:
            self.session.stats.add(corrupted=1)
            raise

    def get_shards(
        self, manifest: Manifest, indices: Iterable[int], *, errors: str = "raise", concurrency: int | None = None
    ) -> Iterator[tuple[int, Any]]:
        if errors not in ("raise", "return"):
            raise ConfigError(f"errors={errors!r} must be 'raise' or 'return'")
        check_int("concurrency", concurrency, minimum=1, fix="pass an integer >= 1, or None", optional=True)
        read_concurrency = self.session.read_concurrency
        width = min(concurrency or read_concurrency, read_concurrency)
        pool = self.session.executor()
        pending: deque[tuple[int, Future[pa.Buffer]]] = deque()
        todo = iter(indices)
        try:
            for index in todo:
                pending.append((index, pool.submit(self.get_payload, manifest, index)))
                if len(pending) >= width:
                    yield _result(*pending.popleft(), errors=errors)
            while pending:
                yield _result(*pending.popleft(), errors=errors)
        finally:
            for _, fut in pending:
                fut.cancel()


def _result(index: int, fut: Future[pa.Buffer], *, errors: str) -> tuple[int, Any]:
    try:
        return index, fut.result()
    except (ShardMissing, ShardCorrupted, CacheUnavailable) as exc:
        if errors == "raise":
            raise
        return index, exc


def _copy_into(payload: pa.Buffer, into: Into) -> None:
    """Copy ``payload``'s ranges to their ``into`` destinations (what bulk.read_bulk does while
    receiving); a payload too short for them is left for the checksum check to reject."""
    view = memoryview(payload).cast("B")
    for offset, dest in into:
        if offset + dest.nbytes <= len(view):
            dest[:] = view[offset : offset + dest.nbytes]
