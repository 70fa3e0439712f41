"""Seeded permutations behind the sample plan: the shard-then-row stream and the window shuffle.

Every function is vectorised: Python loops run over distinct shard sizes or ranks, never over samples.
The random streams come from :class:`numpy.random.SeedSequence` keyed by ``(seed, epoch, ...)``, so
the same arguments give the same order in every process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["IdArray", "default_window", "row_offsets", "shard_stream", "window_shuffle"]

IdArray = npt.NDArray[np.int64]

# Distinct tags keep the shard/row stream and the per-rank windows statistically independent.
_STREAM_TAG = 0
_WINDOW_TAG = 1


def default_window(rows: Sequence[int]) -> int:
    """Four shards' worth of samples: ``4 * ceil(mean rows per shard)``, at least 1."""
    return max(1, 4 * math.ceil(sum(rows) / len(rows)))


def row_offsets(rows: Sequence[int]) -> IdArray:
    """Flat id of the first row of each shard, plus the total as a last element."""
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(np.asarray(rows, dtype=np.int64), out=offsets[1:])
    return offsets


def shard_stream(rows: Sequence[int], *, seed: int, epoch: int, stream: int = 0) -> IdArray:
    """Every flat sample id once: shards in a seeded random order, each shard's rows permuted.

    ``stream`` keys the permutation of one stream of a mix (stream 0 orders as a lone dataset does)."""
    sizes_in_source = np.asarray(rows, dtype=np.int64)
    offsets = row_offsets(rows)
    rng = np.random.default_rng([seed, epoch, _STREAM_TAG] + ([stream] if stream else []))
    order = rng.permutation(len(sizes_in_source))
    sizes = sizes_in_source[order]
    src_start = offsets[:-1][order]
    dst_start = np.zeros_like(sizes)
    np.cumsum(sizes[:-1], out=dst_start[1:])
    out = np.empty(int(offsets[-1]), dtype=np.int64)
    # Shards of one size form a matrix whose rows numpy permutes independently in one call, so the
    # loop runs once per distinct size (usually one or two), not once per shard.
    by_size = np.argsort(sizes, kind="stable")
    cuts = np.flatnonzero(np.diff(sizes[by_size])) + 1
    for group in np.split(by_size, cuts):
        size = int(sizes[group[0]])
        if size == 0:
            continue
        cols = np.arange(size, dtype=np.int64)
        block = src_start[group, None] + cols
        rng.permuted(block, axis=1, out=block)
        out[dst_start[group, None] + cols] = block
    return out


def window_shuffle(
    part: IdArray, *, window: int, seed: int, epoch: int, world_size: int, rank: int
) -> IdArray:
    """A copy of ``part`` with each consecutive block of ``window`` samples shuffled in place."""
    out = part.copy()
    if window <= 1 or len(out) <= 1:
        return out
    rng = np.random.default_rng([seed, epoch, _WINDOW_TAG, world_size, rank])
    full = len(out) // window * window
    blocks = out[:full].reshape(-1, window)
    rng.permuted(blocks, axis=1, out=blocks)
    rng.shuffle(out[full:])
    return out
