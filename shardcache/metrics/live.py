"""The loaders and prefetches of this process, read at scrape time.

Every CachedDataLoader registers an observer here (a weak reference: nothing is kept alive), and every
prefetch a :class:`PrefetchTracker` (the latest run of each dataset stays). Nothing is counted twice:
:class:`LiveCollector` reads their live stats when Prometheus scrapes (or a push is sent), so the values
are exactly what ``loader.stats()`` and the prefetch report say at that moment.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from .client import prometheus
from .names import LOADER, PREFETCH, Family

__all__ = ["LiveCollector", "Observed", "PrefetchTracker", "observe", "track_prefetch", "trackers"]


class Observed(Protocol):
    """What a loader's observer gives: its labels (dataset, version, rank) and its stats by source key."""

    def metric_labels(self) -> tuple[str, ...]: ...

    def metric_values(self) -> Mapping[str, float]: ...


_LOADERS: weakref.WeakSet[Any] = weakref.WeakSet()
_PREFETCHES: dict[str, PrefetchTracker] = {}
_LOCK = threading.Lock()


def observe(observer: Observed) -> None:
    """Export ``observer`` while it lives (the loader holds it)."""
    with _LOCK:
        _LOADERS.add(observer)


def loaders() -> list[Observed]:
    with _LOCK:
        return list(_LOADERS)


class PrefetchTracker:
    """A prefetch run as the metrics see it: the report (live), the latest progress, and its clock.

    Its ``progress`` wraps the user's progress callback; ``close`` marks the run over."""

    def __init__(self, report: Any, user_progress: Callable[[Any], None] | None) -> None:
        self.report = report
        self._user = user_progress
        self.started = time.monotonic()
        self.ended: float | None = None
        self.latest: Any = None
        self.error: str | None = None

    def progress(self, progress: Any) -> None:
        self.latest = progress
        if self._user is not None:
            self._user(progress)

    def close(self, *, error: BaseException | None = None) -> None:
        self.ended = time.monotonic()
        if error is not None:
            self.error = type(error).__name__
        report = self.report
        if dataclasses.is_dataclass(report) and not isinstance(report, type) and hasattr(report, "manifest"):
            self.report = dataclasses.replace(report, manifest=None)  # kept for scrapes: not its shard table

    @property
    def state(self) -> str:
        if self.ended is None:
            return "running"
        if self.error is not None or self.report.failed:
            return "failed"
        return str(self.report.state)

    def values(self) -> dict[str, Any]:
        r, p = self.report, self.latest
        shards = r.shards or (p.shards_total if p is not None else 0)
        done = r.written + r.skipped + len(r.failed)
        seconds = (self.ended if self.ended is not None else time.monotonic()) - self.started
        if self.ended is not None and r.seconds:
            seconds = r.seconds
        return {
            "shards": shards, "shards_done": done, "written": r.written, "skipped": r.skipped,
            "failed": len(r.failed), "uncached": r.uncached, "bytes": r.bytes,
            "bytes_total": max(p.bytes_total if p is not None else 0, r.bytes),
            "progress": done / shards if shards else (1.0 if self.ended is not None else 0.0),
            "rate": r.bytes / seconds if seconds > 0 else 0.0, "seconds": seconds, "state": self.state,
        }


def track_prefetch(report: Any, progress: Callable[[Any], None] | None) -> PrefetchTracker:
    """Track the run of ``report`` (the latest run of its dataset replaces the one before)."""
    tracker = PrefetchTracker(report, progress)
    with _LOCK:
        _PREFETCHES[report.dataset] = tracker
    return tracker


def trackers() -> list[PrefetchTracker]:
    with _LOCK:
        return list(_PREFETCHES.values())


def forget_prefetches() -> None:
    with _LOCK:
        _PREFETCHES.clear()


class LiveCollector:
    """A ``prometheus_client`` collector of this process's loaders and prefetches."""

    def describe(self) -> list[Any]:
        return []  # read at scrape time: nothing to check at registration

    def collect(self) -> Iterator[Any]:
        core = prometheus("core")
        rows: dict[tuple[str, ...], dict[str, float]] = {}
        for observer in loaders():
            try:
                labels, values = tuple(observer.metric_labels()), observer.metric_values()
            except ReferenceError:  # its loader is gone
                continue
            summed = rows.setdefault(labels, {})
            for key, value in values.items():
                if not isinstance(value, (int, float)):  # e.g. a mix's per-stream table
                    continue
                if key == "epoch":  # two loaders of one rank (train and a rebuilt one): the later epoch
                    summed[key] = max(summed.get(key, 0.0), float(value))
                elif key not in _RATIOS:
                    summed[key] = summed.get(key, 0.0) + float(value)
        for summed in rows.values():  # LoaderStats' own formulas, over the summed counters
            summed.update(_ratios(summed))
        for family in LOADER:
            yield _family(core, family, [(labels, v[family.source]) for labels, v in rows.items()
                                         if family.source in v])
        runs = [(t.report.dataset, t.report.version, t.values()) for t in trackers()]
        for family in PREFETCH:
            if family.source == "state":
                yield _family(core, family, [((d, v, vals["state"]), 1.0) for d, v, vals in runs])
            else:
                yield _family(core, family, [((d, v), float(vals[family.source])) for d, v, vals in runs])


_RATIOS = ("hit_ratio", "wait_fraction", "samples_per_second")


def _ratios(c: Mapping[str, float]) -> dict[str, float]:
    reads, elapsed = c.get("hits", 0.0) + c.get("misses", 0.0), c.get("elapsed_seconds", 0.0)
    return {
        "hit_ratio": c.get("hits", 0.0) / reads if reads else 0.0,
        "wait_fraction": c.get("wait_seconds", 0.0) / elapsed if elapsed > 0 else 0.0,
        "samples_per_second": c.get("samples", 0.0) / elapsed if elapsed > 0 else 0.0,
    }


def _family(core: Any, family: Family, samples: list[tuple[tuple[str, ...], float]]) -> Any:
    kind = core.CounterMetricFamily if family.kind == "counter" else core.GaugeMetricFamily
    out = kind(family.name, family.help, labels=list(family.labels))
    for labels, value in samples:
        out.add_metric(list(labels), value)
    return out
