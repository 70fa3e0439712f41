"""Exporting the metrics: an HTTP port Prometheus scrapes, or pushes to a Pushgateway. Off by default.

Turned on by :func:`serve` / :func:`push`, by a loader's ``metrics=`` argument, or by the environment:

* ``SHARDCACHE_METRICS_PORT``: serve ``/metrics`` on this port (plus ``$LOCAL_RANK``, so that the ranks
  torchrun starts in one pod each get a port); scrape it with a PodMonitor (``deploy/prometheus``).
* ``SHARDCACHE_METRICS_PUSHGATEWAY``: push to this Pushgateway URL every
  ``SHARDCACHE_METRICS_PUSH_INTERVAL`` seconds (default 15) and when a prefetch ends: for short-lived
  KFP steps that Prometheus would never scrape. Job ``SHARDCACHE_METRICS_JOB`` (default ``shardcache``),
  grouped by ``instance`` (the host name, plus ``:LOCAL_RANK`` under torchrun).
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..checks import check_int, check_seconds
from ..errors import ConfigError
from .client import prometheus
from .live import LiveCollector

__all__ = [
    "ENV_GATEWAY", "ENV_PORT", "Export", "enable", "enable_from_environment", "push", "push_now", "pushes_now",
    "registry", "resolve", "serve", "stop",
]

log = logging.getLogger(__name__)

ENV_PORT = "SHARDCACHE_METRICS_PORT"
ENV_GATEWAY = "SHARDCACHE_METRICS_PUSHGATEWAY"
ENV_INTERVAL = "SHARDCACHE_METRICS_PUSH_INTERVAL"
ENV_JOB = "SHARDCACHE_METRICS_JOB"
DEFAULT_INTERVAL = 15.0


@dataclass(frozen=True)
class Export:
    """Where the metrics go: a port to serve, or a gateway to push to."""

    port: int | None = None
    gateway: str | None = None


def resolve(metrics: object = None, *, env: Mapping[str, str] | None = None) -> Export | None:
    """What a ``metrics=`` argument asks for: None follows the environment (off when it says nothing),
    False is off, an int a port, a ``http(s)://`` URL a Pushgateway, True the environment's (required)."""
    env = os.environ if env is None else env
    if metrics is False:
        return None
    if metrics is None or metrics is True:
        found = _from_env(env)
        if found is None and metrics is True:
            raise ConfigError(
                f"metrics=True needs a port or a Pushgateway: pass metrics=9400 or metrics='http://pushgateway:9091', "
                f"or set {ENV_PORT} / {ENV_GATEWAY}"
            )
        return found
    if isinstance(metrics, str) and metrics.startswith(("http://", "https://")):
        return Export(gateway=metrics)
    if isinstance(metrics, str) and metrics.isdigit():
        metrics = int(metrics)
    if isinstance(metrics, int) and not isinstance(metrics, bool) and 0 <= metrics <= 65535:
        return Export(port=metrics)
    raise ConfigError(
        f"metrics={metrics!r} is invalid: pass a port (e.g. 9400), a Pushgateway URL (http://pushgateway:9091), "
        "True (from the environment) or False"
    )


def _from_env(env: Mapping[str, str]) -> Export | None:
    port, gateway = env.get(ENV_PORT, "").strip(), env.get(ENV_GATEWAY, "").strip()
    if port:
        if not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"{ENV_PORT}={port!r} must be a port number, e.g. 9400")
        local_rank = env.get("LOCAL_RANK", "0")
        return Export(port=int(port) + (int(local_rank) if local_rank.isdigit() else 0))
    if gateway:
        if not gateway.startswith(("http://", "https://")):
            raise ConfigError(f"{ENV_GATEWAY}={gateway!r} must be a Pushgateway URL, e.g. http://pushgateway:9091")
        return Export(gateway=gateway)
    return None


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.registry: Any = None
        self.server: Any = None
        self.port: int | None = None
        self.pushers: dict[str, _Pusher] = {}
        self.pid = os.getpid()  # the process whose threads serve and push (not a forked worker)


_STATE = _State()


def registry() -> Any:
    """The ``CollectorRegistry`` of this process's shardcache metrics (not prometheus_client's global one)."""
    core = prometheus("registry")
    with _STATE.lock:
        if _STATE.registry is None:
            _STATE.registry = core.CollectorRegistry(auto_describe=False)
            _STATE.registry.register(LiveCollector())
        return _STATE.registry


def serve(port: int = 9400, *, addr: str = "0.0.0.0") -> int:
    """Serve ``/metrics`` on ``port`` (0: any free port) in a daemon thread; return the port.

    Serving again on the same port is a no-op; one process serves one port."""
    port = check_int("port", port, minimum=0, fix="pass a port number, e.g. 9400")
    if port > 65535:
        raise ConfigError(f"port={port!r} is invalid: pass a port number, e.g. 9400")
    reg = registry()
    exposition = prometheus("exposition")
    with _STATE.lock:
        if _STATE.server is not None:
            if port in (0, _STATE.port):
                return _STATE.port  # type: ignore[return-value]
            raise ConfigError(f"metrics are already served on port {_STATE.port}; one process serves one port")
        try:
            server, _thread = exposition.start_http_server(port, addr=addr, registry=reg)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {addr}:{port} ({exc.strerror or exc}); pick another port "
                f"(metrics= or {ENV_PORT})"
            ) from None
        _STATE.server, _STATE.port, _STATE.pid = server, server.server_port, os.getpid()
        log.info("serving shardcache metrics on %s:%d", addr, _STATE.port)
        return _STATE.port


def push_now(gateway: str, *, job: str | None = None, grouping: Mapping[str, str] | None = None) -> None:
    """Push every metric of this process to the Pushgateway at ``gateway`` once (replacing the group)."""
    exposition = prometheus("exposition")
    exposition.push_to_gateway(
        gateway, job=job or os.environ.get(ENV_JOB, "shardcache"), registry=registry(),
        grouping_key=dict(grouping) if grouping is not None else {"instance": default_instance()}, timeout=5,
    )


def default_instance() -> str:
    """The host name, and ``:LOCAL_RANK`` under torchrun: each rank of a pod pushes a group of its own (a push
    replaces its whole group)."""
    local_rank = os.environ.get("LOCAL_RANK", "")
    return socket.gethostname() + (f":{local_rank}" if local_rank.isdigit() else "")


class _Pusher:
    """Pushes every ``interval`` seconds on a named daemon thread until stopped, and once more at exit."""

    def __init__(self, gateway: str, *, interval: float, job: str | None, grouping: Mapping[str, str] | None) -> None:
        self.gateway, self.job, self.grouping = gateway, job, grouping
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name="shardcache-metrics-push", daemon=True)
        self._thread.start()

    def push(self) -> None:
        try:
            push_now(self.gateway, job=self.job, grouping=self.grouping)
        except Exception as exc:  # the gateway being down must not stop training; the next push retries
            log.warning("could not push metrics to %s (%s: %s)", self.gateway, type(exc).__name__, exc)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.push()

    def stop(self, *, final: bool = True) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if final:
            self.push()


def push(
    gateway: str, *, interval: float | str | None = None, job: str | None = None,
    grouping: Mapping[str, str] | None = None,
) -> None:
    """Push this process's metrics to ``gateway`` now, then every ``interval`` seconds (default
    ``$SHARDCACHE_METRICS_PUSH_INTERVAL`` or 15), and once more at exit and when a prefetch ends."""
    if not isinstance(gateway, str) or not gateway.startswith(("http://", "https://")):
        raise ConfigError(f"gateway={gateway!r} must be a Pushgateway URL, e.g. http://pushgateway:9091")
    every = check_seconds("interval", os.environ.get(ENV_INTERVAL, DEFAULT_INTERVAL) if interval is None else interval)
    registry()
    with _STATE.lock:
        if gateway in _STATE.pushers:
            return
        _STATE.pushers[gateway] = _Pusher(gateway, interval=max(every, 0.1), job=job, grouping=grouping)
        _STATE.pid = os.getpid()
    _STATE.pushers[gateway].push()


def pushes_now() -> None:
    """Push to every gateway :func:`push` set up, at once (a prefetch just ended)."""
    with _STATE.lock:
        pushers = list(_STATE.pushers.values()) if _STATE.pid == os.getpid() else []
    for pusher in pushers:
        pusher.push()


def enable(export: Export | None) -> None:
    """Start what ``export`` asks for (nothing for None)."""
    if export is None:
        return
    if export.port is not None:
        serve(export.port)
    if export.gateway is not None:
        push(export.gateway)


def enable_from_environment() -> None:
    enable(_from_env(os.environ))


def stop() -> None:
    """Stop serving and pushing (pushers push one last time)."""
    with _STATE.lock:
        server, pushers = _STATE.server, list(_STATE.pushers.values())
        _STATE.server, _STATE.port, _STATE.pushers = None, None, {}
        if _STATE.pid != os.getpid():  # a forked child: those threads are the parent's, not here
            return
    if server is not None:
        server.shutdown()
        server.server_close()
    for pusher in pushers:
        pusher.stop()


atexit.register(stop)
