"""shardcache: a distributed in-memory dataset cache for ML training.

Prefetch a dataset into Redis Cluster as Arrow shards ahead of training, then stream
it into PyTorch DDP workers::

    import shardcache

    manifest = shardcache.prefetch("s3://bucket/train/", dataset="train", cache="redis://127.0.0.1:7000")
    loader = shardcache.CachedDataLoader("train", cache="redis://127.0.0.1:7000", batch_size=256)

The loader names import torch, so they are loaded on first use: ``import shardcache``
stays fast for the CLI and for prefetch-only jobs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cache import Manifest, ShardCache, connect
from .errors import (
    AccessDenied,
    CacheUnavailable,
    CapacityExceeded,
    ConfigError,
    DatasetInUse,
    DatasetLocked,
    DatasetNotFound,
    KubernetesError,
    ManifestCorrupted,
    PrefetchFailed,
    ShardCacheError,
    ShardCorrupted,
    ShardMissing,
    SourceError,
)

if TYPE_CHECKING:
    from .dataloader import CachedDataLoader, CachedDataset, CachedMapDataset, Stream
    from .prefetcher import prefetch

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # the store
    "connect",
    "ShardCache",
    "Manifest",
    # the two jobs
    "prefetch",
    "CachedDataset",
    "CachedDataLoader",
    "Stream",
    "CachedMapDataset",
    # errors
    "ShardCacheError",
    "ConfigError",
    "CacheUnavailable",
    "AccessDenied",
    "DatasetNotFound",
    "ShardMissing",
    "ShardCorrupted",
    "ManifestCorrupted",
    "CapacityExceeded",
    "DatasetLocked",
    "DatasetInUse",
    "SourceError",
    "PrefetchFailed",
    "KubernetesError",
]

_LAZY = {
    "prefetch": "shardcache.prefetcher",
    "CachedDataset": "shardcache.dataloader",
    "CachedDataLoader": "shardcache.dataloader",
    "Stream": "shardcache.dataloader",
    "CachedMapDataset": "shardcache.dataloader",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shardcache' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
