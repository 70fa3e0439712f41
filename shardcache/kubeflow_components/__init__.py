"""Kubeflow Pipelines components of shardcache, and finding the cache through Kubernetes.

Components (KFP v2; need ``pip install 'shardcache[kubeflow]'``)::

    from shardcache.kubeflow_components import prefetch_op, verify_op

    @dsl.pipeline
    def train(source: str):
        prefetch = prefetch_op(source=source, dataset="train", k8s_service="shardcache-redis")
        ...

* ``prefetch_op``: loads a dataset into the cache; returns the version id, with a
  ``Metrics`` artifact and a Markdown report.
* ``plan_op`` / ``commit_op``: a prefetch split over the pods of a ``dsl.ParallelFor``:
  ``plan_op`` returns the parts, each ``prefetch_op(part=, parts=, version=)`` loads one,
  ``commit_op`` commits once they all did.
* ``cache_status_op`` / ``verify_op``: whether a version is complete and intact
  (keys present / every checksum read and checked).
* ``evict_op``: removes a version unless a reader holds a live lease on it.
* ``components_for_image(image)``: the same components, run from a prebuilt image.

Discovery (needs only ``shardcache[k8s]``; it lives in :mod:`shardcache.discovery`):
``cache_url_from_k8s(service=, secret=)`` returns the URL of the Redis nodes behind a
Service and the password in a Secret.

Names load on first use, so the CLI can use discovery without kfp installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..discovery.kube import CacheEndpoint, cache_url_from_k8s, discover_cache, load_kube_config
    from .address import open_cache, resolve_cache_address
    from .components import (
        BASE_IMAGE,
        PACKAGES_TO_INSTALL,
        Components,
        cache_status_op,
        commit_op,
        component_file,
        components_for_image,
        evict_op,
        plan_op,
        prefetch_op,
        verify_op,
    )

__all__ = [
    # components
    "prefetch_op",
    "plan_op",
    "commit_op",
    "cache_status_op",
    "verify_op",
    "evict_op",
    "components_for_image",
    "Components",
    "component_file",
    "BASE_IMAGE",
    "PACKAGES_TO_INSTALL",
    # finding the cache
    "cache_url_from_k8s",
    "discover_cache",
    "load_kube_config",
    "CacheEndpoint",
    "open_cache",
    "resolve_cache_address",
]

_LAZY = {
    **dict.fromkeys(
        ("prefetch_op", "plan_op", "commit_op", "cache_status_op", "verify_op", "evict_op", "components_for_image",
         "Components", "component_file", "BASE_IMAGE", "PACKAGES_TO_INSTALL"),
        f"{__name__}.components",
    ),
    **dict.fromkeys(("cache_url_from_k8s", "discover_cache", "load_kube_config", "CacheEndpoint"),
                    "shardcache.discovery.kube"),
    **dict.fromkeys(("open_cache", "resolve_cache_address"), f"{__name__}.address"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
