"""Counters of the loader: cache hits and misses, read-throughs, bytes, and time spent waiting.

Workers count into a :class:`Counters` and send the deltas along with each batch; the main process
sums them into :class:`LoaderStats`, which ``CachedDataLoader.stats()`` returns.

>>> s = LoaderStats(hits=3, misses=1, wait_seconds=1.0, elapsed_seconds=4.0)
>>> s.hit_ratio, s.wait_fraction
(0.75, 0.25)
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

__all__ = ["Counters", "LoaderStats", "StreamStats", "stream_keys"]


@dataclass(frozen=True)
class StreamStats:
    """What a loader read and delivered of one stream of a mix (the fields of :class:`LoaderStats`)."""

    samples: int = 0
    hits: int = 0
    misses: int = 0
    corrupted: int = 0
    read_throughs: int = 0
    written_back: int = 0
    bytes_read: int = 0
    source_rows: int = 0


_STREAM_FIELDS = tuple(f.name for f in fields(StreamStats))


def stream_keys(streams: int) -> dict[str, float]:
    """The zeroed per-stream counters of a mix of ``streams`` streams (``"hits@1"``: stream 1's hits)."""
    return {f"{name}@{s}": 0 for s in range(streams) for name in _STREAM_FIELDS} if streams > 1 else {}


@dataclass(frozen=True)
class LoaderStats:
    """What a loader did, summed over its workers (a snapshot).

    Attributes:
        batches, samples: delivered to the training loop.
        hits: shards read from the cache and verified.
        misses: shards the cache could not serve (missing, never cached, corrupt or unreachable).
        corrupted: the part of ``misses`` that failed the checksum or could not be decoded.
        read_throughs: shards rebuilt from the source.
        written_back: rebuilt shards written back into the cache.
        bytes_read: payload bytes read from the cache.
        source_rows: rows read from the source by read-throughs.
        wait_seconds: time the training loop spent waiting for the next batch.
        worker_wait_seconds: time the workers spent waiting for shards (summed over workers).
        reused_buffers: batches that workers built in a shared-memory buffer the main process had given
            back (no fresh pages to fault in).
        received_in_place: shards whose largest column went from the socket straight into the batches
            (see ``inplace.py``).
        carried_shards: shards a persistent worker loaded for an epoch while the one before it ended
            (see ``carry.py``).
        elapsed_seconds: wall time from the start of each iteration to its last batch, summed.
        streams: a mix's counts per stream, by stream label (empty for one dataset).
    """

    batches: int = 0
    samples: int = 0
    hits: int = 0
    misses: int = 0
    corrupted: int = 0
    read_throughs: int = 0
    written_back: int = 0
    bytes_read: int = 0
    source_rows: int = 0
    wait_seconds: float = 0.0
    worker_wait_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    reused_buffers: int = 0
    received_in_place: int = 0
    carried_shards: int = 0
    streams: Mapping[str, StreamStats] = field(default_factory=dict, hash=False)

    @classmethod
    def from_totals(cls, totals: Mapping[str, float], labels: Sequence[str] = ()) -> LoaderStats:
        """The stats of a loader's summed counters; ``labels`` name a mix's streams."""
        streams = {
            label: StreamStats(**{n: totals.get(f"{n}@{s}", 0) for n in _STREAM_FIELDS})  # type: ignore[arg-type]
            for s, label in enumerate(labels)
        } if len(labels) > 1 else {}  # fmt: skip
        return cls(**{k: v for k, v in totals.items() if k in _FIELD_SET}, streams=streams)  # type: ignore[arg-type]

    @property
    def hit_ratio(self) -> float:
        """``hits / (hits + misses)``; 0.0 before any shard was read."""
        reads = self.hits + self.misses
        return self.hits / reads if reads else 0.0

    @property
    def wait_fraction(self) -> float:
        """The fraction of the iteration time the training loop waited for data."""
        return self.wait_seconds / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def plus(self, deltas: dict[str, float]) -> LoaderStats:
        """These stats with ``deltas`` (field name -> amount) added."""
        return replace(self, **{k: getattr(self, k) + v for k, v in deltas.items()})

    def as_counters(self) -> dict[str, float]:
        """The counting fields alone, to add to (see :meth:`plus`)."""
        return {name: getattr(self, name) for name in _FIELDS}

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = self.as_counters()
        out.update(hit_ratio=self.hit_ratio, wait_fraction=self.wait_fraction)
        if self.streams:
            out["streams"] = {label: asdict(s) for label, s in self.streams.items()}
        return out


_FIELDS = tuple(f.name for f in fields(LoaderStats) if f.name != "streams")
_FIELD_SET = frozenset(_FIELDS)


class Counters:
    """Thread-safe counters of one worker; :meth:`take` returns what was added since the last take."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, float] = {}

    def add(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                if name not in _FIELD_SET:
                    raise KeyError(f"unknown counter {name!r}")
                self._pending[name] = self._pending.get(name, 0) + delta

    def add_stream(self, stream: int, **deltas: float) -> None:
        """Count ``deltas`` for stream ``stream`` of a mix too (its fields of :class:`StreamStats`)."""
        with self._lock:
            for name, delta in deltas.items():
                if name in _STREAM_FIELDS:
                    key = f"{name}@{stream}"
                    self._pending[key] = self._pending.get(key, 0) + delta

    def merge(self, taken: Mapping[str, float]) -> None:
        """Add what another :class:`Counters`' :meth:`take` returned (per-stream counts included)."""
        with self._lock:
            for key, delta in taken.items():
                self._pending[key] = self._pending.get(key, 0) + delta

    def take(self) -> dict[str, float]:
        with self._lock:
            out, self._pending = self._pending, {}
        return out
