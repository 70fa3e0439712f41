"""The cache-aware PyTorch DataLoader: whole batches streamed from cached shards, exactly once per epoch.

>>> from shardcache.dataloader import CachedDataLoader                       # doctest: +SKIP
>>> loader = CachedDataLoader("imagenet-train", cache="redis://127.0.0.1:7000",
...                           batch_size=256, num_workers=4, pin_memory=True)  # doctest: +SKIP
>>> for epoch in range(10):                                                  # doctest: +SKIP
...     loader.set_epoch(epoch)
...     for batch in loader:
...         images, labels = batch["image"], batch["label"]

Modules: ``plan`` (which samples each rank reads, exactly once, elastic; over ``shardcache.sampling``),
``dataset`` and ``loader`` (the streaming classes), ``stream`` and ``mix`` (mixing datasets),
``mapdataset`` (random access by index, over ``shardlru``), ``context`` (what a worker reads, frozen),
``worker`` (one worker's batches), ``readahead`` (bounded shard prefetch), ``source`` (cache or
read-through), ``tensors`` and ``inplace`` (Arrow rows to tensors), ``state`` (the state dict), ``spec``
(what an iteration reads, shared with persistent workers), ``stats``, ``device``, ``sampler`` (``set_epoch``
from frameworks), ``accelerate`` (``accelerator.prepare`` keeps a CachedDataLoader as it is), ``hf``.

The public names import torch, so they load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .dataset import CachedDataset
    from .device import DevicePrefetcher, to_device
    from .loader import CachedDataLoader
    from .mapdataset import CachedMapDataset, MapStats
    from .stats import LoaderStats, StreamStats
    from .stream import Stream

__all__ = [
    "CachedDataset",
    "CachedDataLoader",
    "CachedMapDataset",
    "DevicePrefetcher",
    "LoaderStats",
    "MapStats",
    "Stream",
    "StreamStats",
    "to_device",
]

_MODULES = {
    "CachedDataset": "dataset",
    "CachedDataLoader": "loader",
    "CachedMapDataset": "mapdataset",
    "MapStats": "mapdataset",
    "DevicePrefetcher": "device",
    "to_device": "device",
    "LoaderStats": "stats",
    "StreamStats": "stats",
    "Stream": "stream",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'shardcache.dataloader' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
