"""One shard for the loader: from the cache, or rebuilt from its source (read-through).

A shard that the cache cannot serve (missing: evicted, lost with a node, or never cached under
``allow_partial``; not written yet because the prefetch still runs; corrupt; or the cache unreachable
past its retry deadline) is rebuilt from its source segments with
:func:`shardcache.prefetcher.read_source_shard`: the same rows in the same order, checked against the
manifest's checksum (or, with none yet, the source files against the size and mtime the prefetch
listed) before any row is handed out: a shard rebuilt from a file rewritten since raises
:class:`SourceError` naming the file, in the training loop, never a batch of foreign rows. A rebuilt
payload is written back so the next reader hits. ``read_through=False`` raises instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from ..cache import Manifest, ShardCache, decode_payload
from ..cache.bulk import Into
from ..errors import CacheUnavailable, DatasetNotFound, ShardCacheError, ShardCorrupted, ShardMissing, SourceError
from .stats import Counters

__all__ = ["ShardSource"]

log = logging.getLogger(__name__)

Transform = Callable[[pa.RecordBatch], Any]


class ShardSource:
    """Loads shards of ``manifest`` as Arrow tables, counting into ``counters``."""

    def __init__(
        self,
        *,
        cache: ShardCache,
        manifest: Manifest,
        counters: Counters,
        read_through: bool,
        write_back: bool,
        prefetch_transform: Transform | None,
    ) -> None:
        self.cache = cache
        self.manifest = manifest
        self.counters = counters
        self.read_through = read_through
        self.write_back = write_back
        self.prefetch_transform = prefetch_transform
        self._removed = False

    def shard_rows(self, index: int) -> int:
        """Rows of shard ``index``."""
        return self.manifest.shards[index].rows

    def load(self, index: int) -> pa.Table:
        """Shard ``index``: from the cache if it serves it, else rebuilt from the source."""
        return self.load_into(index)[0]

    def load_into(self, index: int, into: Into = ()) -> tuple[pa.Table, pa.Buffer | None]:
        """Shard ``index`` and, when the cache served it, its payload, whose ``into`` ranges were
        received into their destinations instead (see :meth:`ShardCache.get_payload`); the table's
        columns over those ranges are then undefined. A shard rebuilt from the source comes with
        None, its destinations undefined."""
        manifest = self.manifest
        try:
            payload = self.cache.get_payload(manifest, index, into=into)
            table = decode_payload(
                payload, schema=manifest.schema, dataset=manifest.name, version=manifest.version,
                shard=index, max_rows=manifest.shards[index].rows,
            )  # fmt: skip
        except (ShardMissing, ShardCorrupted, CacheUnavailable) as exc:
            self.counters.add(misses=1, corrupted=int(isinstance(exc, ShardCorrupted)))
            if not self.read_through:
                raise self._refusal(index, exc) from None
            log.debug("reading shard %d of %r through from the source: %s", index, manifest.name, exc)
            return self._rebuild(index, writable=not isinstance(exc, CacheUnavailable)), None
        self.counters.add(hits=1, bytes_read=payload.size)
        return table, payload

    def _refusal(self, index: int, exc: ShardCacheError) -> ShardCacheError:
        if isinstance(exc, ShardMissing):
            return ShardMissing(
                f"{exc}; read_through=False, so the loader stops here: re-run the prefetch, or pass "
                "read_through=True to rebuild missing shards from the source",
                dataset=exc.dataset, version=exc.version, shard=exc.shard,
            )  # fmt: skip
        return exc

    def _rebuild(self, index: int, *, writable: bool) -> pa.Table:
        from ..source.rebuild import rebuild_shard  # the source readers load lazily

        manifest = self.manifest
        table, payload = rebuild_shard(manifest, index, transform=self.prefetch_transform)  # checked: see the doc
        expected = manifest.shards[index].rows
        if table.num_rows != expected:
            raise SourceError(
                f"shard {index} of {manifest.name!r} rebuilt from its source has {table.num_rows} rows, the "
                f"manifest says {expected}: the source changed since the prefetch; prefetch it again",
                uri=manifest.shards[index].source[0].uri if manifest.shards[index].source else None,
                dataset=manifest.name, version=manifest.version, shard=index,
            )
        self.counters.add(read_throughs=1, source_rows=table.num_rows)
        if self.write_back and writable:
            self._write_back(index, payload)
        return table

    def _write_back(self, index: int, payload: pa.Buffer) -> None:
        manifest = self.manifest
        shard = manifest.shards[index]
        chunks = -(-payload.size // self.cache.chunk_size) or 1
        # Readers of a complete version trust its manifest: a shard never cached (allow_partial) stays
        # uncached, and one cut into other chunks (another chunk size) is not written over the record.
        if manifest.state == "complete" and (not shard.cached or chunks != shard.chunks):
            return
        if self._removed:
            return
        try:
            self.cache.put_shard(manifest, index, payload)
        except DatasetNotFound:
            # Removed mid-epoch (``rm --force``): put_shard found the manifest gone after writing and
            # removed what it wrote; the version stays removed, so nothing more is written back for it.
            self._removed = True
            log.info("%r version %s was removed: rebuilt shards are not written back", manifest.name,
                     manifest.version)
            return
        except ShardCacheError as exc:  # the batch is built anyway; the next reader reads through again
            log.warning("could not write shard %d of %r back to the cache: %s", index, manifest.name, exc)
            return
        self.counters.add(written_back=1)
