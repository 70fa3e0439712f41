"""ReadContext: everything a worker reads of its dataset for one iteration, in one frozen object.

The dataset builds it (:meth:`CachedDataset.read_context`) when an iteration starts, in the process
that reads: the main process, or each DataLoader worker from its own copy of the dataset (pickled for
spawned workers, copied by fork otherwise). The context is therefore never pickled itself, and its
``cache`` is the one that process already holds, which reconnects by itself after a fork. The worker
(``worker.py``) reads only this and the :class:`~.spec.IterSpec`, never the dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..cache import Manifest, ShardCache
from .mix import Mix, MixSource
from .plan import EpochPlan
from .source import ShardSource
from .stats import Counters
from .tensors import BufferPool, ColumnSpec

__all__ = ["ReadContext"]


@dataclass(frozen=True, kw_only=True)
class ReadContext:
    """What one iteration of a dataset reads, and how.

    Args:
        cache, manifest: where the shards are, and the version's table of them.
        columns: the batch layout of the columns read.
        plan: the epoch plan of the iteration's spec (rows, seed, shuffle, ranks, batches).
        shard_nbytes: the bytes of each shard, estimated for shards not cached yet.
        readahead: bytes of shards each worker may hold, loaded or loading.
        read_threads: shards loaded at the same time (None: the worker's default).
        transform: the user's function of each batch dict, or None.
        read_through, write_back, prefetch_transform: how shards the cache cannot serve are rebuilt.
        lease_ttl: seconds a reader's lease outlives a reader that died.
        output_pool: the main process's batch buffers, reused from epoch to epoch (None in workers).
        mix: the streams of a mix (global shard -> stream's version); None or one stream: ``manifest``'s.
    """

    cache: ShardCache
    manifest: Manifest
    columns: tuple[ColumnSpec, ...]
    plan: EpochPlan
    shard_nbytes: tuple[int, ...]
    readahead: int
    read_threads: int | None
    transform: Callable[[dict[str, Any]], Any] | None
    read_through: bool
    write_back: bool
    prefetch_transform: Callable[[Any], Any] | None
    lease_ttl: float
    output_pool: BufferPool | None = None
    mix: Mix | None = None

    @property
    def name(self) -> str:
        return self.manifest.name if self.mix is None else self.mix.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def versions(self) -> tuple[tuple[str, str], ...]:
        """``(name, version)`` of every version read: a reader holds a lease on each."""
        return ((self.manifest.name, self.manifest.version),) if self.mix is None else self.mix.versions

    def shard_source(self, counters: Counters) -> ShardSource | MixSource:
        """Loads the plan's (global) shards, counting into ``counters``."""
        if self.mix is None or len(self.mix.parts) == 1:
            transform = self.prefetch_transform if self.mix is None else self.mix.prefetch_transform_of(
                0, self.prefetch_transform)  # fmt: skip
            return ShardSource(
                cache=self.cache, manifest=self.manifest, counters=counters, read_through=self.read_through,
                write_back=self.write_back, prefetch_transform=transform,
            )  # fmt: skip
        return MixSource(
            cache=self.cache, mix=self.mix, counters=counters, read_through=self.read_through,
            write_back=self.write_back, prefetch_transform=self.prefetch_transform,
        )  # fmt: skip
