"""The component functions, before KFP wraps them (``components.py`` does).

Each is a KFP *lightweight* component: KFP copies the function's source into the
component YAML and runs it alone in the step's container, so every body imports
shardcache itself and uses nothing else from this module. Inputs are plain strings,
booleans and ints; an empty string means "not given". No input ever carries a
password: see :mod:`shardcache.kubeflow_components.address`.

This module must not use ``from __future__ import annotations``: KFP reads the
annotations (``Output[Metrics]``, the ``NamedTuple`` outputs) as live objects.
"""

from typing import NamedTuple

from kfp.dsl import Markdown, Metrics, Output

__all__ = ["cache_status_op", "evict_op", "prefetch_op", "verify_op"]


def prefetch_op(
    source: str,
    dataset: str,
    redis_url: str = "",
    k8s_service: str = "",
    k8s_secret: str = "",
    shard_size: str = "4MiB",
    compression: str = "",
    allow_partial: bool = False,
    wait: str = "1h",
    namespace: str = "",
    *,
    metrics: Output[Metrics],
    report: Output[Markdown],
) -> str:
    """Prefetch a dataset into the shardcache Redis Cluster; returns the version id.

    The version is a fingerprint of the source files and options: running the step
    again on unchanged data is a no-op, and a run killed midway resumes.

    Args:
        source: Where the data lives: a path or glob, file://, s3://, gs:// or hdfs://.
        dataset: The dataset's name in the cache.
        redis_url: The cache, e.g. redis://shardcache-redis:6379, without a password.
            Empty: use k8s_service, else $SHARDCACHE_REDIS_URL.
        k8s_service: A Service fronting the cache, found through its EndpointSlices ('name', 'namespace/name'
            or 'name.namespace').
        k8s_secret: A Secret holding the password (key 'password'), read through the API.
            Empty: $SHARDCACHE_REDIS_PASSWORD.
        shard_size: Target shard size, e.g. '4MiB'.
        compression: '', 'lz4' or 'zstd'.
        allow_partial: Cache as much as fits instead of failing when the cache is too small.
        wait: How long to wait while another run prefetches the same dataset, e.g. '1h' (then
            this step finds it cached and loads nothing). '0': fail at once with DatasetLocked.
        namespace: The namespace of k8s_service and k8s_secret. Empty: the pod's own.
        metrics: Shards, rows, bytes, MB/s, skipped and failed shards.
        report: The prefetch report, for people.
    """
    from shardcache.kubeflow_components import address, steps

    with address.open_cache(
        redis_url=redis_url, k8s_service=k8s_service, k8s_secret=k8s_secret, namespace=namespace
    ) as cache:
        result = steps.prefetch(
            cache, source=source, dataset=dataset, shard_size=shard_size, compression=compression,
            allow_partial=allow_partial, wait=wait,
        )
    steps.publish(result, metrics=metrics, report=report)
    return result.version


def cache_status_op(
    dataset: str,
    version: str = "",
    redis_url: str = "",
    k8s_service: str = "",
    k8s_secret: str = "",
    namespace: str = "",
    *,
    report: Output[Markdown],
) -> NamedTuple(  # type: ignore[valid-type]  # KFP needs the call form
    "CacheStatus",
    [("version", str), ("state", str), ("complete", bool), ("intact", bool), ("shards", int), ("missing", int)],
):
    """Whether a dataset version is complete and all its shards are in the cache (nothing is read).

    Args:
        dataset: The dataset's name in the cache.
        version: The version id. Empty: the newest.
        redis_url: The cache URL, without a password (see prefetch_op).
        k8s_service: A Service fronting the cache (see prefetch_op).
        k8s_secret: A Secret holding the password (see prefetch_op).
        namespace: The namespace of k8s_service and k8s_secret. Empty: the pod's own.
        report: The status, for people.

    Returns:
        version ('' when absent), state ('complete', 'loading' or 'absent'), complete,
        intact (complete and every shard key present), shards, missing.
    """
    from shardcache.kubeflow_components import address, steps

    with address.open_cache(
        redis_url=redis_url, k8s_service=k8s_service, k8s_secret=k8s_secret, namespace=namespace
    ) as cache:
        status = steps.dataset_status(cache, dataset=dataset, version=version)
    steps.publish(status, report=report)
    missing = len(status.missing) + len(status.uncached)
    return (status.version, status.state, status.complete, status.intact, status.shards, missing)


def verify_op(
    dataset: str,
    version: str = "",
    require_intact: bool = False,
    redis_url: str = "",
    k8s_service: str = "",
    k8s_secret: str = "",
    namespace: str = "",
    *,
    metrics: Output[Metrics],
    report: Output[Markdown],
) -> NamedTuple(  # type: ignore[valid-type]  # KFP needs the call form
    "Verification", [("version", str), ("intact", bool), ("missing", int), ("corrupted", int)]
):
    """Read every shard of a dataset version and check its checksum.

    Args:
        dataset: The dataset's name in the cache.
        version: The version id. Empty: the newest.
        require_intact: Fail the step unless the version is complete, every shard present and every checksum right.
        redis_url: The cache URL, without a password (see prefetch_op).
        k8s_service: A Service fronting the cache (see prefetch_op).
        k8s_secret: A Secret holding the password (see prefetch_op).
        namespace: The namespace of k8s_service and k8s_secret. Empty: the pod's own.
        metrics: Counts of shards cached, missing, corrupted and unreachable.
        report: The verification, for people.

    Returns:
        version ('' when absent), intact, missing (gone or never cached), corrupted (failed the checksum or unreadable).
    """
    from shardcache.kubeflow_components import address, steps

    with address.open_cache(
        redis_url=redis_url, k8s_service=k8s_service, k8s_secret=k8s_secret, namespace=namespace
    ) as cache:
        status = steps.verify_dataset(cache, dataset=dataset, version=version)
    steps.publish(status, metrics=metrics, report=report)
    if require_intact:
        status.check()
    missing = len(status.missing) + len(status.uncached)
    return (status.version, status.intact, missing, len(status.corrupted) + len(status.unreachable))


def evict_op(
    dataset: str,
    version: str = "",
    all_old: bool = False,
    fail_if_in_use: bool = False,
    redis_url: str = "",
    k8s_service: str = "",
    k8s_secret: str = "",
    namespace: str = "",
    *,
    report: Output[Markdown],
) -> NamedTuple(  # type: ignore[valid-type]  # KFP needs the call form
    "Eviction", [("status", str), ("removed", list)]
):
    """Remove a dataset version from the cache, unless a reader holds a live lease on it.

    A dataset in use is not removed and the step succeeds with status 'in_use' (set
    fail_if_in_use to fail instead): eviction is housekeeping, and a training job
    still reading the data is not an error. Run it again once the job has finished.

    Args:
        dataset: The dataset's name in the cache.
        version: The version id. Empty: every version (or, with all_old, every version but the newest).
        all_old: Remove every version but the newest.
        fail_if_in_use: Fail the step when a live lease keeps the data.
        redis_url: The cache URL, without a password (see prefetch_op).
        k8s_service: A Service fronting the cache (see prefetch_op).
        k8s_secret: A Secret holding the password (see prefetch_op).
        namespace: The namespace of k8s_service and k8s_secret. Empty: the pod's own.
        report: What was removed, or who holds the data.

    Returns:
        status ('removed', 'in_use', 'not_found' or 'nothing'), removed (the version ids removed).
    """
    from shardcache.kubeflow_components import address, steps

    with address.open_cache(
        redis_url=redis_url, k8s_service=k8s_service, k8s_secret=k8s_secret, namespace=namespace
    ) as cache:
        eviction = steps.evict_dataset(cache, dataset=dataset, version=version, all_old=all_old)
    steps.publish(eviction, report=report)
    if fail_if_in_use:
        eviction.check()
    return (eviction.status, list(eviction.removed))
