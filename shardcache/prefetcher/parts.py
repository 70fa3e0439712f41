"""Parallel prefetch: one version planned once, loaded in parts by separate processes or pods, committed once.

1. :func:`plan_prefetch` takes the dataset's writer lock briefly, plans the whole version (the
   same shards a single run would cut), checks that all of it fits, writes the manifest as
   ``loading`` and records the number of parts.
2. Each part (``run_prefetch(..., part=i, parts=N)``, here :func:`load_part`) loads the shards
   of :func:`part_range` ``(i, N)``: contiguous, disjoint, the same in every process since it
   depends only on the manifest's shard count. A part holds its own lock
   (``{d=D}:lock:V:part:i``), so two runs of one part never interleave; a re-run loads only the
   shards its range lacks; it never commits.
3. :func:`commit_prefetch` takes the writer lock, refuses while any shard is missing (naming the
   parts to re-run), checks the source against the listing once more and commits: one Lua
   script swaps the manifest to ``complete``, so a version is committed exactly once and a
   second commit finds it complete and does nothing.

Every step lists the source and recomputes the version id: given the plan's ``version``, a part
or commit whose listing no longer matches refuses (``SourceError``) instead of loading another.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from ..cache.keys import MAX_PARTS, validate_version
from ..cache.manifest import Manifest
from ..cache.store import ShardCache
from ..errors import ConfigError, DatasetNotFound, PrefetchFailed, SourceError
from ..metrics.hooks import prefetch_ended, prefetch_started
from ..source.transform import Transform
from .capacity import fit
from .guard import ListingGuard
from .job import Source, plan_manifest
from .loading import Job, estimates, stored
from .lock import take_lock, take_part_lock
from .manifest_size import check_manifest_size
from .order import load_order
from .report import PrefetchReport, ProgressCallback
from .settings import Settings, open_cache, settings

__all__ = ["MAX_PARTS", "PrefetchPlan", "check_part", "commit_prefetch", "load_part", "part_range", "pin",
           "plan_prefetch", "refuse_if_in_parts"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrefetchPlan:
    """A planned version and its parts; ``parts_list`` feeds ``dsl.ParallelFor``."""

    dataset: str
    version: str
    parts: int
    shards: int
    rows: int
    state: str  # "loading", or "complete" when the version was committed already
    missing: int  # shards not in the cache yet

    @property
    def parts_list(self) -> list[int]:
        return list(range(self.parts))

    def shards_of(self, part: int) -> range:
        return part_range(self.shards, part, self.parts)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "version": self.version, "parts": self.parts, "shards": self.shards,
                "rows": self.rows, "state": self.state, "missing": self.missing,
                "ranges": [[r.start, r.stop] for r in map(self.shards_of, self.parts_list)]}


def part_range(num_shards: int, part: int, parts: int) -> range:
    """The shards of part ``part`` of ``parts``: contiguous, disjoint, every shard in exactly one part.

    Shards are cut to about ``shard_size`` bytes each, so equal counts are equal bytes.

    >>> [list(part_range(7, i, 3)) for i in range(3)]
    [[0, 1], [2, 3], [4, 5, 6]]
    """
    return range(num_shards * part // parts, num_shards * (part + 1) // parts)


def _check_parts(parts: object) -> int:
    if isinstance(parts, bool) or not isinstance(parts, int) or not 1 <= parts <= MAX_PARTS:
        raise ConfigError(f"parts={parts!r} must be an integer from 1 to {MAX_PARTS} (processes or pods)")
    return parts


def check_part(part: object, parts: object, *, allow_partial: bool) -> None:
    """``part``/``parts`` of ``run_prefetch``: None and 1 (a whole run), or 0 <= part < parts."""
    n = _check_parts(parts)
    if part is None:
        if n != 1:
            raise ConfigError(f"parts={n} needs part= (0 to {n - 1}): which part this process loads")
        return
    if isinstance(part, bool) or not isinstance(part, int) or not 0 <= part < n:
        raise ConfigError(f"part={part!r} must be an integer from 0 to {n - 1} (parts={n})")
    if allow_partial:
        raise ConfigError("allow_partial does not apply to a part: a parallel prefetch caches the whole version "
                          "(its capacity is checked at plan time); run one prefetch with allow_partial instead")


def pin(listed: str, version: str | None, *, dataset: str) -> None:
    """Raise SourceError if the source, as listed now, is not the ``version`` planned."""
    if version is None:
        return
    validate_version(version)
    if listed != version:
        raise SourceError(
            f"the source of {dataset!r} is now version {listed}, not the planned {version}: files were added, "
            "removed or rewritten since the plan, or the options differ; plan again (a new version) and run "
            "its parts", dataset=dataset, version=version,
        )


def plan_prefetch(
    source: str | os.PathLike[str],
    *,
    dataset: str,
    parts: int,
    cache: ShardCache | str | None = None,
    format: str | None = None,
    shard_size: int | str = "4MiB",
    compression: str | None = None,
    transform: Transform | None = None,
    columns: Sequence[str] | None = None,
    label: bool = False,
    wait: float = 0.0,
    filesystem: pafs.FileSystem | None = None,
    **fs_options: Any,
) -> PrefetchPlan:
    """Plan ``source`` as a version of ``dataset`` loaded in ``parts`` parts; begin it as ``loading``.

    Takes the arguments of :func:`~shardcache.prefetcher.run_prefetch` that shape the shards (and
    so the version id); the parts and the commit must be given the same. The capacity check covers
    the whole version (:class:`CapacityExceeded` before anything is written; :class:`ConfigError` for a
    manifest too large for one Redis value, naming the ``shard_size`` that fits). Planning a version
    already planned returns its plan (with the same ``parts``; another number raises ConfigError),
    and a complete one returns state ``complete``: its parts then only restore evicted shards.
    """
    n = _check_parts(parts)
    cfg = _settings(dataset=dataset, format=format, shard_size=shard_size, compression=compression,
                    transform=transform, columns=columns, label=label, wait=wait, filesystem=filesystem,
                    fs_options=fs_options)
    store, owned = open_cache(cache)
    try:
        src, version = cfg.list_source(source)
        with take_lock(store, dataset, version=version, wait=cfg.wait):
            manifest = stored(store, dataset, version)
            if manifest is None:
                planned = plan_manifest(
                    src, dataset=dataset, version=version, keys=store.keys, columns=cfg.columns,
                    shard_size=cfg.shard_size, compression=cfg.compression, transform=transform, options=cfg.options,
                )
                check_manifest_size(store, planned, shard_size=cfg.shard_size)
                todo = list(range(planned.manifest.num_shards))
                fit(store, planned.manifest, todo, planned.estimates, new=True, allow_partial=False)
                manifest = store.begin(planned.manifest)
                log.info("prefetch %r version %s: %d shards planned in %d parts", dataset, version,
                         manifest.num_shards, n)
            else:
                todo = _missing(store, manifest, range(manifest.num_shards))
                fit(store, manifest, todo, estimates(manifest, src), new=False, allow_partial=False)
            if manifest.state == "loading":
                recorded = store.record_parts(dataset, version, n)
                if recorded != n:
                    raise ConfigError(
                        f"version {version} of {dataset!r} is planned in {recorded} parts already; pass "
                        f"parts={recorded} (its parts may be running), or remove it (`shardcache rm {dataset} "
                        f"--version {version}`) to plan again"
                    )
        return PrefetchPlan(dataset=dataset, version=version, parts=n, shards=manifest.num_shards,
                            rows=manifest.num_rows, state=manifest.state, missing=len(todo))
    finally:
        if owned:
            store.close()


def refuse_if_in_parts(store: ShardCache, manifest: Manifest) -> None:
    """ConfigError when a ``loading`` version was planned in parts: a whole run would write the shards its
    parts may be writing now (they hold part locks, not the writer lock); finish it in parts instead."""
    parts = None if manifest.complete else store.recorded_parts(manifest.name, manifest.version)
    if parts is None:
        return
    raise ConfigError(
        f"version {manifest.version} of {manifest.name!r} is being loaded in {parts} parts: run the parts that "
        f"are missing (--part I --parts {parts} --version {manifest.version}) and then --commit, or "
        f"--processes {parts}, which resumes every part and commits"
    )


def load_part(
    store: ShardCache, src: Source, version: str, cfg: Settings, *, part: int, parts: int, started: float
) -> PrefetchReport:
    """Load the shards of part ``part`` of a planned version that are not cached; never commits."""
    dataset = cfg.dataset
    manifest = _planned(store, dataset, version, parts)
    scope = part_range(manifest.num_shards, part, parts)
    report = PrefetchReport(dataset=dataset, version=version, part=part, parts=parts)
    tracked = prefetch_started(report, cfg.progress)  # a part's progress, as shardcache.metrics exports it
    try:
        return _load_part(store, src, version, cfg, report, tracked.progress, scope=scope, started=started)
    finally:
        prefetch_ended(tracked, sys.exc_info()[1])


def _load_part(
    store: ShardCache, src: Source, version: str, cfg: Settings, report: PrefetchReport,
    progress: ProgressCallback, *, scope: range, started: float,
) -> PrefetchReport:
    dataset, part, parts = cfg.dataset, report.part, report.parts
    assert part is not None
    job = Job(store=store, src=src, report=report, transform=cfg.transform, progress=progress,
              workers=cfg.workers, inflight=cfg.inflight, allow_partial=False, fs_options=cfg.fs_options, scope=scope)
    with take_part_lock(store, dataset, version, part, wait=cfg.wait) as lock:
        manifest = _planned(store, dataset, version, parts)  # re-read: an earlier run of this part may have ended
        todo = _missing(store, manifest, scope)
        if not todo:
            return job.finish(manifest, started, noop=True)
        rows = [s.rows for s in manifest.shards]
        ranked = {i: r for r, i in enumerate(load_order(rows, order=cfg.order, seed=cfg.seed,
                                                         world_size=cfg.world_size))}
        todo.sort(key=ranked.__getitem__)
        sizes = estimates(manifest, src)
        todo, _ = job.check_capacity(manifest, todo, sizes, new=False)  # what this part has left
        log.info("prefetch %r version %s part %d of %d: %d of %d shards to load", dataset, version, part, parts,
                 len(todo), len(scope))
        return job.finish(job.load(manifest, todo, sizes, lock), started)


def commit_prefetch(
    source: str | os.PathLike[str],
    *,
    dataset: str,
    cache: ShardCache | str | None = None,
    version: str | None = None,
    format: str | None = None,
    shard_size: int | str = "4MiB",
    compression: str | None = None,
    transform: Transform | None = None,
    columns: Sequence[str] | None = None,
    label: bool = False,
    wait: float = 0.0,
    filesystem: pafs.FileSystem | None = None,
    **fs_options: Any,
) -> PrefetchReport:
    """Commit a version loaded in parts once every shard is in; return the report (state ``complete``).

    Same arguments as :func:`plan_prefetch` (the source is listed again: a file changed since the
    listing fails with :class:`SourceError`, nothing committed). Raises :class:`PrefetchFailed`
    naming the parts and shards not loaded yet (the version stays ``loading``); a version already
    complete is a no-op (``report.noop``), so a commit runs exactly once however often it is called.
    """
    started = time.monotonic()
    cfg = _settings(dataset=dataset, format=format, shard_size=shard_size, compression=compression,
                    transform=transform, columns=columns, label=label, wait=wait, filesystem=filesystem,
                    fs_options=fs_options)
    store, owned = open_cache(cache)
    try:
        src, listed = cfg.list_source(source)
        pin(listed, version, dataset=dataset)
        report = PrefetchReport(dataset=dataset, version=listed)
        with take_lock(store, dataset, version=listed, wait=cfg.wait) as lock:
            manifest = stored(store, dataset, listed)
            if manifest is None:
                raise _not_planned(dataset, listed)
            noop = manifest.complete
            if not noop:
                parts = store.recorded_parts(dataset, listed) or 1
                absent = _missing(store, manifest, range(manifest.num_shards))
                if absent:
                    report.shards, report.rows = manifest.num_shards, manifest.num_rows
                    raise PrefetchFailed(_missing_message(manifest, absent, parts), report=report)
                ListingGuard(src).check_listing(manifest)  # the same version id must always mean the same bytes
                manifest = store.commit(manifest, lock=lock)
                log.info("prefetch %r version %s: committed (%d shards)", dataset, listed, manifest.num_shards)
        report.manifest, report.state, report.noop = manifest, manifest.state, noop
        report.shards, report.rows, report.skipped = manifest.num_shards, manifest.num_rows, manifest.num_shards
        report.seconds = time.monotonic() - started
        return report
    finally:
        if owned:
            store.close()


def _settings(**kwargs: Any) -> Settings:
    return settings(workers=None, allow_partial=False, order="source", progress=None, seed=0, world_size=1,
                    max_inflight=None, **kwargs)


def _planned(store: ShardCache, dataset: str, version: str, parts: int) -> Manifest:
    manifest = stored(store, dataset, version)
    if manifest is None:
        raise _not_planned(dataset, version)
    if manifest.state == "loading":
        recorded = store.recorded_parts(dataset, version)
        if recorded is None:
            raise ConfigError(
                f"version {version} of {dataset!r} was begun by a single prefetch, not planned in parts; plan it "
                f"with plan_prefetch(..., parts={parts}) (`shardcache prefetch ... --plan-only --parts {parts}`), "
                "or resume it with one prefetch"
            )
        if recorded != parts:
            raise ConfigError(f"version {version} of {dataset!r} is planned in {recorded} parts, not {parts}; "
                              f"pass parts={recorded}")
    return manifest


def _not_planned(dataset: str, version: str) -> DatasetNotFound:
    return DatasetNotFound(
        f"version {version} of {dataset!r} is not planned: run plan_prefetch (`shardcache prefetch SOURCE "
        "--dataset NAME --plan-only --parts N`, or plan_op) first, with the same source and options",
        dataset=dataset, version=version,
    )


def _missing(store: ShardCache, manifest: Manifest, scope: Sequence[int]) -> list[int]:
    """The shards of ``scope`` not in Redis: never written, or gone or truncated since.

    Of a committed version, only the shards it records as cached (evicted or truncated since): one
    it leaves uncached (allow_partial) would be written where no manifest names it, memory that
    `ls` never shows and loaders never read; a whole prefetch caches those and commits them.
    """
    absent = set(store.missing_shards(manifest, check_sizes=True))
    if manifest.complete:
        return [i for i in scope if i in absent]
    return [i for i in scope if not manifest.shards[i].cached or i in absent]


def _missing_message(manifest: Manifest, absent: Sequence[int], parts: int) -> str:
    by_part: dict[int, list[int]] = {}
    for i in absent:
        part = next(p for p in range(parts) if i in part_range(manifest.num_shards, p, parts))
        by_part.setdefault(part, []).append(i)
    shown = "; ".join(f"part {p}: shard{'s' if len(s) > 1 else ''} {_short(s)}" for p, s in sorted(by_part.items()))
    first = min(by_part)
    return (
        f"version {manifest.version} of {manifest.name!r} is not committed: {len(absent)} of {manifest.num_shards} "
        f"shards are not loaded ({shown}); run {'that part' if len(by_part) == 1 else 'those parts'} again (e.g. "
        f"--part {first} --parts {parts}), then commit; the version stays 'loading' and the loaded shards are kept"
    )


def _short(indices: Sequence[int], limit: int = 20) -> str:
    shown = ", ".join(map(str, indices[:limit]))
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")
