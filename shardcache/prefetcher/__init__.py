"""The prefetcher: preload a dataset from where it lives into the cache, ahead of training.

>>> from shardcache.prefetcher import prefetch
>>> manifest = prefetch("/data/imagenet/train/", dataset="imagenet-train", format="files",
...                     label=True, cache="redis://127.0.0.1:7000")      # doctest: +SKIP

Sources are read through ``pyarrow.fs`` (local paths and globs, ``s3://``, ``gs://``,
``hdfs://``), in parquet, Arrow IPC/Feather, CSV, JSON Lines or as raw files. A re-run
of an unchanged, cached source is a no-op; a killed run resumes where it stopped.
:func:`read_source_shard` rebuilds any shard from the source, byte for byte.

A large source loads in parts, in separate processes or pods: :func:`plan_prefetch` plans the
version once, ``run_prefetch(..., part=i, parts=N)`` loads part ``i``, :func:`commit_prefetch`
commits once every shard is in; :func:`parallel_prefetch` does all three on one machine.
"""

from ..source.rebuild import read_source_shard
from .parts import PrefetchPlan, commit_prefetch, part_range, plan_prefetch
from .processes import parallel_prefetch
from .report import PrefetchReport, Progress, ShardFailure
from .run import prefetch, run_prefetch

__all__ = [
    "prefetch",
    "run_prefetch",
    "plan_prefetch",
    "commit_prefetch",
    "parallel_prefetch",
    "part_range",
    "PrefetchPlan",
    "read_source_shard",
    "PrefetchReport",
    "Progress",
    "ShardFailure",
]
