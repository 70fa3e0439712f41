"""Peak memory of this process and its DataLoader workers, sampled by a background thread.

Forked workers share most of their pages with the parent, so adding up plain RSS
would count torch's libraries and heap once per worker. On Linux we add up the
proportional set size (PSS, from ``/proc/PID/smaps_rollup``), which splits every
shared page between its sharers; elsewhere psutil's RSS.

The sampler must not slow down what it measures, and the kernel computes PSS by
walking page tables: about 5 ms for a torch process. So every 20 ms it reads only
the O(1) RSS counters of the process tree (``statm``), and takes PSS when that sum
reaches a new high (at most every 50 ms), and once a second as a safety net. Memory
peaks come with a new RSS high, so they are caught; a steady state costs nothing.
The kernel's exact high-water mark of this process's own RSS (``VmHWM``) is kept too.

A cold first epoch raises RSS all the time (workers start, pools fill), so there the sampler would
walk page tables every 50 ms, contending with the loader it times: about 70 ms of a 0.5 s epoch
with two workers here. :func:`pss_held` holds PSS readings back while a timed cold epoch runs: the
RSS counters are still read, and PSS is read once the epoch ends, when that epoch's pools and
read-ahead are still held (the warm epoch after it is sampled as usual).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

__all__ = ["PeakMemory", "high_water_mark", "pss_held"]

_PROC = Path("/proc")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PSS_GAP_S = 0.05
_PSS_EVERY_S = 1.0
_NEW_HIGH = 1.01  # 1% above the RSS sum at the last PSS reading


def high_water_mark() -> int | None:
    """This process's peak RSS as the kernel counted it (Linux ``VmHWM``), or None elsewhere."""
    try:
        with open(_PROC / "self" / "status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _linux_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from ``/proc/PID/task/TID/children``)."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            for task in (_PROC / str(pid) / "task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):  # a worker that just exited
            continue
        pids.append(pid)
    return pids


def _linux_rss(pid: int) -> int:
    with open(_PROC / str(pid) / "statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def _linux_pss(pid: int) -> int:
    with open(_PROC / str(pid) / "smaps_rollup", "rb") as f:
        for line in f:
            if line.startswith(b"Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def _sum(read: Callable[[int], int], pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += read(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _linux_works() -> bool:
    try:
        _linux_pss(os.getpid())
        _linux_rss(os.getpid())
        _linux_tree(os.getpid())
    except OSError:
        return False
    return True


def _psutil_total(root: int) -> int:
    import psutil

    proc = psutil.Process(root)
    total = int(proc.memory_info().rss)
    for child in proc.children(recursive=True):
        try:
            total += int(child.memory_info().rss)
        except psutil.Error:
            continue
    return total


_active: list[PeakMemory] = []  # the samplers running in this process


class pss_held:  # noqa: N801 -- a context manager used like a function
    """Within it, the running samplers read no PSS (only the O(1) RSS counters); one PSS reading on exit."""

    def __enter__(self) -> None:
        for memory in _active:
            memory.held += 1

    def __exit__(self, *exc: object) -> None:
        for memory in _active:
            memory.held -= 1
            memory.sample(force=True)


class PeakMemory:
    """Context manager recording the peak memory of this process and its children, in bytes.

    >>> with PeakMemory() as mem:   # doctest: +SKIP
    ...     run()
    >>> mem.peak                    # doctest: +SKIP
    412000000
    """

    def __init__(self, *, interval: float = 0.02) -> None:
        if interval <= 0:
            raise ValueError(f"interval={interval!r} must be positive seconds")
        self.interval = interval
        self.peak = 0
        self.method = "pss" if _linux_works() else "rss"
        self._pid = os.getpid()
        self._rss_at_pss = 0
        self._last_pss = float("-inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-peak-memory", daemon=True)
        self.held = 0  # > 0 within pss_held()
        self.rss_peak = 0  # the highest RSS sum seen (shared pages counted once per process)

    def sample(self, *, force: bool = False) -> None:
        """Read the RSS counters; read PSS too when they reach a new high (or when ``force``)."""
        if self.method == "rss":
            self.peak = max(self.peak, _psutil_total(self._pid))
            return
        now = time.monotonic()
        pids = _linux_tree(self._pid)
        rss = _sum(_linux_rss, pids)
        self.rss_peak = max(self.rss_peak, rss)
        if self.held and not force:
            return
        due = rss > self._rss_at_pss * _NEW_HIGH and now - self._last_pss >= _PSS_GAP_S
        if force or due or now - self._last_pss >= _PSS_EVERY_S:
            self.peak = max(self.peak, _sum(_linux_pss, pids))
            self._rss_at_pss = max(self._rss_at_pss, rss)
            self._last_pss = now

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakMemory:
        self.sample(force=True)
        _active.append(self)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        _active.remove(self)
        self.sample(force=True)
