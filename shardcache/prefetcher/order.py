"""The order in which shards are loaded.

``source`` loads them in source order (the fastest: files are read front to back).
``epoch0`` loads them in the order in which a loader with the given ``seed`` first
reads them in epoch 0, so a job started before the prefetch ends finds its first
shards cached. With ``world_size`` ranks, rank ``r`` reads part ``r`` of the shuffled
stream, so the ranks' first shards are interleaved: rank 0's first, rank 1's first...

>>> load_order([10, 10, 10], order="source")
[0, 1, 2]
>>> sorted(load_order([10, 10, 10], order="epoch0", seed=0))
[0, 1, 2]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from ..sampling import partition, row_offsets, shard_stream

__all__ = ["ORDERS", "load_order"]

ORDERS = ("source", "epoch0")


def load_order(rows: Sequence[int], *, order: str, seed: int = 0, world_size: int = 1) -> list[int]:
    """Every shard index once, in the order to load them."""
    if order not in ORDERS:
        raise ConfigError(f"order={order!r} is not one of {ORDERS}; 'epoch0' loads shards as epoch 0 reads them")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world_size={world_size!r} must be an integer >= 1 (the number of training ranks)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed={seed!r} must be an integer >= 0, the loader's seed")
    if order == "source" or not rows:
        return list(range(len(rows)))
    stream = shard_stream(rows, seed=seed, epoch=0)
    shard_of = np.searchsorted(row_offsets(rows), stream, side="right") - 1
    # Part r of the stream is what rank r reads: the loader's plan cuts it with the same partition().
    bounds = partition(len(stream), world_size=world_size)
    per_rank = []
    for r in range(world_size):
        part = shard_of[bounds[r] : bounds[r + 1]]
        _, first = np.unique(part, return_index=True)
        per_rank.append(part[np.sort(first)].tolist())
    seen: set[int] = set()
    out: list[int] = []
    for step in range(max((len(p) for p in per_rank), default=0)):
        for part_shards in per_rank:
            if step < len(part_shards) and part_shards[step] not in seen:
                seen.add(part_shards[step])
                out.append(part_shards[step])
    out += [i for i in range(len(rows)) if i not in seen]  # shards of zero rows
    return out
