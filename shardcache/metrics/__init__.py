"""Prometheus metrics of loaders, prefetches and the cluster, and the view behind ``shardcache top``.

Off by default, and ``prometheus_client`` is imported only once turned on (``pip install
'shardcache[metrics]'``):

>>> import shardcache.metrics as metrics
>>> metrics.serve(port=9400)                                  # doctest: +SKIP
>>> loader = CachedDataLoader("imagenet", metrics=9400)       # the same, from the loader  # doctest: +SKIP
>>> metrics.push("http://pushgateway:9091")                   # short-lived jobs  # doctest: +SKIP

or ``SHARDCACHE_METRICS_PORT`` / ``SHARDCACHE_METRICS_PUSHGATEWAY`` in the environment (see
:mod:`.export`). Every CachedDataLoader and prefetch of the process is exported, read from their live
stats at scrape time (:mod:`.live`); :class:`ClusterCollector` (``shardcache exporter``) exports memory
per node, datasets, leases and readers (:mod:`.cluster`). The names are in :mod:`.names`.
"""

from __future__ import annotations

from .client import INSTALL
from .cluster import ClusterCollector, ClusterView, DatasetView, Reader, Snapshots, serve_cluster, snapshot
from .export import ENV_GATEWAY, ENV_PORT, Export, enable, push, push_now, registry, resolve, serve, stop
from .live import LiveCollector, PrefetchTracker, observe, track_prefetch
from .names import CLUSTER, LOADER, PREFETCH, Family, exposed_names

__all__ = [
    "CLUSTER", "ENV_GATEWAY", "ENV_PORT", "INSTALL", "LOADER", "PREFETCH",
    "ClusterCollector", "ClusterView", "DatasetView", "Export", "Family", "LiveCollector", "PrefetchTracker",
    "Reader", "Snapshots",
    "enable", "exposed_names", "observe", "push", "push_now", "registry", "resolve", "serve", "serve_cluster",
    "snapshot", "stop", "track_prefetch",
]
