"""The work behind each Kubeflow component, as plain functions that tests and scripts can call.

A component body (see ``ops.py``) only connects, calls one of these, and hands the
result to :func:`publish`, which writes the KFP ``Metrics`` and ``Markdown`` outputs.

* :func:`dataset_status`: the manifest's state and whether every shard key is present
  (one ``EXISTS`` per key; nothing is read).
* :func:`verify_dataset`: every cached shard is read and its xxh3-64 checksum checked.
* :func:`evict_dataset`: removal that respects leases and writers; a dataset a reader still
  holds, or a version a prefetch is writing, is reported ``in_use`` and left alone.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..cache import Manifest, ShardCache
from ..errors import (
    CacheUnavailable,
    ConfigError,
    DatasetInUse,
    DatasetLocked,
    DatasetNotFound,
    ShardCorrupted,
    ShardMissing,
)
from ..units import format_bytes, parse_duration

__all__ = [
    "DatasetStatus",
    "Eviction",
    "PrefetchResult",
    "dataset_status",
    "evict_dataset",
    "prefetch",
    "publish",
    "verify_dataset",
]

log = logging.getLogger(__name__)


class _Metrics(Protocol):
    def log_metric(self, metric: str, value: float) -> None: ...


class _Result(Protocol):
    def metrics(self) -> Mapping[str, float]: ...

    def markdown(self) -> str: ...


class _Artifact(Protocol):
    @property
    def path(self) -> str: ...


@dataclass(frozen=True)
class PrefetchResult:
    """What ``prefetch_op`` reports: the version and the prefetch report's figures."""

    dataset: str
    version: str
    report: Mapping[str, Any]
    cache: str  # the redacted address

    def metrics(self) -> dict[str, float]:
        r = self.report
        return {
            "shards": r["shards"],
            "rows": r["rows"],
            "bytes": r["bytes"],
            "mb_per_s": r["mb_per_s"],
            "seconds": r["seconds"],
            "written": r["written"],
            "skipped": r["skipped"],
            "uncached": r["uncached"],
            "failed": len(r["failed"]),
        }

    def markdown(self) -> str:
        r = self.report
        state = r["state"] + (" (already cached: nothing to do)" if r.get("noop") else "")
        lines = [
            f"# Prefetch of `{_code(self.dataset)}`"
            + (f" (part {r['part']} of {r['parts']})" if r.get("part") is not None else ""),
            "",
            f"Version `{self.version}` is **{state}** in `{_code(self.cache)}`.",
            "",
            "| shards | rows | size | seconds | MB/s | written | skipped (cached) | left uncached | failed |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {r['shards']} | {r['rows']} | {format_bytes(r['bytes'])} | {r['seconds']} | {r['mb_per_s']} "
            f"| {r['written']} | {r['skipped']} | {r['uncached']} | {len(r['failed'])} |",
        ]
        if r["failed"]:
            lines += ["", "## Failed shards", "", "| shard | source | reason |", "|---:|---|---|"]
            lines += [f"| {f['shard']} | {_cell(f['source'])} | {_cell(f['reason'])} |" for f in r["failed"]]
        if r["uncached"]:
            lines += ["", f"{r['uncached']} shard(s) were left uncached (allow_partial): loaders read them "
                      "through from the source."]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class DatasetStatus:
    """Whether a dataset version is complete and intact.

    ``missing`` are shards recorded as cached whose keys are gone (evicted, lost with
    a node); ``uncached`` were never written (``allow_partial``, or still loading);
    ``corrupted`` failed their checksum and ``unreachable`` could not be read (both
    only known after :func:`verify_dataset`).
    """

    dataset: str
    version: str
    state: str  # "complete", "loading" or "absent"
    shards: int = 0
    rows: int = 0
    nbytes: int = 0
    missing: tuple[int, ...] = ()
    uncached: tuple[int, ...] = ()
    corrupted: tuple[int, ...] = ()
    unreachable: tuple[int, ...] = ()
    verified: bool = False

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    @property
    def cached(self) -> int:
        return self.shards - len(self.uncached) - len(self.missing)

    @property
    def intact(self) -> bool:
        """Complete, every shard present and, when verified, every checksum right."""
        return self.complete and not (self.missing or self.uncached or self.corrupted or self.unreachable)

    def check(self) -> None:
        """Raise unless :attr:`intact`: DatasetNotFound, ShardMissing, ShardCorrupted or CacheUnavailable."""
        name, version = self.dataset, self.version
        if self.state == "absent":
            raise DatasetNotFound(
                f"dataset {name!r}{f' version {version!r}' if version else ''} is not in the cache; "
                "run the prefetch step first",
                dataset=name, version=version or None,
            )
        if self.corrupted:
            raise ShardCorrupted(
                f"{len(self.corrupted)} shard(s) of {name!r} version {version} failed their checksum "
                f"({_indices(self.corrupted)}); run the prefetch again to rewrite them",
                dataset=name, version=version, shard=self.corrupted[0],
            )
        if self.unreachable:
            raise CacheUnavailable(
                f"{len(self.unreachable)} shard(s) of {name!r} version {version} could not be read "
                f"({_indices(self.unreachable)}); check the cache's nodes (`shardcache status`)"
            )
        gone = sorted(self.missing + self.uncached)
        if gone or not self.complete:
            raise ShardMissing(
                f"{name!r} version {version} is {self.state}, with {len(gone)} shard(s) not in the cache "
                f"({_indices(tuple(gone)) or 'none yet'}); run the prefetch again to load them",
                dataset=name, version=version, shard=gone[0] if gone else 0,
            )

    def metrics(self) -> dict[str, float]:
        return {
            "complete": float(self.complete),
            "intact": float(self.intact),
            "shards": self.shards,
            "cached": self.cached,
            "missing": len(self.missing),
            "uncached": len(self.uncached),
            "corrupted": len(self.corrupted),
            "unreachable": len(self.unreachable),
        }

    def markdown(self) -> str:
        check = "checksums verified" if self.verified else "keys checked, contents not read"
        if self.state == "absent":
            verdict = "is **not in the cache**"
        else:
            verdict = f"is **{self.state}** and **{'intact' if self.intact else 'not intact'}** ({check})"
        lines = [
            f"# `{_code(self.dataset)}` version `{self.version or '-'}`",
            "",
            f"The dataset {verdict}.",
        ]
        if self.state != "absent":
            lines += [
                "",
                "| shards | rows | size | cached | missing | never cached | corrupted | unreachable |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|",
                f"| {self.shards} | {self.rows} | {format_bytes(self.nbytes)} | {self.cached} | {len(self.missing)} "
                f"| {len(self.uncached)} | {len(self.corrupted)} | {len(self.unreachable)} |",
            ]
        for title, shards in (("Missing (evicted or lost)", self.missing), ("Corrupted", self.corrupted),
                              ("Unreachable", self.unreachable)):
            if shards:
                lines += ["", f"{title}: {_indices(shards)}"]
        if not self.intact and self.state != "absent":
            lines += ["", "Loaders read what is missing through from the source; run the prefetch again to "
                      "re-cache it (only the missing shards are loaded)."]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Eviction:
    """What ``evict_op`` did: ``removed``, ``in_use`` (a live lease, or a prefetch writing a version to
    remove: ``writer`` says which), ``not_found`` or ``nothing``."""

    dataset: str
    status: str
    removed: tuple[str, ...] = ()
    leases: tuple[str, ...] = ()
    writer: str = ""  # who writes a version to remove, and what to do (the refusal's message)

    def check(self) -> None:
        """Raise DatasetInUse when a live lease kept the data, DatasetLocked when a writer did."""
        if self.status == "in_use" and self.writer:
            raise DatasetLocked(f"dataset {self.dataset!r} was not removed: {self.writer}", dataset=self.dataset)
        if self.status == "in_use":
            raise DatasetInUse(
                f"dataset {self.dataset!r} was not removed: {len(self.leases)} reader(s) hold a live lease "
                f"({', '.join(self.leases[:3])}); run again once they finish or their leases expire",
                dataset=self.dataset, leases=list(self.leases),
            )

    def metrics(self) -> dict[str, float]:
        return {"removed": len(self.removed), "in_use": float(self.status == "in_use")}

    def markdown(self) -> str:
        head = f"# Eviction of `{_code(self.dataset)}`\n\n"
        if self.status == "removed":
            return head + f"Removed version(s): {', '.join(f'`{v}`' for v in self.removed)}.\n"
        if self.status == "in_use" and self.writer:
            return head + f"Not removed: {_cell(self.writer)}. Run the eviction again once it is done.\n"
        if self.status == "in_use":
            holders = ", ".join(f"`{_code(h)}`" for h in self.leases[:10])
            return head + (
                f"Not removed: {len(self.leases)} reader(s) hold a live lease ({holders}). "
                "Run the eviction again once they finish or their leases expire.\n"
            )
        if self.status == "not_found":
            return head + "Nothing to remove: the dataset (or version) is not in the cache.\n"
        return head + "Nothing to remove: the dataset has no old versions.\n"


def prefetch(
    cache: ShardCache,
    *,
    source: str,
    dataset: str,
    shard_size: str = "4MiB",
    compression: str = "",
    allow_partial: bool = False,
    wait: str | float = "1h",
    part: int | None = None,
    parts: int = 1,
    version: str = "",
) -> PrefetchResult:
    """Run the prefetch; if any shard failed, log the report and raise PrefetchFailed.

    ``allow_partial`` covers a cache too small for the data (shards left uncached, read
    through by loaders), not shards whose source could not be read: those fail the step,
    and a re-run resumes with only them. ``wait`` bounds the wait for another prefetcher
    of the same dataset (two pipeline runs started together): the later one then finds
    the version cached and loads nothing. With ``part`` and ``parts``, one part of a planned
    ``version`` is loaded (see :mod:`.parallel`), not committed.
    """
    from ..prefetcher import run_prefetch

    report = run_prefetch(
        source, dataset=dataset, cache=cache, shard_size=shard_size, compression=compression or None,
        allow_partial=allow_partial, wait=parse_duration(wait, name="wait"), part=part, parts=parts,
        version=version or None,
    )
    if report.failed:
        log.error("%s", report.summary())
        raise report.failure(rerun="run the step again")
    log.info("%s", report.summary())
    return PrefetchResult(dataset=dataset, version=report.version, report=report.to_dict(),
                          cache=cache.url.redacted())


def dataset_status(cache: ShardCache, *, dataset: str, version: str = "") -> DatasetStatus:
    """The state of ``version`` (default: the newest) and which shard keys are gone."""
    manifest = _manifest(cache, dataset, version)
    if manifest is None:
        return DatasetStatus(dataset=dataset, version=version, state="absent")
    return _status(manifest, missing=tuple(cache.missing_shards(manifest)))


def verify_dataset(cache: ShardCache, *, dataset: str, version: str = "") -> DatasetStatus:
    """Read every cached shard of ``version`` and check its checksum."""
    manifest = _manifest(cache, dataset, version)
    if manifest is None:
        return DatasetStatus(dataset=dataset, version=version, state="absent", verified=True)
    missing: list[int] = []
    corrupted: list[int] = []
    unreachable: list[int] = []
    indices = [s.index for s in manifest.shards if s.cached]
    for index, payload in cache.get_shards(manifest, indices, errors="return"):
        if isinstance(payload, ShardCorrupted):
            corrupted.append(index)
        elif isinstance(payload, CacheUnavailable):
            unreachable.append(index)
        elif isinstance(payload, ShardMissing):  # the key is gone: evicted or lost with a node
            missing.append(index)
        del payload  # verified; keep no shard alive while reading the next
    status = _status(manifest, missing=tuple(missing), verified=True)
    return dataclasses.replace(status, corrupted=tuple(corrupted), unreachable=tuple(unreachable))


def evict_dataset(cache: ShardCache, *, dataset: str, version: str = "", all_old: bool = False) -> Eviction:
    """Remove ``version`` (default: every version) unless a reader holds a live lease on it or a prefetch
    is writing it (both: status ``in_use``)."""
    if version and all_old:
        raise ConfigError(f"version={version!r} and all_old=True: pass one of them")
    try:
        removed = cache.delete(dataset, version or None, all_old=all_old)
    except DatasetInUse as exc:
        log.warning("dataset %r is in use by %d reader(s); not removed", dataset, len(exc.leases))
        return Eviction(dataset=dataset, status="in_use", leases=tuple(exc.leases))
    except DatasetLocked as exc:  # a prefetch (or a part of one) is writing a version to remove
        log.warning("dataset %r: %s; not removed", dataset, exc)
        return Eviction(dataset=dataset, status="in_use", writer=str(exc))
    except DatasetNotFound:
        return Eviction(dataset=dataset, status="not_found")
    return Eviction(dataset=dataset, status="removed" if removed else "nothing", removed=tuple(removed))


def publish(result: _Result, *, metrics: _Metrics | None = None,
            report: _Artifact | None = None) -> None:
    """Write ``result`` to a KFP ``Metrics`` artifact and a ``Markdown`` artifact."""
    if metrics is not None:
        for name, value in result.metrics().items():
            metrics.log_metric(name, float(value))
    if report is not None:
        with open(report.path, "w", encoding="utf-8") as f:
            f.write(result.markdown())


def _manifest(cache: ShardCache, dataset: str, version: str) -> Manifest | None:
    try:
        return cache.manifest(dataset, version or None)
    except DatasetNotFound:
        return None


def _status(manifest: Manifest, *, missing: tuple[int, ...], verified: bool = False) -> DatasetStatus:
    return DatasetStatus(
        dataset=manifest.name,
        version=manifest.version,
        state=manifest.state,
        shards=manifest.num_shards,
        rows=manifest.num_rows,
        nbytes=manifest.nbytes,
        missing=missing,
        uncached=tuple(s.index for s in manifest.shards if not s.cached),
        verified=verified,
    )


def _indices(values: tuple[int, ...], limit: int = 50) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _cell(text: object) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _code(text: object) -> str:
    """Text safe inside inline code."""
    return str(text).replace("`", "'").replace("\n", " ")
