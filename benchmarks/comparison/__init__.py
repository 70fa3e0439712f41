"""The parts of ``benchmarks/compare.py``, the comparative benchmark (``shardcache bench``).

One module per concern; the harness in ``compare.py`` wires them together:

- ``config``      BenchConfig: the options, the dataset sized to the machine
- ``dataset``     the synthetic dataset (raw arrays + Parquet), or an accepted Parquet dataset
- ``services``    the local Redis Cluster and the moto S3 server the run starts itself
- ``peers``       the separate virtualenv for MosaicML Streaming and LitData
- ``systems``     the measured systems, as child-process specs
- ``rounds``      running the systems round by round in fresh processes; medians
- ``report``      the table, the targets (PASS/MISS), the JSON and the chart
- ``scaling``     dataset x1/x2/x4 and shard size 1/4/8 MiB
- ``profile``     ``--profile``: py-spy records of measured runs, summarised per thread
- ``quality``     how well a shuffled run shuffled: mean move of a sample, source shards per batch
- ``random_access``  ``--random-access``: CachedMapDataset by random index against the streaming
                  loader and Parquet read by row group (its runs and its table)
- ``child``, ``peer_child``   the measured runs (in the main and the peers virtualenv)
- ``rss``, ``drive``, ``entry``   stdlib-only helpers both child kinds share

Nothing is imported here, so the peers interpreter (no pyarrow, no shardcache) can
import ``comparison.peer_child``.
"""

__all__: list[str] = []
