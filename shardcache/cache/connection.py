"""Opening a redis-py client for a cache URL, detecting cluster or standalone by itself."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.exceptions as rex
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from ..checks import check_int
from ..errors import CacheUnavailable, ConfigError
from .retry import RetryPolicy
from .urls import CacheURL

__all__ = ["ConnectOptions", "open_client"]

log = logging.getLogger(__name__)

Client = redis.Redis | RedisCluster

# How long connect() keeps trying when no seed answers at all. The retry deadline (20 s) is for
# riding through a failover of a cluster that answered before; a cache that does not answer when
# a job starts (not running, wrong host, every node down) is better reported at once.
CONNECT_DEADLINE = 2.0


@dataclass(frozen=True)
class ConnectOptions:
    """Socket and TLS options. ``ssl_cert_reqs`` other than ``required`` is logged as a warning."""

    socket_timeout: float = 10.0
    connect_timeout: float = 3.0
    max_connections: int = 64
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = field(default=None, repr=False)
    ssl_cert_reqs: str = "required"

    def __post_init__(self) -> None:
        if self.ssl_cert_reqs not in ("required", "optional", "none"):
            raise ConfigError(f"ssl_cert_reqs={self.ssl_cert_reqs!r} must be 'required', 'optional' or 'none'")
        check_int("max_connections", self.max_connections, minimum=1, fix="pass an integer >= 1")


def _kwargs(url: CacheURL, options: ConnectOptions) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "username": url.username,
        "password": url.password,
        "socket_timeout": options.socket_timeout,
        "socket_connect_timeout": options.connect_timeout,
        # Our RetryPolicy owns retries and deadlines; redis-py's own retries would
        # only multiply the wait.
        "retry": Retry(NoBackoff(), 0),
    }
    if url.tls:
        kwargs.update(
            ssl=True,
            ssl_ca_certs=options.ssl_ca_certs,
            ssl_certfile=options.ssl_certfile,
            ssl_keyfile=options.ssl_keyfile,
            ssl_cert_reqs=options.ssl_cert_reqs,
        )
        if options.ssl_cert_reqs != "required":
            log.warning("TLS certificate verification is %r for %s: connections can be intercepted",
                        options.ssl_cert_reqs, url.redacted())
    return kwargs


def _probe(url: CacheURL, options: ConnectOptions) -> tuple[str, int, bool]:
    """Find a live seed and whether it runs in cluster mode.

    Asks ``CLUSTER SLOTS``, which the cluster client needs anyway, so an ACL user needs
    no ``INFO`` just to connect; a standalone server answers that cluster support is disabled.
    """
    failures: list[str] = []
    last: Exception | None = None
    for host, port in url.seeds:
        probe = redis.Redis(host=host, port=port, **_kwargs(url, options))  # db 0: clusters refuse SELECT
        try:
            probe.execute_command("CLUSTER", "SLOTS")
            return host, port, True
        except (rex.AuthenticationError, rex.AuthorizationError, rex.NoPermissionError):
            raise
        except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
            failures.append(f"{host}:{port} ({_reason(exc)})")
            last = exc
        except rex.ResponseError as exc:
            if "cluster support disabled" in str(exc).lower() or "unknown command" in str(exc).lower():
                return host, port, False
            raise
        finally:
            probe.close()
    if not failures:
        raise ConfigError("the cache URL names no seed node")
    raise _NoSeedAnswered("; ".join(failures)) from last  # the cause tells a refused TLS certificate


class _NoSeedAnswered(rex.ConnectionError):
    """No seed of the URL answered the probe; the message lists each seed and why."""


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text or type(exc).__name__)[:120]


def _first_contact(
    url: CacheURL, options: ConnectOptions, retry: RetryPolicy, *, first: bool
) -> tuple[str, int, bool]:
    """Probe the seeds; on ``first`` contact for up to CONNECT_DEADLINE (or the retry deadline, if
    shorter). When none answers, one CacheUnavailable that names every seed tried and why."""
    quick = dataclasses.replace(retry, deadline=min(retry.deadline, CONNECT_DEADLINE)) if first else retry
    last: list[str] = []

    def probe() -> tuple[str, int, bool]:
        try:
            return _probe(url, options)
        except _NoSeedAnswered as exc:
            last[:] = [str(exc)]
            raise

    try:
        return quick.call(probe, what=f"connecting to {url.redacted()}", node=url.redacted)
    except CacheUnavailable as exc:
        if not last or exc.waited < quick.deadline:  # not the deadline: e.g. a refused TLS certificate
            raise
        seeds = ", ".join(f"{h}:{p}" for h, p in url.seeds)
        raise CacheUnavailable(
            f"the cache did not answer at {'its seed' if len(url.seeds) == 1 else 'any of its seeds'} {seeds} "
            f"within {exc.waited:.1f}s (tried {last[0]}); check that it runs and is reachable from here: "
            "`shardcache status`",
            node=seeds, waited=exc.waited,
        ) from None


def open_client(
    url: CacheURL, options: ConnectOptions, retry: RetryPolicy, *, cluster: bool | None = None
) -> tuple[Client, bool]:
    """A client for ``url``: ``RedisCluster`` when the server runs in cluster mode.

    ``cluster`` says whether it does when that is known already (a forked DataLoader worker knows
    it from its parent), which saves a connection and a round trip. Returns ``(client, is_cluster)``.
    When no seed answers at first contact, CacheUnavailable comes within CONNECT_DEADLINE; other
    connection failures are retried until ``retry``'s deadline and then raise CacheUnavailable.
    """
    if cluster:
        host, port, is_cluster = *url.seeds[0], True
    else:
        # A process that knows the server already (a forked worker) waits the full deadline, as for a failover.
        host, port, is_cluster = _first_contact(url, options, retry, first=cluster is None)
    kwargs = _kwargs(url, options)
    if not is_cluster:
        pool_cls = redis.BlockingConnectionPool
        pool_kwargs = dict(kwargs)
        pool_kwargs.pop("retry")
        if url.tls:
            pool_kwargs.pop("ssl")
            pool_kwargs["connection_class"] = redis.SSLConnection
        pool = pool_cls(
            host=host, port=port, db=url.db, max_connections=options.max_connections, timeout=None,
            retry=Retry(NoBackoff(), 0), **pool_kwargs,
        )
        return redis.Redis(connection_pool=pool), False
    if url.db != 0:
        raise ConfigError(f"{url.redacted()} is a cluster: Redis Cluster has only database 0; drop '/{url.db}'")
    seeds = [ClusterNode(h, p) for h, p in url.seeds]

    def build() -> RedisCluster:
        return RedisCluster(
            startup_nodes=seeds,
            max_connections=options.max_connections,
            require_full_coverage=False,
            reinitialize_steps=1,
            **kwargs,
        )

    client = retry.call(build, what=f"reading the cluster topology from {url.redacted()}",
                        node=lambda: f"{host}:{port}")
    return client, True
