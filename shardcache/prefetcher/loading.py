"""One run's loading: which shards to load, loading them on the write pipeline, the commit, the report.

:class:`Job` is shared by a whole prefetch (``run.py``) and by each part of a parallel one
(``parts.py``): a part is a job whose ``todo`` is its own range of shards.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from ..cache.locks import DatasetLock
from ..cache.manifest import Manifest, ShardInfo
from ..cache.store import ShardCache
from ..errors import CapacityExceeded, DatasetNotFound, ShardCacheError, SourceError
from ..source.rebuild import build_shard, encode_shard, open_reader
from ..source.transform import Transform
from .capacity import fit
from .guard import ListingGuard
from .job import Source
from .pipeline import Done, WritePipeline
from .report import PrefetchReport, Progress, ProgressCallback, ShardFailure

__all__ = ["BATCH_SHARDS", "Job", "estimates", "stored"]

log = logging.getLogger(__name__)

# Source batches hold this many shards' rows: a shard spanning two batches costs a copy.
BATCH_SHARDS = 8


class Job:
    """The state of one run: where to write, what was written, the report."""

    def __init__(
        self, *, store: ShardCache, src: Source, report: PrefetchReport, transform: Transform | None,
        progress: ProgressCallback | None, workers: int, inflight: int, allow_partial: bool,
        fs_options: Mapping[str, Any], scope: Sequence[int] | None = None,
    ) -> None:
        self.store = store
        self.scope = None if scope is None else list(scope)  # a part's shards; None: all of them
        self.src = src
        self.report = report
        self.transform = transform
        self.progress = progress
        self.workers = workers
        self.inflight = inflight
        self.allow_partial = allow_partial
        self.fs_options = fs_options
        self._bytes_total = 0
        self._written: list[int] = []  # shards this run wrote, in the order they landed
        self.guard = ListingGuard(src)

    # -- what is there ---------------------------------------------------------------

    def todo(self, manifest: Manifest) -> list[int]:
        """Shards not in Redis: never written, or gone (evicted, lost) or truncated since."""
        absent = set(self.store.missing_shards(manifest, check_sizes=True))
        return [s.index for s in manifest.shards if not s.cached or s.index in absent]

    def check_capacity(
        self, manifest: Manifest, todo: list[int], estimates: Sequence[int], *, new: bool
    ) -> tuple[list[int], list[int]]:
        """``(shards to load, shards left uncached)``; raises CapacityExceeded unless allow_partial."""
        load, skip = fit(self.store, manifest, todo, estimates, new=new, allow_partial=self.allow_partial)
        if self.allow_partial and todo:
            self.report.uncached = len(skip)
        return load, skip

    def commit(self, manifest: Manifest, lock: DatasetLock) -> Manifest:
        """Mark the version complete.

        Under allow_partial the shards may have filled the node that holds the manifest
        (the size estimates are close, not exact): that node then gives back the shards
        this run wrote to it, newest first, until the manifest fits.
        """
        final = manifest.replace(state="complete")
        meta = self.store.keys.manifest(final.name, final.version)
        while True:
            try:
                return self.store.commit(final, lock=lock)
            except CapacityExceeded:
                node = self.store.node_of(meta)
                mine = [
                    i for i in self._written
                    if final.shards[i].cached and self.store.node_of(final.shards[i].key) == node
                ]
                if not self.allow_partial or not mine:
                    raise
                nbytes = final.shards[mine[-1]].nbytes
                final = self.store.drop_shard(final, mine[-1])
                self.report.written -= 1
                self.report.bytes -= nbytes
                self.report.uncached += 1
                log.warning("the node holding the manifest of %r is full: shard %d stays uncached (allow_partial)",
                            final.name, mine[-1])

    # -- loading -------------------------------------------------------------------------

    def load(self, manifest: Manifest, todo: Sequence[int], estimates: Sequence[int], lock: DatasetLock) -> Manifest:
        """Load ``todo`` in order; return ``manifest`` with the written shards recorded.

        A shard that cannot be read or transformed is reported and skipped; a Redis
        error stops the load and is raised (a full Redis under allow_partial stops it
        quietly, leaving the rest uncached).
        """
        report = self.report
        report.shards = self._total(manifest)
        report.skipped = report.shards - len(todo) - report.uncached
        self._bytes_total = sum(estimates[i] for i in todo)
        self._emit()
        if not todo:
            return manifest
        assert manifest.source is not None
        rows = [manifest.shards[i].rows for i in todo]
        reader = open_reader(manifest.source, filesystem=self.src.fs, fs_options=self.fs_options,
                             batch_rows=min(max(BATCH_SHARDS * int(statistics.median(rows)), 1), 65536))
        shards = list(manifest.shards)
        fatal: BaseException | None = None
        pipe = WritePipeline(workers=self.workers, max_inflight=self.inflight)
        try:
            for index in todo:
                fatal = fatal or self._collect(pipe.drain(), shards)
                if fatal is not None:
                    break
                lock.check()
                self.guard.check_shard(manifest, index)
                payload = self._encode(reader, manifest, index)
                if payload is None:
                    continue
                if not pipe.submit(index, len(payload), self.store.put_shard, manifest, index, payload):
                    break
            fatal = self._collect(pipe.drain(), shards) or fatal
            fatal = self._collect(pipe.join(), shards) or fatal
        finally:
            pipe.close()
            reader.close()
        manifest = manifest.replace(shards=tuple(shards))
        if fatal is not None:
            if isinstance(fatal, CapacityExceeded) and self.allow_partial:
                report.uncached += sum(1 for i in todo if not shards[i].cached)
                log.warning("Redis is full: %d shards of %r stay uncached (allow_partial)",
                            report.uncached, manifest.name)
                return manifest
            raise fatal
        return manifest

    def _encode(self, reader: Any, manifest: Manifest, index: int) -> pa.Buffer | None:
        shard = manifest.shards[index]
        try:
            table = build_shard(reader, shard.source, transform=self.transform, schema=manifest.schema)
            if table.num_rows != shard.rows:
                raise SourceError(f"read {table.num_rows} rows, the plan says {shard.rows}; the source changed")
            return encode_shard(table, compression=manifest.compression)
        except Exception as exc:  # a bad file or a transform bug fails this shard, not the run
            self.guard.check_shard(manifest, index, again=True)  # ...but a file changed since listing fails the run
            where = getattr(exc, "uri", None) or (shard.source[0].uri if shard.source else self.src.uri)
            reason = str(exc) if isinstance(exc, ShardCacheError) else f"{type(exc).__name__}: {exc}"
            log.warning("shard %d of %r failed: %s", index, manifest.name, reason)
            self.report.failed.append(ShardFailure(shard=index, source=str(where), reason=" ".join(reason.split())))
            self._emit()
            return None

    def _collect(self, done: Iterable[Done], shards: list[ShardInfo]) -> BaseException | None:
        fatal = None
        for item in done:
            if item.error is not None:
                fatal = fatal or item.error
                continue
            info: ShardInfo = item.result
            shards[info.index] = info
            self._written.append(info.index)
            self.report.written += 1
            self.report.bytes += info.nbytes
        if done:
            self._emit()
        return fatal

    def _emit(self) -> None:
        if self.progress is None:
            return
        r = self.report
        self.progress(
            Progress(
                shards_done=r.skipped + r.written + len(r.failed),
                shards_total=r.shards or 0,
                bytes_done=r.bytes,
                bytes_total=max(self._bytes_total, r.bytes),
                skipped=r.skipped,
            )
        )

    def _total(self, manifest: Manifest) -> int:
        return manifest.num_shards if self.scope is None else len(self.scope)

    def finish(self, manifest: Manifest, started: float, *, noop: bool = False) -> PrefetchReport:
        r = self.report
        r.manifest = manifest
        r.shards = self._total(manifest)
        r.rows = manifest.num_rows if self.scope is None else sum(manifest.shards[i].rows for i in self.scope)
        r.state = manifest.state
        r.noop = noop
        shards = manifest.shards if self.scope is None else [manifest.shards[i] for i in self.scope]
        r.uncached = sum(1 for s in shards if not s.cached) if manifest.complete else r.uncached
        if noop:
            r.skipped = r.shards
        r.seconds = time.monotonic() - started
        log.info("%s", r.summary())
        return r


def stored(store: ShardCache, dataset: str, version: str) -> Manifest | None:
    try:
        return store.manifest(dataset, version)
    except DatasetNotFound:
        return None


def estimates(manifest: Manifest, src: Source) -> list[int]:
    """Payload sizes of a resumed version: written shards as they are, the others by rows."""
    written = [s for s in manifest.shards if s.cached and s.rows]
    if written:
        per_row = sum(s.nbytes for s in written) / sum(s.rows for s in written)
    else:
        per_row = sum(f.size for f in src.files) / max(manifest.num_rows, 1)
    return [s.nbytes if s.cached else int(s.rows * per_row) + 1 for s in manifest.shards]

