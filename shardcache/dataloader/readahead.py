"""Read-ahead: load the shards a worker needs next while it builds batches from the current ones.

A worker knows its whole batch sequence, hence every shard it needs, the position of the first batch
that uses it and of the last. :class:`ReadAhead` loads shards in first-use order on a few named
daemon threads and keeps each until the consumer moves past its last use. The bytes held (loading
or loaded, not yet released) stay under ``budget``, except for shards the consumer already needs:
those are always admitted, so a budget smaller than the working set slows reading but never
deadlocks. A load error stops loading and is raised by ``get`` of that shard (or of any shard
that was not loaded before it).

>>> ahead = ReadAhead(load, schedule, budget=256 << 20)   # doctest: +SKIP
>>> for pos, batch in enumerate(batches):                  # doctest: +SKIP
...     ahead.advance(pos)
...     parts = [ahead.get(shard) for shard in batch.shards]
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["ReadAhead", "Need"]

T = TypeVar("T")


@dataclass(frozen=True)
class Need:
    """Shard ``shard`` is used from batch position ``first`` to ``last``; about ``nbytes`` when loaded."""

    shard: int
    first: int
    last: int
    nbytes: int


class ReadAhead(Generic[T]):
    """Loads ``schedule`` (in first-use order) with ``load`` on ``threads`` threads; see the module doc."""

    def __init__(
        self,
        load: Callable[[int], T],
        schedule: Sequence[Need],
        *,
        budget: int,
        threads: int = 2,
        name: str = "shardcache-readahead",
    ) -> None:
        self._load = load
        self._schedule = list(schedule)
        self._last = {need.shard: need.last for need in self._schedule}
        self._budget = budget
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._next = 0  # index into the schedule of the next shard to load
        self._pos = 0  # the consumer's batch position
        self._held = 0  # bytes admitted and not yet released
        self._ready: dict[int, T] = {}
        self._sizes: dict[int, int] = {}
        self._loading: set[int] = set()
        self._failed: dict[int, BaseException] = {}
        self._error: BaseException | None = None
        self.peak_bytes = 0
        count = max(1, min(threads, len(self._schedule)))
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def _admissible(self, need: Need) -> bool:
        return self._held == 0 or self._held + need.nbytes <= self._budget or need.first <= self._pos

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop.is_set() and self._next < len(self._schedule):
                    if self._admissible(self._schedule[self._next]):
                        break
                    self._cond.wait()
                if self._stop.is_set() or self._next >= len(self._schedule):
                    return
                need = self._schedule[self._next]
                self._next += 1
                self._held += need.nbytes
                self._sizes[need.shard] = need.nbytes
                self.peak_bytes = max(self.peak_bytes, self._held)
                self._loading.add(need.shard)
            try:
                value = self._load(need.shard)
            except BaseException as exc:  # re-raised by get() of this shard, or of one never loaded
                with self._cond:
                    self._loading.discard(need.shard)
                    self._failed[need.shard] = exc
                    if self._error is None:
                        self._error = exc
                    self._stop.set()
                    self._cond.notify_all()
                return
            with self._cond:
                self._loading.discard(need.shard)
                if need.last >= self._pos:  # the consumer may have moved on (closed early)
                    self._ready[need.shard] = value
                else:
                    self._release(need.shard)
                self._cond.notify_all()

    def _release(self, shard: int) -> None:
        self._held -= self._sizes.pop(shard, 0)
        self._ready.pop(shard, None)

    def advance(self, pos: int) -> None:
        """The consumer is at batch position ``pos``: drop shards whose last use is before it."""
        with self._cond:
            self._pos = pos
            for shard in [s for s in self._ready if self._last[s] < pos]:
                self._release(shard)
            self._cond.notify_all()

    @property
    def dispatched(self) -> bool:
        """Whether every shard of the schedule has been loaded or is loading (the threads are done)."""
        with self._cond:
            return self._next >= len(self._schedule) or self._stop.is_set()

    def get(self, shard: int) -> T:
        """The loaded shard, waiting for it. Raises its load error, or the first load error when
        loading stopped before reaching it."""
        with self._cond:
            while shard not in self._ready and shard not in self._failed and (
                shard in self._loading or not self._stop.is_set()
            ):
                self._cond.wait()
            if shard in self._ready:
                return self._ready[shard]
            error = self._failed.get(shard, self._error)
            if error is not None:
                raise error
            raise RuntimeError(f"read-ahead was closed before shard {shard} was loaded")

    def close(self) -> None:
        """Stop loading and drop every shard; loads already running finish in the background."""
        with self._cond:
            self._stop.set()
            self._ready.clear()
            self._cond.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=0.05)

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
