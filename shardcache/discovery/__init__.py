"""Finding the cache: the one order of precedence for its address, and Kubernetes discovery.

* :func:`resolve_address` / :func:`open_cache`: an explicit URL, else a Kubernetes Service (and
  Secret), else ``$SHARDCACHE_REDIS_URL``, else the local cluster recorded in a state directory;
  used by the CLI and the KFP components (:mod:`.address`).
* :func:`cache_url_from_k8s` / :func:`discover_cache`: the ready Redis nodes behind a Service and
  the password in a Secret, through the Kubernetes API (``shardcache[k8s]``; :mod:`.kube`).

Importing this package needs neither kfp nor the kubernetes client.
"""

from __future__ import annotations

from .address import CacheAddress, open_cache, resolve_address
from .kube import CacheEndpoint, cache_url_from_k8s, discover_cache, load_kube_config

__all__ = [
    "CacheAddress",
    "open_cache",
    "resolve_address",
    "CacheEndpoint",
    "cache_url_from_k8s",
    "discover_cache",
    "load_kube_config",
]
