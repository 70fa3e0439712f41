"""``prefetch`` and ``run_prefetch``: load a source into the cache, resumably.

A run lists the source and computes the version id. If that version is complete and
every shard is still in Redis, it returns at once. Otherwise it takes the dataset's
writer lock, plans the shards (or picks up the plan of an interrupted run), checks that
the manifest fits in one Redis value and the shards in memory, writes the ``loading``
manifest, loads the shards not yet cached while the next ones are read, and commits the
manifest as ``complete``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import pyarrow.fs as pafs

from ..cache.manifest import Manifest
from ..cache.store import ShardCache
from ..metrics.hooks import prefetch_ended, prefetch_started
from ..source.transform import Transform
from .job import plan_manifest
from .loading import Job, estimates, stored
from .lock import take_lock
from .manifest_size import check_manifest_size
from .order import load_order
from .parts import check_part, load_part, pin, refuse_if_in_parts
from .report import PrefetchReport, ProgressCallback
from .settings import open_cache, settings

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
    part: int | None = None,
    parts: int = 1,
    version: str | None = None,
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
        progress=progress, part=part, parts=parts, version=version, **options,
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
    part: int | None = None,
    parts: int = 1,
    version: str | None = None,
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
        part, parts: load only part ``part`` (0-based) of a version planned in ``parts`` parts by
            :func:`~shardcache.prefetcher.plan_prefetch`, and do not commit (see
            :func:`~shardcache.prefetcher.commit_prefetch`). Each part is one contiguous range of
            shards; a part's re-run loads only what it lacks; two runs of one part never interleave
            (the second waits ``wait`` seconds, then raises :class:`DatasetLocked`).
        version: the version id the source must still have (a part given its plan's version
            refuses with :class:`SourceError` if the listing changed since).
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
    :class:`ConfigError` (also, before anything is written, when the manifest would be too large for one
    Redis value: over ``proto-max-bulk-len`` or 256 MiB, naming the ``shard_size`` that fits).
    """
    started = time.monotonic()
    cfg = settings(
        dataset=dataset, format=format, shard_size=shard_size, compression=compression, transform=transform,
        columns=columns, workers=workers, allow_partial=allow_partial, order=order, progress=progress, seed=seed,
        world_size=world_size, label=label, wait=wait, max_inflight=max_inflight, filesystem=filesystem,
        fs_options=fs_options,
    )
    check_part(part, parts, allow_partial=allow_partial)
    store, owned = open_cache(cache)
    tracked = None  # the run as shardcache.metrics exports it
    try:
        src, listed = cfg.list_source(source)
        pin(listed, version, dataset=dataset)
        version = listed
        if part is not None:
            return load_part(store, src, version, cfg, part=part, parts=parts, started=started)
        report = PrefetchReport(dataset=dataset, version=version)
        tracked = prefetch_started(report, progress)
        job = Job(store=store, src=src, report=report, transform=transform, progress=tracked.progress,
                  workers=cfg.workers, inflight=cfg.inflight, allow_partial=allow_partial, fs_options=fs_options)
        existing = stored(store, dataset, version)
        if existing is not None and existing.complete and not job.todo(existing):
            return job.finish(existing, started, noop=True)
        with take_lock(store, dataset, version=version, wait=wait) as lock:
            existing = stored(store, dataset, version)  # another prefetcher may have finished meanwhile
            if existing is None:
                planned = plan_manifest(
                    src, dataset=dataset, version=version, keys=store.keys, columns=cfg.columns,
                    shard_size=cfg.shard_size, compression=cfg.compression, transform=transform, options=cfg.options,
                )
                manifest, sizes = planned.manifest, planned.estimates
                check_manifest_size(store, planned, shard_size=cfg.shard_size)  # before anything is written
                todo = list(range(manifest.num_shards))
            else:
                manifest = existing
                refuse_if_in_parts(store, manifest)  # its parts may be loading it now, under their own locks
                todo = job.todo(manifest)
                sizes = estimates(manifest, src)
                if manifest.complete and not todo:
                    return job.finish(manifest, started, noop=True)
                log.info("prefetch %r version %s: resuming, %d of %d shards to load", dataset, version,
                         len(todo), manifest.num_shards)
            rows = [s.rows for s in manifest.shards]
            ranked = {index: rank for rank, index in enumerate(load_order(rows, order=order, seed=seed,
                                                                          world_size=world_size))}
            todo.sort(key=ranked.__getitem__)
            # Checked before begin, so that a dataset that does not fit leaves nothing behind.
            todo, left_out = job.check_capacity(manifest, todo, sizes, new=existing is None)
            if existing is None:
                manifest = store.begin(manifest)
                log.info("prefetch %r version %s: %d shards planned", dataset, version, manifest.num_shards)
            manifest = job.load(manifest, todo, sizes, lock)
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
