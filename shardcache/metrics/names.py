"""Every metric shardcache exports: its name, kind, help and labels, in one place.

Counters are named without ``_total`` here (``prometheus_client`` appends it in the exposition). The
Grafana dashboard in ``deploy/grafana`` may only query these names (``tests/test_metrics_deploy.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CLUSTER", "LOADER", "LOADER_LABELS", "PREFETCH", "PREFETCH_LABELS", "Family", "exposed_names",
]

LOADER_LABELS = ("dataset", "version", "rank")
PREFETCH_LABELS = ("dataset", "version")


@dataclass(frozen=True)
class Family:
    """One metric family. ``source`` is the key of the stats dict it is read from."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    labels: tuple[str, ...]
    source: str = ""

    @property
    def samples(self) -> tuple[str, ...]:
        """The sample names of the exposition (``_total`` on counters)."""
        return (f"{self.name}_total",) if self.kind == "counter" else (self.name,)


def _loader(kind: str, name: str, source: str, help: str) -> Family:
    return Family(f"shardcache_loader_{name}", kind, help, LOADER_LABELS, source)


# Read from CachedDataLoader.stats() (LoaderStats), summed over its workers, as the loader returns it.
LOADER = (
    _loader("counter", "batches", "batches", "Batches delivered to the training loop."),
    _loader("counter", "samples", "samples", "Samples delivered to the training loop."),
    _loader("counter", "shard_hits", "hits", "Shards read from the cache and verified."),
    _loader("counter", "shard_misses", "misses", "Shards the cache could not serve (missing, corrupt, unreachable)."),
    _loader("counter", "shards_corrupted", "corrupted", "Shards that failed the checksum or did not decode."),
    _loader("counter", "read_throughs", "read_throughs", "Shards rebuilt from the source."),
    _loader("counter", "written_back", "written_back", "Rebuilt shards written back into the cache."),
    _loader("counter", "read_bytes", "bytes_read", "Payload bytes read from the cache."),
    _loader("counter", "source_rows", "source_rows", "Rows read from the source by read-throughs."),
    _loader("counter", "wait_seconds", "wait_seconds", "Time the training loop waited for the next batch."),
    _loader("counter", "worker_wait_seconds", "worker_wait_seconds", "Time workers waited for shards, summed."),
    _loader("counter", "iteration_seconds", "elapsed_seconds", "Wall time of the iterations up to their last batch."),
    _loader("gauge", "hit_ratio", "hit_ratio", "hits / (hits + misses) since the loader was made."),
    _loader("gauge", "wait_fraction", "wait_fraction", "Fraction of the iteration time spent waiting for data."),
    _loader("gauge", "samples_per_second", "samples_per_second", "Samples per second of iteration time."),
    _loader("gauge", "epoch", "epoch", "The epoch the loader reads (or read last)."),
)


def _prefetch(kind: str, name: str, source: str, help: str) -> Family:
    return Family(f"shardcache_prefetch_{name}", kind, help, PREFETCH_LABELS, source)


# Read from the prefetch's Progress and PrefetchReport, the latest run of each dataset in this process.
PREFETCH = (
    _prefetch("gauge", "shards", "shards", "Shards of the version being loaded."),
    _prefetch("gauge", "shards_done", "shards_done", "Shards written, skipped as cached, or failed so far."),
    _prefetch("gauge", "shards_written", "written", "Shards written by this run."),
    _prefetch("gauge", "shards_skipped", "skipped", "Shards skipped as already cached."),
    _prefetch("gauge", "shards_failed", "failed", "Shards whose source failed."),
    _prefetch("gauge", "shards_uncached", "uncached", "Shards left uncached (allow_partial): read through."),
    _prefetch("gauge", "written_bytes", "bytes", "Payload bytes written by this run."),
    _prefetch("gauge", "planned_bytes", "bytes_total", "Payload bytes the run expects to write (an estimate)."),
    _prefetch("gauge", "progress_ratio", "progress", "shards_done / shards."),
    _prefetch("gauge", "bytes_per_second", "rate", "Payload bytes written per second of this run."),
    _prefetch("gauge", "elapsed_seconds", "seconds", "Seconds since the run started (its length once over)."),
    Family("shardcache_prefetch_state", "gauge", "1 for the run's state: running, complete, loading or failed.",
           (*PREFETCH_LABELS, "state"), "state"),
)

# Read from the cluster by `shardcache exporter` (ClusterCollector), at scrape time.
CLUSTER = (
    Family("shardcache_up", "gauge", "1 when the cache answered this scrape in time.", ()),
    Family("shardcache_node_used_memory_bytes", "gauge", "used_memory of a primary (INFO memory).", ("node",)),
    Family("shardcache_node_maxmemory_bytes", "gauge", "maxmemory of a primary, 0 for none.", ("node",)),
    Family("shardcache_dataset_versions", "gauge", "Versions of a dataset in the cache.", ("dataset",)),
    Family("shardcache_dataset_shards", "gauge", "Shards of the newest version.", ("dataset", "version", "state")),
    Family("shardcache_dataset_cached_shards", "gauge", "Shards of the newest version recorded as cached.",
           ("dataset", "version", "state")),
    Family("shardcache_dataset_bytes", "gauge", "Payload bytes of the newest version.",
           ("dataset", "version", "state")),
    Family("shardcache_dataset_rows", "gauge", "Rows of the newest version.", ("dataset", "version", "state")),
    Family("shardcache_dataset_leases", "gauge", "Live reader leases on a version.", ("dataset", "version")),
    Family("shardcache_reader_hit_ratio", "gauge", "A live reader's hit ratio (its heartbeat).",
           ("dataset", "version", "rank", "holder")),
    Family("shardcache_reader_wait_fraction", "gauge", "A live reader's data-wait fraction (its heartbeat).",
           ("dataset", "version", "rank", "holder")),
)


def exposed_names() -> set[str]:
    """Every sample name shardcache can expose."""
    return {sample for family in (*LOADER, *PREFETCH, *CLUSTER) for sample in family.samples}
