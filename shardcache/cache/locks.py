"""The writer lock of a dataset and the leases of its readers.

* :class:`DatasetLock` is ``SET key token NX PX ttl``, renewed by a named daemon
  thread while held and released only by its owner (compare-and-delete). A lock
  that could not be renewed is *lost*; the writer's commit checks the token, so a
  writer that lost its lock can never commit over another.
* :class:`Lease` is a member of a per-dataset sorted set scored by its expiry
  (server time, ms). Readers hold one while they iterate; ``rm`` and ``evict``
  refuse to remove a dataset with a live lease.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from ..errors import DatasetLocked

__all__ = ["DatasetLock", "Lease"]

log = logging.getLogger(__name__)

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# Leases: score = expiry in server milliseconds, so clients' clocks do not matter.
_LEASE_PUT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
"""

Call = Callable[..., Any]


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class _Renewer:
    """A named daemon thread that calls ``renew`` every ``interval`` until stopped."""

    def __init__(self, *, name: str, interval: float, renew: Callable[[], bool]) -> None:
        self._stop = threading.Event()
        self._renew = renew
        self._interval = interval
        self.failed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if not self._renew():
                    self.failed = True
                    return
            except Exception as exc:  # a renewal that fails must not kill the owner; it is reported
                log.warning("renewal failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


class DatasetLock:
    """The exclusive writer lock of one dataset. Use as a context manager.

    >>> with cache.lock("imagenet", wait=60):   # doctest: +SKIP
    ...     ...
    """

    def __init__(self, *, call: Call, key: str, dataset: str, ttl: float = 30.0) -> None:
        self._call = call
        self.key = key
        self.dataset = dataset
        self.ttl_ms = max(int(ttl * 1000), 1000)
        self.token = _holder()
        self._renewer: _Renewer | None = None

    def acquire(self, *, wait: float = 0.0, poll: float = 0.2, sleep: Callable[[float], None] = time.sleep) -> None:
        """Take the lock, waiting up to ``wait`` seconds; raises DatasetLocked."""
        deadline = time.monotonic() + wait
        while True:
            if self._call("SET", self.key, self.token, nx=True, px=self.ttl_ms):
                break
            if time.monotonic() >= deadline:
                holder = self._call("GET", self.key)
                holder_text = holder.decode(errors="replace") if isinstance(holder, bytes) else holder
                raise DatasetLocked(
                    f"dataset {self.dataset!r} is being written by {holder_text or 'another prefetcher'}; "
                    "wait for it to finish (or pass wait=/--wait), then run again",
                    dataset=self.dataset,
                )
            sleep(poll)
        self._renewer = _Renewer(
            name=f"shardcache-lock-{self.dataset}", interval=self.ttl_ms / 3000, renew=self._renew_once
        )

    def _renew_once(self) -> bool:
        ok = bool(self._call("EVAL", _RENEW, 1, self.key, self.token, self.ttl_ms))
        if not ok:
            log.error("lost the writer lock of dataset %r", self.dataset)
        return ok

    @property
    def lost(self) -> bool:
        return self._renewer is not None and self._renewer.failed

    def check(self) -> None:
        """Raise DatasetLocked if the lock was lost (expired and taken by another writer)."""
        if self.lost:
            raise DatasetLocked(
                f"the writer lock of dataset {self.dataset!r} was lost (stalled longer than its TTL); "
                "run the prefetch again",
                dataset=self.dataset,
            )

    def release(self) -> None:
        if self._renewer is not None:
            self._renewer.stop()
            self._renewer = None
            self._call("EVAL", _RELEASE, 1, self.key, self.token)

    def __enter__(self) -> DatasetLock:
        if self._renewer is None:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Lease:
    """A reader's claim on a dataset version, renewed while held.

    ``member`` is ``VERSION|HOLDER``; ``rm``/``evict`` refuse to remove a version
    (or, for ``*``, any version) with a live lease.
    """

    def __init__(self, *, call: Call, key: str, dataset: str, version: str, ttl: float = 60.0) -> None:
        self._call = call
        self.key = key
        self.dataset = dataset
        self.version = version
        self.ttl_ms = max(int(ttl * 1000), 1000)
        self.member = f"{version}|{_holder()}"
        self._renewer: _Renewer | None = None

    def acquire(self) -> Lease:
        self._put()
        self._renewer = _Renewer(
            name=f"shardcache-lease-{self.dataset}", interval=self.ttl_ms / 3000, renew=self._put
        )
        return self

    def _put(self) -> bool:
        self._call("EVAL", _LEASE_PUT, 1, self.key, self.member, self.ttl_ms)
        return True

    def release(self) -> None:
        if self._renewer is not None:
            self._renewer.stop()
            self._renewer = None
            self._call("ZREM", self.key, self.member)

    def __enter__(self) -> Lease:
        if self._renewer is None:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
