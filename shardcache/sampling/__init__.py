"""Sampling primitives shared by the loader's plan and the prefetcher's load order (numpy only, no torch).

>>> from shardcache.sampling import partition, shard_stream
>>> stream = shard_stream([3, 2], seed=0, epoch=0)
>>> sorted(stream.tolist())
[0, 1, 2, 3, 4]
>>> partition(len(stream), world_size=2).tolist()
[0, 3, 5]

Modules: ``shuffle`` (the seeded shard-then-row stream and the window shuffle), ``partition``
(the one contiguous split of a stream across ranks), ``mix`` (quotas and the stream of a mix) and
``passes`` (a mix stream's passes, so that no epoch that crosses into a new pass repeats a sample).
"""

from .mix import interleave, mix_stream, quotas, stream_take
from .partition import partition
from .shuffle import IdArray, default_window, row_offsets, shard_stream, window_shuffle

__all__ = [
    "IdArray",
    "default_window",
    "interleave",
    "mix_stream",
    "partition",
    "quotas",
    "row_offsets",
    "shard_stream",
    "stream_take",
    "window_shuffle",
]
