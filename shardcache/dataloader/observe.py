"""What a CachedDataLoader shows the outside: its Prometheus metrics and its reader heartbeat.

Both read ``loader.stats()`` when asked (a scrape, a lease renewal), never on the batch path; the
observer holds the loader weakly, so exporting never keeps a loader alive.
"""

from __future__ import annotations

import json
import weakref
from typing import TYPE_CHECKING

from ..cache import Lease
from ..metrics.hooks import loader_made

if TYPE_CHECKING:
    from .loader import CachedDataLoader

__all__ = ["LoaderObserver"]


class LoaderObserver:
    """The loader's labels (dataset, version, rank) and counters, for :mod:`shardcache.metrics`."""

    def __init__(self, loader: CachedDataLoader) -> None:
        self._loader = weakref.ref(loader)

    @classmethod
    def attach(cls, loader: CachedDataLoader, metrics: object) -> LoaderObserver:
        """The observer of ``loader``, exported as ``metrics=`` says (see ``shardcache.metrics.resolve``)."""
        observer = cls(loader)
        loader_made(observer, metrics)
        return observer

    def _get(self) -> CachedDataLoader:
        loader = self._loader()
        if loader is None:
            raise ReferenceError("the loader is gone")
        return loader

    def metric_labels(self) -> tuple[str, ...]:
        ds = self._get().cached_dataset
        return ds.name, ds.version, str(ds.ranks()[0])

    def metric_values(self) -> dict[str, float]:
        loader = self._get()
        values = loader.stats().as_dict()
        values["epoch"] = loader.epoch
        return values

    def heartbeat(self) -> str:
        """The JSON a lease renewal publishes: what ``shardcache top`` shows of this reader."""
        loader = self._get()
        stats = loader.stats()
        rank, world_size = loader.cached_dataset.ranks()
        return json.dumps({
            "rank": rank, "world_size": world_size, "epoch": loader.epoch, "batches": stats.batches,
            "samples": stats.samples, "hits": stats.hits, "misses": stats.misses,
            "read_throughs": stats.read_throughs, "hit_ratio": round(stats.hit_ratio, 4),
            "wait_fraction": round(stats.wait_fraction, 4), "samples_per_second": round(stats.samples_per_second, 1),
        }, separators=(",", ":"))

    def reading(self, lease: Lease | None) -> None:
        """An iteration took ``lease``: publish the heartbeat with it (None: read without a lease)."""
        if lease is not None:
            lease.heartbeat(self.heartbeat)

    def __repr__(self) -> str:
        return f"LoaderObserver({self._loader()!r})"


