"""``prefetch`` and ``run_prefetch``: load a source into the cache, resumably.

A run lists the source and computes the version id. If that version is complete and
every shard is still in Redis, it returns at once. Otherwise it takes the dataset's
writer lock, plans the shards (or picks up the plan of an interrupted run), checks
the capacity, writes the ``loading`` manifest, loads the shards not yet cached while
the next ones are read, and commits the manifest as ``complete``.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from ..cache.codec import validate_compression
from ..cache.keys import check_dataset_name
from ..cache.locks import DatasetLock
from ..cache.manifest import Manifest, ShardInfo
from ..cache.store import ShardCache, connect
from ..errors import CapacityExceeded, ConfigError, DatasetNotFound, ShardCacheError, SourceError
from ..metrics.hooks import prefetch_ended, prefetch_started
from ..source.rebuild import build_shard, encode_shard, open_reader
from ..source.transform import Transform
from ..units import parse_size
from .capacity import fit
from .guard import ListingGuard
from .job import Source, open_source, plan_manifest, version_id
from .lock import take_lock
from .order import load_order
from .pipeline import Done, WritePipeline
from .report import PrefetchReport, Progress, ProgressCallback, ShardFailure

__all__ = ["prefetch", "run_prefetch"]

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 4  # one SET in flight per primary of a 3-node cluster, and one more
MIN_INFLIGHT = 64 * 1024 * 1024
# Source batches hold this many shards' rows: a shard spanning two batches costs a copy.
BATCH_SHARDS = 8


def prefetch(
    source: str | os.PathLike[str],
    *,
    dataset: str,
    cache: ShardCache | str | None = None,
    format: str | None = None,  # shadows the builtin: the public name the issue gives
    shard_size: int | str = "4MiB",
    compression: str | None = None,
    transform: Transform | None = None,
    columns: Sequence[str] | None = None,
    workers: int | None = None,
    allow_partial: bool = False,
    order: str = "source",
    progress: ProgressCallback | None = None,
    **options: Any,
) -> Manifest:
    """Preload ``source`` into the cache as dataset ``dataset``; return the complete manifest.

    Takes the arguments of :func:`run_prefetch` (``seed``, ``world_size``, ``label``,
    ``wait``, ``max_inflight``, ``filesystem`` and the filesystem options too). Raises
    :class:`PrefetchFailed` (with the report) if any shard failed, and everything
    :func:`run_prefetch` raises.

    >>> m = prefetch("s3://bucket/train/", dataset="train", cache="redis://10.0.0.5:7000",
    ...              endpoint_override="minio:9000", scheme="http")    # doctest: +SKIP
    >>> m.state, m.num_shards                                          # doctest: +SKIP
    ('complete', 2048)
    """
    report = run_prefetch(
        source, dataset=dataset, cache=cache, format=format, shard_size=shard_size, compression=compression,
        transform=transform, columns=columns, workers=workers, allow_partial=allow_partial, order=order,
        progress=progress, **options,
    )
    if report.failed:
        raise report.failure()
    assert report.manifest is not None
    return report.manifest


def run_prefetch(
    source: str | os.PathLike[str],
    *,
    dataset: str,
    cache: ShardCache | str | None = None,
    format: str | None = None,
    shard_size: int | str = "4MiB",
    compression: str | None = None,
    transform: Transform | None = None,
    columns: Sequence[str] | None = None,
    workers: int | None = None,
    allow_partial: bool = False,
    order: str = "source",
    progress: ProgressCallback | None = None,
    seed: int = 0,
    world_size: int = 1,
    label: bool = False,
    wait: float = 0.0,
    max_inflight: int | str | None = None,
    filesystem: pafs.FileSystem | None = None,
    **fs_options: Any,
) -> PrefetchReport:
    """Preload ``source`` into the cache; return the report, even when shards failed.

    Args:
        source: a local path or glob, ``file://``, ``s3://``, ``gs://`` or ``hdfs://`` URI.
        dataset: the dataset's name in the cache.
        cache: a :class:`ShardCache`, a URL, or None for ``$SHARDCACHE_REDIS_URL``.
        format: parquet, arrow (feather/ipc), csv, tsv (tab-separated csv), jsonl or files; default from
            the extensions (``.tsv`` files are read as tsv). ``files`` makes one row per file:
            ``path`` (relative to the source root), ``bytes`` and, with ``label``, ``label``.
        shard_size: the most Arrow bytes per shard (shards stay a little under it).
        compression: None, ``"lz4"`` or ``"zstd"`` (Arrow IPC buffer compression).
        transform: ``RecordBatch -> RecordBatch``, one output row per input row; its id is
            part of the version.
        columns: the columns to keep (tabular formats).
        workers: writer threads (default 4).
        allow_partial: cache what fits and mark the other shards uncached (the loader reads
            them from the source), instead of raising :class:`CapacityExceeded`.
        order: ``"source"``, or ``"epoch0"`` to load shards in the order a loader with
            ``seed`` and ``world_size`` ranks reads them in its first epoch.
        progress: called with a :class:`Progress` after each shard, in the calling thread.
        label: with ``format="files"``, add the parent folder's name as ``label``.
        wait: seconds to wait for another prefetcher of the same dataset. By default a
            second prefetcher fails at once with :class:`DatasetLocked` naming the holder:
            two never interleave. With ``wait``, it waits for the lock, then finds the
            version complete and returns without loading anything.
        max_inflight: bytes read ahead of the writes (default ``max(8 * shard_size, 64MiB)``).
        filesystem: a ``pyarrow.fs.FileSystem`` to read the source with, instead of one
            made from the URI (the loader then needs it for read-through too).
        fs_options: ``endpoint_override``, ``scheme``, ``region``, ``connect_timeout``,
            ``request_timeout``, ``retry_attempts`` (recorded in the manifest), and
            ``access_key``, ``secret_key``, ``session_token``, ``anonymous`` (never recorded).

    Returns the :class:`PrefetchReport`: state ``complete``, or ``loading`` with
    ``report.failed`` listing each failed shard's source file and reason. Re-running
    resumes: only shards not in Redis are loaded. Raises :class:`SourceError` (naming the
    file) for a missing, empty, inconsistent or unreadable source, or a file changed since it was
    listed (checked when first read and before the commit; nothing is committed), :class:`CapacityExceeded`
    when the data does not fit (before anything is written, or when Redis runs out of
    memory midway: then run again once memory is freed), :class:`DatasetLocked`,
    :class:`ConfigError`.
    """
    started = time.monotonic()
    check_dataset_name(dataset)
    size = parse_size(shard_size, name="shard_size")
    compression = validate_compression(compression)
    cols = _columns(columns)
    if progress is not None and not callable(progress):
        raise ConfigError(f"progress={progress!r} is not callable; pass a function taking a Progress")
    if transform is not None and not callable(transform):
        raise ConfigError(f"transform={transform!r} is not callable; pass a function RecordBatch -> RecordBatch")
    if not isinstance(label, bool):
        raise ConfigError(f"label={label!r} must be True or False")
    n_workers = DEFAULT_WORKERS if workers is None else workers
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ConfigError(f"workers={workers!r} must be an integer >= 1 (writer threads)")
    inflight = max(8 * size, MIN_INFLIGHT) if max_inflight is None else parse_size(max_inflight, name="max_inflight")
    load_order([], order=order, seed=seed, world_size=world_size)  # validates order, seed and world_size
    options: dict[str, Any] = {"label": True} if label else {}
    if isinstance(format, str) and format.lower() == "tsv":  # csv, tab-separated, whatever the extensions
        format, options = "csv", {**options, "delimiter": "\t"}

    store, owned = _open_cache(cache)
    tracked = None  # the run as shardcache.metrics exports it
    try:
        src = open_source(source, fmt=format, fs_options=fs_options, filesystem=filesystem)
        version = version_id(src, columns=cols, shard_size=size, compression=compression, transform=transform,
                             options=options)
        report = PrefetchReport(dataset=dataset, version=version)
        tracked = prefetch_started(report, progress)
        job = _Job(store=store, src=src, report=report, transform=transform, progress=tracked.progress,
                   workers=n_workers, inflight=inflight, allow_partial=allow_partial, fs_options=fs_options)
        existing = _stored(store, dataset, version)
        if existing is not None and existing.complete and not job.todo(existing):
            return job.finish(existing, started, noop=True)
        with take_lock(store, dataset, wait=wait) as lock:
            existing = _stored(store, dataset, version)  # another prefetcher may have finished meanwhile
            if existing is None:
                planned = plan_manifest(
                    src, dataset=dataset, version=version, keys=store.keys, columns=cols, shard_size=size,
                    compression=compression, transform=transform, options=options,
                )
                manifest, estimates = planned.manifest, planned.estimates
                todo = list(range(manifest.num_shards))
            else:
                manifest = existing
                todo = job.todo(manifest)
                estimates = _estimates(manifest, src)
                if manifest.complete and not todo:
                    return job.finish(manifest, started, noop=True)
                log.info("prefetch %r version %s: resuming, %d of %d shards to load", dataset, version,
                         len(todo), manifest.num_shards)
            rows = [s.rows for s in manifest.shards]
            ranked = {index: rank for rank, index in enumerate(load_order(rows, order=order, seed=seed,
                                                                          world_size=world_size))}
            todo.sort(key=ranked.__getitem__)
            # Checked before begin, so that a dataset that does not fit leaves nothing behind.
            todo, left_out = job.check_capacity(manifest, todo, estimates, new=existing is None)
            if existing is None:
                manifest = store.begin(manifest)
                log.info("prefetch %r version %s: %d shards planned", dataset, version, manifest.num_shards)
            manifest = job.load(manifest, todo, estimates, lock)
            if report.failed:
                report.state = "loading"
                return job.finish(manifest, started)
            if left_out or not manifest.complete or report.written:
                job.guard.check_listing(manifest)  # the same version id must always mean the same bytes
                manifest = job.commit(manifest, lock)
            return job.finish(manifest, started)
    finally:
        prefetch_ended(tracked, sys.exc_info()[1])
        if owned:
            store.close()


class _Job:
    """The state of one run: where to write, what was written, the report."""

    def __init__(
        self, *, store: ShardCache, src: Source, report: PrefetchReport, transform: Transform | None,
        progress: ProgressCallback | None, workers: int, inflight: int, allow_partial: bool,
        fs_options: Mapping[str, Any],
    ) -> None:
        self.store = store
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
        report.shards = manifest.num_shards
        report.skipped = manifest.num_shards - len(todo) - report.uncached
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

    def finish(self, manifest: Manifest, started: float, *, noop: bool = False) -> PrefetchReport:
        r = self.report
        r.manifest = manifest
        r.shards = manifest.num_shards
        r.rows = manifest.num_rows
        r.state = manifest.state
        r.noop = noop
        r.uncached = sum(1 for s in manifest.shards if not s.cached) if manifest.complete else r.uncached
        if noop:
            r.skipped = manifest.num_shards
        r.seconds = time.monotonic() - started
        log.info("%s", r.summary())
        return r


def _columns(columns: Sequence[str] | None) -> list[str] | None:
    if columns is None:
        return None
    if isinstance(columns, str) or not all(isinstance(c, str) and c for c in columns) or not columns:
        raise ConfigError(f"columns={columns!r} must be a non-empty list of column names, e.g. ['image', 'label']")
    if len(set(columns)) != len(columns):
        raise ConfigError(f"columns={list(columns)!r} names a column twice")
    return list(columns)


def _open_cache(cache: ShardCache | str | None) -> tuple[ShardCache, bool]:
    if isinstance(cache, ShardCache):
        return cache, False
    if cache is None or isinstance(cache, str):
        return connect(cache), True
    raise ConfigError(f"cache={cache!r} must be a ShardCache, a redis:// URL, or None for $SHARDCACHE_REDIS_URL")


def _stored(store: ShardCache, dataset: str, version: str) -> Manifest | None:
    try:
        return store.manifest(dataset, version)
    except DatasetNotFound:
        return None


def _estimates(manifest: Manifest, src: Source) -> list[int]:
    """Payload sizes of a resumed version: written shards as they are, the others by rows."""
    written = [s for s in manifest.shards if s.cached and s.rows]
    if written:
        per_row = sum(s.nbytes for s in written) / sum(s.rows for s in written)
    else:
        per_row = sum(f.size for f in src.files) / max(manifest.num_rows, 1)
    return [s.nbytes if s.cached else int(s.rows * per_row) + 1 for s in manifest.shards]

