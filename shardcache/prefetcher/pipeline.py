"""Overlapping source reads with Redis writes, with a hard bound on bytes in flight.

The caller's thread reads and encodes shards; a small pool of named writer threads
puts them into Redis. :class:`ByteBudget` blocks the reader while more than
``max_inflight`` bytes wait to be written, so memory stays flat whatever the
dataset's size. Finished writes (results or exceptions) are handed back to the
caller's thread through :meth:`WritePipeline.drain`, where progress is reported and
errors are raised; a failed write sets the stop event, so a blocked reader wakes up.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

__all__ = ["ByteBudget", "Done", "WritePipeline"]


class ByteBudget:
    """A counting limit on bytes; ``acquire`` blocks while the limit would be passed.

    A single item larger than the whole budget is still let through when nothing
    else is in flight, so an oversized shard cannot deadlock the pipeline.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ConfigError(f"max_inflight={limit!r} must be a positive number of bytes")
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, *, stop: threading.Event) -> bool:
        """Reserve ``n`` bytes; False (nothing reserved) if ``stop`` was set while waiting."""
        with self._cond:
            while self.used and self.used + n > self.limit:
                if stop.is_set():
                    return False
                self._cond.wait(timeout=0.1)
            self.used += n
            self.peak = max(self.peak, self.used)
            return True

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


@dataclass(frozen=True)
class Done:
    """One finished write: ``tag`` as submitted, and its result or exception."""

    tag: Any
    result: Any = None
    error: BaseException | None = None


class WritePipeline:
    """Run writes on ``workers`` named threads, at most ``max_inflight`` bytes queued.

    >>> with WritePipeline(workers=2, max_inflight=64 << 20) as pipe:   # doctest: +SKIP
    ...     pipe.submit(index, len(payload), cache.put_shard, manifest, index, payload)
    ...     for done in pipe.drain(): ...
    ...     for done in pipe.join(): ...
    """

    def __init__(self, *, workers: int, max_inflight: int) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers={workers!r} must be an integer >= 1 (writer threads)")
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shardcache-prefetch-write")
        self._budget = ByteBudget(max_inflight)
        self.stop = threading.Event()
        self._done: queue.SimpleQueue[Done] = queue.SimpleQueue()
        self._pending = 0

    @property
    def peak_bytes(self) -> int:
        """Most bytes that were queued at once."""
        return self._budget.peak

    def submit(self, tag: Any, nbytes: int, fn: Callable[..., Any], *args: Any) -> bool:
        """Queue ``fn(*args)``; blocks while the byte budget is spent. False if stopped meanwhile."""
        if self.stop.is_set() or not self._budget.acquire(nbytes, stop=self.stop):
            return False
        self._pending += 1
        future = self._pool.submit(fn, *args)
        future.add_done_callback(lambda f: self._finished(f, tag, nbytes))
        return True

    def _finished(self, future: Future[Any], tag: Any, nbytes: int) -> None:
        self._budget.release(nbytes)
        if future.cancelled():
            self._done.put(Done(tag, error=ConfigError("write cancelled")))
            return
        exc = future.exception()
        if exc is not None:
            self.stop.set()
            self._budget.wake()
        self._done.put(Done(tag, result=None if exc else future.result(), error=exc))

    def drain(self) -> list[Done]:
        """Writes finished since the last call (never blocks)."""
        out: list[Done] = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                break
        self._pending -= len(out)
        return out

    def join(self) -> list[Done]:
        """Wait for every queued write; return those not drained yet."""
        out: list[Done] = []
        while self._pending > len(out):
            out.append(self._done.get())
        self._pending -= len(out)
        return out

    def close(self) -> None:
        """Stop: queued writes that have not started are cancelled; running ones finish."""
        self.stop.set()
        self._budget.wake()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> WritePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
