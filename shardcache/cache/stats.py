"""Counters that every ShardCache keeps about itself."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields

__all__ = ["CacheStats"]


@dataclass
class CacheStats:
    """Hits, misses, bytes, corrupted shards, retries and time waited, thread-safe.

    >>> s = CacheStats()
    >>> s.add(hits=1, bytes_read=10)
    >>> s.snapshot()["hits"]
    1
    """

    hits: int = 0
    misses: int = 0
    corrupted: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    shards_written: int = 0
    retries: int = 0
    wait_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_lock"}

    def after_fork(self) -> None:
        """In a forked child, a new lock: the parent's may have been held by one of its threads."""
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            for f in fields(self):
                if f.name != "_lock":
                    setattr(self, f.name, f.default)
