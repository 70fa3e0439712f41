"""Retry with a deadline, for riding through a Redis Cluster failover.

redis-py's cluster client raises ``ConnectionError`` to the caller again and again
(even with a redis-py ``Retry``, which counts tries only) for the 3.6-4.8 s that a replica
took to be promoted when we measured it (3 primaries + 3 replicas, ``cluster-node-timeout
2000``), so the cache retries on its own until a deadline. The policy is an object that is passed
in, so tests can run it with a fake clock and no real sleeping::

    policy = RetryPolicy(deadline=20.0)
    value = policy.call(lambda: client.get(key), on_retry=refresh_topology)
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import redis.exceptions as rex

from ..errors import AccessDenied, CacheUnavailable, ConfigError
from ..units import parse_duration

__all__ = ["TRANSIENT_ERRORS", "RetryPolicy", "is_transient"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Errors that a failover, a restart or a slot migration produce and that go away.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    rex.ConnectionError,
    rex.TimeoutError,
    rex.ClusterDownError,
    rex.TryAgainError,
    rex.MasterDownError,
    rex.SlotNotCoveredError,
    rex.ReadOnlyError,
    rex.BusyLoadingError,
    rex.ClusterError,
    ConnectionResetError,
    BrokenPipeError,
)
# Error replies that redis-py leaves as a plain ResponseError, yet that a node sends only while it
# cannot serve for a while: BUSY (a script or function past busy-reply-threshold; "BUSYGROUP" is
# another matter, hence the space), LOADING (a restart reading its data), TRYAGAIN (a slot
# migrating), CLUSTERDOWN and MASTERDOWN (a failover). Like a node failing over, they go away.
_TRANSIENT_REPLIES = ("BUSY ", "LOADING ", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN")
# redis-py raises this generic cluster error when no node answered while it re-read the
# topology: that is a failover in progress, whereas its other uses (bad arguments) are not.
_UNREACHABLE = "cannot be connected"
# What the server answers when a Lua script calls a command or key that the ACL user may not use:
# Redis 7, then Valkey 8+.
_SCRIPT_DENIED = ("user executing the script can't", "ACL failure in script")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is an error that a failover, restart, slot migration or busy script produces and
    that goes away."""
    if isinstance(exc, (rex.AuthenticationError, rex.AuthorizationError, rex.NoPermissionError)):
        return False
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    if isinstance(exc, rex.ResponseError):
        return str(exc).lstrip().startswith(_TRANSIENT_REPLIES)
    return isinstance(exc, rex.RedisClusterException) and _UNREACHABLE in str(exc)


@dataclass
class RetryPolicy:
    """Capped exponential backoff with jitter until ``deadline`` seconds have passed.

    Args:
        deadline: seconds to keep retrying one operation (default 20 s, above the
            3.6-4.8 s failover measured here with room for slower clusters).
        initial_backoff: first wait in seconds.
        max_backoff: longest single wait.
        sleep, clock: injectable for tests.
    """

    deadline: float = 20.0
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        # Durations may come as strings ("30s", "250ms"); the loop below sees only floats.
        self.deadline = parse_duration(self.deadline, name="deadline")
        self.initial_backoff = parse_duration(self.initial_backoff, name="initial_backoff")
        self.max_backoff = parse_duration(self.max_backoff, name="max_backoff")
        if self.initial_backoff <= 0 or self.max_backoff < self.initial_backoff:
            raise ConfigError(
                f"initial_backoff={self.initial_backoff!r}, max_backoff={self.max_backoff!r}: "
                "need 0 < initial_backoff <= max_backoff"
            )

    def call(
        self,
        fn: Callable[[], T],
        *,
        what: str = "Redis",
        node: Callable[[], str | None] | None = None,
        on_retry: Callable[[BaseException], None] | None = None,
        on_wait: Callable[[float], None] | None = None,
    ) -> T:
        """Run ``fn`` until it succeeds, a non-transient error occurs, or the deadline passes.

        ``on_retry`` runs after each transient failure (e.g. to refresh the cluster
        topology); ``on_wait`` is told each backoff, for the stats.
        """
        start = self.clock()
        backoff = self.initial_backoff
        attempt = 0
        while True:
            try:
                return fn()
            except (rex.AuthenticationError, rex.AuthorizationError, rex.AuthenticationWrongNumberOfArgsError) as exc:
                raise AccessDenied(
                    f"{what}: Redis refused the credentials ({_first_line(exc)}); check the username and "
                    "password (SHARDCACHE_REDIS_PASSWORD)",
                    node=node() if node else None,
                ) from None
            except rex.NoPermissionError as exc:
                raise AccessDenied(
                    f"{what}: the Redis ACL user lacks a permission ({_first_line(exc)}); grant the rule "
                    "shown in README's 'Access control' section",
                    node=node() if node else None,
                ) from None
            except Exception as exc:
                if _certificate_refused(exc):  # retrying cannot help, and "did not answer" would mislead
                    raise CacheUnavailable(
                        f"{what}: the TLS certificate of Redis{_at(node)} was refused ({_first_line(exc)}); pass "
                        "the CA that signed it (ssl_ca_certs= or SHARDCACHE_TLS_CA)",
                        node=node() if node else None,
                    ) from None
                if isinstance(exc, rex.ResponseError) and any(m in str(exc) for m in _SCRIPT_DENIED):
                    raise AccessDenied(
                        f"{what}: the Redis ACL user lacks a permission that a shardcache script needs "
                        f"({_first_line(exc)}); grant the rule shown in README's 'Access control' section",
                        node=node() if node else None,
                    ) from None
                if not is_transient(exc):
                    raise
                attempt += 1
                waited = self.clock() - start
                if waited >= self.deadline:
                    where = node() if node else None
                    raise CacheUnavailable(
                        f"{what}: Redis{' node ' + where if where else ''} did not answer for {waited:.1f}s "
                        f"({type(exc).__name__}: {_first_line(exc)}); check that the cache is running "
                        "(`shardcache status`) and reachable",
                        node=where,
                        waited=waited,
                    ) from None
                log.debug("%s failed (%s), retry %d in %.2fs", what, type(exc).__name__, attempt, backoff)
                if on_retry is not None:
                    try:
                        on_retry(exc)
                    except Exception as refresh_error:
                        # Re-reading the topology can itself fail mid-failover; the next try will tell.
                        log.debug("topology refresh failed: %s", type(refresh_error).__name__)
                pause = min(backoff * (0.5 + random.random()), self.deadline - waited, self.max_backoff)
                if pause > 0:
                    if on_wait is not None:
                        on_wait(pause)
                    self.sleep(pause)
                backoff = min(backoff * 2, self.max_backoff)


def _certificate_refused(exc: BaseException) -> bool:
    """Whether ``exc`` (redis-py wraps the ssl error in a ConnectionError) is a failed certificate check."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _at(node: Callable[[], str | None] | None) -> str:
    where = node() if node else None
    return f" node {where}" if where else ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
