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

__all__ = ["cache_status_op", "commit_op", "evict_op", "plan_op", "prefetch_op", "verify_op"]


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
    part: int = -1,
    parts: int = 1,
    version: str = "",
    *,
    metrics: Output[Metrics],
    report: Output[Markdown],
) -> str:
    """Prefetch a dataset into the shardcache Redis Cluster; returns the version id.

    The version is a fingerprint of the source files and options: running the step
    again on unchanged data is a no-op, and a run killed midway resumes. With part and
    parts (inside a dsl.ParallelFor over plan_op's parts), the step loads one part of the
    version plan_op planned, and commit_op commits it.

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
        part: The part to load (0-based, from plan_op's parts); -1: the whole dataset, committed.
        parts: The number of parts the version was planned in (plan_op's parts input).
        version: The planned version (plan_op's version): the step fails if the source changed since.
        metrics: Shards, rows, bytes, MB/s, skipped and failed shards.
        report: The prefetch report, for people.
    """
    from shardcache.kubeflow_components import address, steps

    with address.open_cache(
        redis_url=redis_url, k8s_service=k8s_service, k8s_secret=k8s_secret, namespace=namespace
    ) as cache:
        result = steps.prefetch(
            cache, source=source, dataset=dataset, shard_size=shard_size, compression=compression,
            allow_partial=allow_partial, wait=wait, part=None if part < 0 else part, parts=parts,
            version=version,
        )
    steps.publish(result, metrics=metrics, report=report)
    return result.version


def plan_op(
    source: str,
    dataset: str,
    parts: int = 4,
    redis_url: str = "",
    k8s_service: str = "",
    k8s_secret: str = "",
    shard_size: str = "4MiB",
    compression: str = "",
    wait: str = "1h",
    namespace: str = "",
    *,
    report: Output[Markdown],
) -> list:
    """Plan a parallel prefetch: the version's shards, checked to fit, recorded as loading, split in parts.

    Returns one item per part, ``{"part": i, "parts": N, "version": V}``: run
    ``dsl.ParallelFor(plan.output) as item`` with ``prefetch_op(part=item.part, parts=item.parts,
    version=item.version)`` in it, then commit_op once every part is done.

    Args:
        source: Where the data lives (see prefetch_op).
        dataset: The dataset's name in the cache.
        parts: How many parts (pods) load the version.
        redis_url: The cache URL, without a password (see prefetch_op).
        k8s_service: A Service fronting the cache (see prefetch_op).
        k8s_secret: A Secret holding the password (see prefetch_op).
        shard_size: Target shard size, e.g. '4MiB' (give the parts and commit_op the same).
        compression: '', 'lz4' or 'zstd' (give the parts and commit_op the same).
        wait: How long to wait while another run holds the dataset's writer lock, e.g. '1h'.
        namespace: The namespace of k8s_service and k8s_secret. Empty: the pod's own.
        report: The plan (version, state, each part's shards), for people.
    """
    from shardcache.kubeflow_components import address, parallel, steps

    with address.open_cache(
        redis_url=redis_url, k8s_service=k8s_service, k8s_secret=k8s_secret, namespace=namespace
    ) as cache:
        plan = parallel.plan(cache, source=source, dataset=dataset, parts=parts, shard_size=shard_size,
                             compression=compression, wait=wait)
    steps.publish(plan, report=report)
    return plan.items()


def commit_op(
    source: str,
    dataset: str,
    parts_done: list,
    version: str = "",
    redis_url: str = "",
    k8s_service: str = "",
    k8s_secret: str = "",
    shard_size: str = "4MiB",
    compression: str = "",
    wait: str = "1h",
    namespace: str = "",
    *,
    metrics: Output[Metrics],
    report: Output[Markdown],
) -> str:
    """Commit a version loaded in parts, once every shard is in; returns the version id.

    Fails, naming the parts and shards to run again, while any shard is missing (the version stays
    loading); a version already complete is left as it is, so the commit happens exactly once.

    Args:
        source: Where the data lives: listed again, the commit fails if a file changed.
        dataset: The dataset's name in the cache.
        parts_done: The parts' outputs, dsl.Collected(prefetch_op(...).outputs["Output"]): the version
            each part loaded (one version: the planned one); the step runs after every part.
        version: The planned version. Empty: the one the parts name.
        redis_url: The cache URL, without a password (see prefetch_op).
        k8s_service: A Service fronting the cache (see prefetch_op).
        k8s_secret: A Secret holding the password (see prefetch_op).
        shard_size: Target shard size, as given to plan_op.
        compression: '', 'lz4' or 'zstd', as given to plan_op.
        wait: How long to wait while another run holds the dataset's writer lock, e.g. '1h'.
        namespace: The namespace of k8s_service and k8s_secret. Empty: the pod's own.
        metrics: Shards and rows committed.
        report: The commit, for people.
    """
    from shardcache.kubeflow_components import address, parallel, steps

    with address.open_cache(
        redis_url=redis_url, k8s_service=k8s_service, k8s_secret=k8s_secret, namespace=namespace
    ) as cache:
        result = parallel.commit(cache, source=source, dataset=dataset, version=version, parts_done=parts_done,
                                 shard_size=shard_size, compression=compression, wait=wait)
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
    """Remove a dataset version from the cache, unless a reader holds a live lease on it or a
    prefetch is writing it.

    A dataset in use (read by a training job, or a version being written by a prefetch) is not
    removed and the step succeeds with status 'in_use' (set fail_if_in_use to fail instead):
    eviction is housekeeping, and a job still using the data is not an error. Run it again
    once the job has finished.

    Args:
        dataset: The dataset's name in the cache.
        version: The version id. Empty: every version (or, with all_old, the old versions).
        all_old: Remove every version but the newest, and while the newest is loading, but the
            newest complete one too.
        fail_if_in_use: Fail the step when a live lease or a writing prefetch keeps the data.
        redis_url: The cache URL, without a password (see prefetch_op).
        k8s_service: A Service fronting the cache (see prefetch_op).
        k8s_secret: A Secret holding the password (see prefetch_op).
        namespace: The namespace of k8s_service and k8s_secret. Empty: the pod's own.
        report: What was removed, or who holds or writes the data.

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
