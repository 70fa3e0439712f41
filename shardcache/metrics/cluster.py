"""The cluster at a glance: memory per primary, datasets and their versions, leases, and readers.

:func:`snapshot` is what ``shardcache top`` draws and what :class:`ClusterCollector` (``shardcache
exporter``) exports. Readers are the live leases; a CachedDataLoader's lease carries a heartbeat (its
hit ratio, wait fraction, epoch: the ``{d=D}:readers`` HASH, written with each lease renewal).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..cache import Manifest, NodeMemory, ShardCache
from ..errors import ConfigError, ShardCacheError
from .client import prometheus
from .names import CLUSTER

__all__ = ["ClusterCollector", "ClusterView", "DatasetView", "Reader", "Snapshots", "serve_cluster", "snapshot"]

log = logging.getLogger(__name__)

# Live leases with their expiry, the readers' heartbeats, and the server's clock, in one call (one slot).
_READERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.pcall('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
if type(live) == 'table' and live.err then live = {} end
local beats = redis.pcall('HGETALL', KEYS[2])
if type(beats) == 'table' and beats.err then beats = {} end
return {now, live, beats}
"""


@dataclass(frozen=True)
class Reader:
    """A live lease: ``holder`` (host:pid:id) on ``version``, and its heartbeat when it publishes one."""

    dataset: str
    version: str
    holder: str
    expires_in: float  # seconds, by the server's clock
    beat: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        return self.beat.get(name)


@dataclass(frozen=True)
class DatasetView:
    """The newest version of a dataset, every version id, and the readers."""

    name: str
    version: str = ""
    state: str = ""
    shards: int = 0
    cached: int = 0
    rows: int = 0
    nbytes: int = 0
    versions: tuple[str, ...] = ()
    readers: tuple[Reader, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class ClusterView:
    nodes: tuple[NodeMemory, ...]
    datasets: tuple[DatasetView, ...]


class Snapshots:
    """Takes snapshots of one cache, keeping complete manifests (they never change) between them."""

    def __init__(self, cache: ShardCache) -> None:
        self.cache = cache
        self._manifests: dict[tuple[str, str], Manifest] = {}
        self._seen: set[tuple[str, str]] = set()

    def _manifest(self, name: str, version: str) -> Manifest:
        self._seen.add((name, version))
        known = self._manifests.get((name, version))
        if known is not None:
            return known
        manifest = self.cache.manifest(name, version)
        if manifest.complete:
            self._manifests[(name, version)] = manifest
        return manifest

    def take(self) -> ClusterView:
        nodes = self.cache.capacity().nodes
        views = []
        self._seen = set()
        for name in self.cache.datasets():
            try:
                views.append(self._dataset(name))
            except ShardCacheError as exc:  # one broken dataset is shown with its error, the others as usual
                views.append(DatasetView(name=name, error=" ".join(str(exc).split())))
        self._manifests = {k: m for k, m in self._manifests.items() if k in self._seen}  # removed ones go
        return ClusterView(nodes=tuple(nodes), datasets=tuple(views))

    def _dataset(self, name: str) -> DatasetView:
        versions = tuple(self.cache.versions(name))
        latest = self.cache.latest_version(name)
        readers = tuple(self._readers(name))
        if latest is None:
            return DatasetView(name=name, versions=versions, readers=readers)
        m = self._manifest(name, latest)
        return DatasetView(
            name=name, version=m.version, state=m.state, shards=m.num_shards, cached=m.cached_shards,
            rows=m.num_rows, nbytes=m.nbytes, versions=versions, readers=readers,
        )

    def _readers(self, name: str) -> Iterator[Reader]:
        keys = self.cache.keys
        now, live, beats = self.cache.call("EVAL", _READERS, 2, keys.leases(name), keys.readers(name))
        hearts = {_text(beats[i]): _text(beats[i + 1]) for i in range(0, len(beats) - 1, 2)}
        for i in range(0, len(live) - 1, 2):
            member, expiry = _text(live[i]), float(live[i + 1])
            version, _, holder = member.partition("|")
            yield Reader(dataset=name, version=version, holder=holder, expires_in=(expiry - int(now)) / 1000,
                         beat=_parse(hearts.get(member)))


def snapshot(cache: ShardCache) -> ClusterView:
    """Memory per primary, and each dataset's newest version, versions and live readers."""
    return Snapshots(cache).take()


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _parse(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class ClusterCollector:
    """A ``prometheus_client`` collector of the cluster's view (:data:`names.CLUSTER`), read at scrape time.

    A snapshot that takes longer than ``timeout`` seconds (a node failing over) reports ``shardcache_up 0``
    for that scrape rather than holding Prometheus past its scrape timeout; one snapshot runs at a time.
    """

    def __init__(self, cache: ShardCache, *, timeout: float = 5.0) -> None:
        self._snapshots = Snapshots(cache)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._running: threading.Thread | None = None
        self._result: ClusterView | None = None

    def describe(self) -> list[Any]:
        return []

    def _take(self) -> ClusterView | None:
        with self._lock:
            if self._running is None or not self._running.is_alive():
                box: dict[str, ClusterView] = {}

                def run() -> None:
                    try:
                        box["view"] = self._snapshots.take()
                    except Exception as exc:  # reported as shardcache_up 0
                        log.warning("cluster snapshot failed (%s: %s)", type(exc).__name__, exc)

                self._box = box
                self._running = threading.Thread(target=run, name="shardcache-exporter-snapshot", daemon=True)
                self._running.start()
            thread, box = self._running, self._box
        thread.join(self._timeout)
        return None if thread.is_alive() else box.get("view")

    def collect(self) -> Iterator[Any]:
        core = prometheus("core")
        started = time.monotonic()
        view = self._take()
        families = {f.name: core.GaugeMetricFamily(f.name, f.help, labels=list(f.labels)) for f in CLUSTER}

        def add(name: str, labels: list[str], value: float) -> None:
            families[name].add_metric(labels, float(value))

        add("shardcache_up", [], 0 if view is None else 1)
        for node in view.nodes if view is not None else ():
            add("shardcache_node_used_memory_bytes", [node.node], node.used)
            add("shardcache_node_maxmemory_bytes", [node.node], node.maxmemory)
        for d in view.datasets if view is not None else ():
            add("shardcache_dataset_versions", [d.name], len(d.versions))
            if d.version:
                labels = [d.name, d.version, d.state]
                add("shardcache_dataset_shards", labels, d.shards)
                add("shardcache_dataset_cached_shards", labels, d.cached)
                add("shardcache_dataset_bytes", labels, d.nbytes)
                add("shardcache_dataset_rows", labels, d.rows)
            leases: dict[str, int] = {}
            for r in d.readers:
                leases[r.version] = leases.get(r.version, 0) + 1
                if r.beat:
                    labels = [d.name, r.version, str(r.get("rank")), r.holder]
                    for name, field in (("shardcache_reader_hit_ratio", "hit_ratio"),
                                        ("shardcache_reader_wait_fraction", "wait_fraction")):
                        value = r.get(field)  # a heartbeat is data from Redis: only numbers are exported
                        if isinstance(value, (int, float)) and not isinstance(value, bool):
                            add(name, labels, float(value))
            for version, count in sorted(leases.items()):
                add("shardcache_dataset_leases", [d.name, version], count)
        log.debug("cluster metrics collected in %.3fs", time.monotonic() - started)
        yield from families.values()


def serve_cluster(cache: ShardCache, *, port: int = 9410, addr: str = "0.0.0.0", timeout: float = 5.0) -> Any:
    """Serve :class:`ClusterCollector` of ``cache`` on ``addr:port`` (0: any free port) in a daemon thread,
    in a registry of its own; return the HTTP server (``server.server_port``, ``server.shutdown()``)."""
    registry = prometheus("registry").CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(cache, timeout=timeout))
    try:
        server, _thread = prometheus("exposition").start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {addr}:{port} ({exc.strerror or exc}); pick another port") from None
    return server
