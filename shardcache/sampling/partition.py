"""The one split of an epoch's sample stream across ranks: contiguous parts whose sizes differ by at most one.

The loader's plan (:mod:`shardcache.dataloader.plan`) cuts each epoch's stream with it, and the
prefetcher's ``epoch0`` load order (:mod:`shardcache.prefetcher.order`) predicts from it which shards
each rank reads first; sharing the function keeps the two from drifting apart.

>>> partition(10, world_size=3).tolist()
[0, 4, 7, 10]
>>> partition(2, world_size=4).tolist()
[0, 1, 2, 2, 2]
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .shuffle import IdArray

__all__ = ["partition"]


def partition(total: int, *, world_size: int) -> IdArray:
    """Bounds of ``world_size`` contiguous parts of ``total`` samples: part ``r`` is ``[bounds[r], bounds[r + 1])``.

    The first ``total % world_size`` parts hold one sample more than the others, so part 0 is
    the longest and the last part the shortest.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, (int, np.integer)) or world_size < 1:
        raise ConfigError(f"world_size={world_size!r} must be an integer >= 1 (the number of ranks)")
    if isinstance(total, bool) or not isinstance(total, (int, np.integer)) or total < 0:
        raise ConfigError(f"total={total!r} must be an integer >= 0 (the samples to split)")
    quotient, rest = divmod(int(total), int(world_size))
    ranks = np.arange(world_size + 1, dtype=np.int64)
    return ranks * quotient + np.minimum(ranks, rest)
