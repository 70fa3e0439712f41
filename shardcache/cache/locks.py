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

from ..checks import check_number
from ..errors import DatasetLocked, ShardCacheError
from .keys import validate_version

__all__ = ["DatasetLock", "Lease", "dead_local_holder", "delete_if_held", "live_leases", "lock_version"]

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
# Leases: score = expiry in server milliseconds, so clients' clocks do not matter. The key
# itself expires a while after its longest-lived member, never before it: a short lease must
# not cut a long one short.
# With a second key (the dataset's readers HASH, same hash tag), the renewal also stores the reader's
# heartbeat (ARGV[3], JSON) under its member, drops the heartbeats of the leases that just expired,
# and lets the HASH expire with the lease set. With pcall: a readers key of the wrong type (planted by
# something else) costs the heartbeat, never the lease.
_LEASE_PUT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = {}
if #KEYS > 1 then gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local expiry = math.floor(tonumber(last[2])) + 60000
redis.call('PEXPIREAT', KEYS[1], expiry)
if #KEYS > 1 then
  for i = 1, #gone, 500 do  -- unpack() is bounded by Lua's stack: at most 500 fields per HDEL
    redis.pcall('HDEL', KEYS[2], unpack(gone, i, math.min(i + 499, #gone)))
  end
  if ARGV[3] then
    redis.pcall('HSET', KEYS[2], ARGV[1], ARGV[3])
    redis.pcall('PEXPIREAT', KEYS[2], expiry)
  end
end
return 1
"""
# Live lease members, judged by the clock of the node that holds them.
_LEASES_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
"""

Call = Callable[..., Any]


def _host() -> str:
    """This process's host as lock tokens name it: the hostname, and the inode of its PID namespace
    when there is one (``pod/4026532201``). Pods on one node with ``hostNetwork`` share a hostname but
    not their process ids: only a holder of this very namespace can be judged dead by its pid."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}/{namespace}"


def _holder(version: str | None = None) -> str:
    """A new token ``HOST:PID:HEX``, or ``HOST:PID:HEX:VERSION`` for a lock taken to write ``version``."""
    token = f"{_host()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return token if version is None else f"{token}:{validate_version(version)}"


def lock_version(token: str) -> str | None:
    """The version a writer lock's holder writes, from its token (``HOST:PID:HEX:VERSION``); None when
    the token names none (a lock taken without a version, or by an older shardcache)."""
    fields = token.split(":")
    if len(fields) != 4:
        return None
    try:
        return validate_version(fields[3])
    except ShardCacheError:
        return None


def dead_local_holder(token: str) -> bool:
    """Whether lock token ``token`` (``HOST:PID:...``) names a process of this host and PID namespace
    that is gone (killed with SIGKILL, say: its lock lives on until its TTL passes). A holder elsewhere
    is never judged: its lock is waited out."""
    host, _, rest = token.partition(":")
    pid_text = rest.partition(":")[0]
    if host != _host() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


class _Renewer:
    """A named daemon thread that calls ``renew`` every ``interval`` until stopped.

    ``renew`` returning False means the claim is gone for good. An exception (Redis
    unreachable past the retry deadline) is logged and retried at the next interval;
    the claim counts as lost once ``ttl`` seconds pass without a successful renewal,
    since Redis has expired it by then.
    """

    def __init__(self, *, name: str, interval: float, ttl: float, renew: Callable[[], bool]) -> None:
        self._stop = threading.Event()
        self._renew = renew
        self._interval = interval
        self._ttl = ttl
        self._last_ok = time.monotonic()
        self.failed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def lost(self) -> bool:
        return self.failed or time.monotonic() - self._last_ok > self._ttl

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                ok = self._renew()
            except Exception as exc:  # a renewal that fails must not kill the owner; `lost` reports it
                log.warning("%s: renewal failed (%s: %s)", self._thread.name, type(exc).__name__, exc)
                continue
            if not ok:
                self.failed = True
                return
            self._last_ok = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


def _ttl_ms(ttl: object) -> int:
    return int(check_number("ttl", ttl, minimum=0.1, fix="pass a number of seconds >= 0.1") * 1000)


class DatasetLock:
    """The exclusive writer lock of one dataset. Use as a context manager.

    >>> with cache.lock("imagenet", wait=60):   # doctest: +SKIP
    ...     ...
    """

    def __init__(
        self, *, call: Call, key: str, dataset: str, ttl: float = 30.0, what: str = "", version: str | None = None
    ) -> None:
        self._call = call
        self.key = key
        self.dataset = dataset
        self.what = what or f"dataset {dataset!r}"  # what the lock guards, in messages
        self.ttl_ms = _ttl_ms(ttl)
        # The version the holder writes rides in the token (so it lives and expires with the lock):
        # `rm` and `info` tell which version a prefetch is loading, whatever `latest` names.
        self.token = _holder(version)
        self._renewer: _Renewer | None = None

    def acquire(self, *, wait: float = 0.0, poll: float = 0.2, sleep: Callable[[float], None] = time.sleep) -> None:
        """Take the lock, waiting up to ``wait`` seconds; raises DatasetLocked."""
        if self._renewer is not None:
            return
        check_number("wait", wait, minimum=0, fix="pass a number of seconds >= 0")
        deadline = time.monotonic() + wait
        while True:
            if self._call("SET", self.key, self.token, nx=True, px=self.ttl_ms):
                break
            holder = self._call("GET", self.key)
            holder_text = holder.decode(errors="replace") if isinstance(holder, bytes) else holder
            if holder_text == self.token:
                # Our SET went through but its reply was lost, and the retry found our own token.
                break
            if time.monotonic() >= deadline:
                raise DatasetLocked(
                    f"{self.what} is being written by {holder_text or 'another prefetcher'}; "
                    "wait for it to finish (or pass wait=/--wait), then run again",
                    dataset=self.dataset,
                )
            sleep(poll)
        self._renewer = _Renewer(
            name=f"shardcache-lock-{self.dataset}",
            interval=self.ttl_ms / 3000,
            ttl=self.ttl_ms / 1000,
            renew=self._renew_once,
        )

    def _renew_once(self) -> bool:
        ok = bool(self._call("EVAL", _RENEW, 1, self.key, self.token, self.ttl_ms))
        if not ok:
            log.error("lost the writer lock of %s", self.what)
        return ok

    @property
    def held(self) -> bool:
        """Taken and not lost."""
        return self._renewer is not None and not self._renewer.lost

    @property
    def lost(self) -> bool:
        """Taken once, but expired or taken by another writer since (or not renewed for a whole TTL)."""
        return self._renewer is not None and self._renewer.lost

    def check(self) -> None:
        """Raise DatasetLocked if the lock was lost (expired and taken by another writer)."""
        if self.lost:
            raise DatasetLocked(
                f"the writer lock of {self.what} was lost (stalled longer than its TTL); "
                "run the prefetch again",
                dataset=self.dataset,
            )

    def release(self) -> None:
        """Stop renewing and delete the lock if it is still ours."""
        if self._renewer is not None:
            self._renewer.stop()
            self._renewer = None
            delete_if_held(self._call, self.key, self.token)

    def __enter__(self) -> DatasetLock:
        if self._renewer is None:
            self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        _release_quietly(self.release, failing=exc_type is not None, what=f"lock of {self.dataset!r}")


def _release_quietly(release: Callable[[], None], *, failing: bool, what: str) -> None:
    """Release; while another exception propagates, a failed release is logged rather than raised
    over it (the TTL frees the claim anyway)."""
    try:
        release()
    except Exception as exc:
        if not failing:
            raise
        log.warning("could not release the %s (%s); it expires by itself", what, type(exc).__name__)


class Lease:
    """A reader's claim on a dataset version, renewed while held.

    ``member`` is ``VERSION|HOLDER``; ``rm``/``evict`` refuse to remove a version
    (or, for ``*``, any version) with a live lease.
    """

    def __init__(
        self, *, call: Call, key: str, dataset: str, version: str, ttl: float = 60.0, readers_key: str | None = None
    ) -> None:
        if version != "*":
            validate_version(version)
        self._call = call
        self.key = key
        self.readers_key = readers_key
        self._beat: Callable[[], str] | None = None
        self.dataset = dataset
        self.version = version
        self.ttl_ms = _ttl_ms(ttl)
        self.member = f"{version}|{_holder()}"
        self._renewer: _Renewer | None = None

    def acquire(self) -> Lease:
        if self._renewer is not None:
            return self
        self._put()
        self._renewer = _Renewer(
            name=f"shardcache-lease-{self.dataset}",
            interval=self.ttl_ms / 3000,
            ttl=self.ttl_ms / 1000,
            renew=self._put,
        )
        return self

    def _put(self) -> bool:
        if self.readers_key is None:
            self._call("EVAL", _LEASE_PUT, 1, self.key, self.member, self.ttl_ms)
            return True
        beat = [] if self._beat is None else [_beat_text(self._beat)]
        self._call("EVAL", _LEASE_PUT, 2, self.key, self.readers_key, self.member, self.ttl_ms, *beat)
        return True

    def heartbeat(self, fields: Callable[[], str]) -> None:
        """Publish ``fields()`` (a short JSON text: the reader's counters) under this lease's member in the
        dataset's readers HASH now and at every renewal (``shardcache top`` shows it). Best effort: a failed
        write is logged, never raised, and a lease without a readers key publishes nothing."""
        if self.readers_key is None:
            return
        self._beat = fields
        try:
            self._put()
        except Exception as exc:  # the heartbeat is for people watching; reading goes on without it
            log.warning("could not publish the reader heartbeat of %r: %s", self.dataset, exc)

    @property
    def lost(self) -> bool:
        """Not renewed for a whole TTL: ``rm`` may have removed the version since."""
        return self._renewer is not None and self._renewer.lost

    def release(self) -> None:
        if self._renewer is not None:
            self._renewer.stop()
            self._renewer = None
            self._call("ZREM", self.key, self.member)
            if self._beat is not None and self.readers_key is not None:
                try:
                    self._call("HDEL", self.readers_key, self.member)
                except ShardCacheError as exc:  # the HASH expires with the lease set
                    log.warning("could not remove the reader heartbeat of %r: %s", self.dataset, exc)

    def __enter__(self) -> Lease:
        if self._renewer is None:
            self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        _release_quietly(self.release, failing=exc_type is not None, what=f"lease on {self.dataset!r}")


def _beat_text(fields: Callable[[], str]) -> str:
    try:
        return fields()
    except Exception as exc:  # a broken heartbeat must not cost the lease its renewal
        log.warning("reader heartbeat failed (%s: %s)", type(exc).__name__, exc)
        return "{}"


def delete_if_held(call: Call, key: str, token: str) -> bool:
    """Delete the lock at ``key`` if it still holds ``token`` (compare-and-delete); whether it did."""
    return bool(call("EVAL", _RELEASE, 1, key, token))


def live_leases(call: Call, key: str) -> list[str]:
    """Members (``VERSION|HOLDER``) of the leases at ``key`` that have not expired."""
    raw = call("EVAL", _LEASES_LIVE, 1, key)
    return [m.decode(errors="replace") if isinstance(m, bytes) else str(m) for m in raw]
