"""The prefetcher under faults: SIGKILLed at random points, two racing, Redis out of memory.

After each fault the dataset is either complete and exactly its source (every id once, in
source order, every shard passing its checksum) or the fault is reported by a clear error;
a re-run always finishes the job.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from shardcache.cache import ShardCache
from shardcache.errors import CapacityExceeded
from shardcache.localcluster import LocalCluster
from shardcache.prefetcher import run_prefetch

from .harness import SHARD_SIZE, assert_exactly_once, cached_ids, unique_name, write_source

pytestmark = pytest.mark.faults

JOB = Path(__file__).with_name("prefetch_job.py")


def start_job(url: str, source: Path, dataset: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(JOB), url, str(source), dataset, "--shard-size", SHARD_SIZE, *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", line + proc.communicate()[1]
    return proc


def assert_consistent(cache: ShardCache, dataset: str, expected: range) -> None:
    """One complete version whose shards hold exactly ``expected``, in order, all verified."""
    manifest = cache.manifest(dataset)
    assert manifest.complete
    assert cache.versions(dataset) == [manifest.version]
    assert cache.missing_shards(manifest) == []
    ids = cached_ids(cache, manifest)
    assert_exactly_once(ids, expected)
    assert ids == list(expected), "the shards hold the source's rows out of order"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_prefetcher_sigkilled_at_a_random_point_then_rerun_completes(
    seed: int, make_cluster: Callable[..., LocalCluster], caches: Callable[..., ShardCache], source: Path,
) -> None:
    cluster = make_cluster(masters=3, replicas=0)
    cache = caches(cluster.url)
    dataset = unique_name("killed")
    rng = random.Random(seed)
    kill_after = rng.randrange(0, 24)  # shards reported done; 24 shards in all

    proc = start_job(cluster.url, source, dataset, "--pause", "0.01")
    assert proc.stdout is not None
    done = 0
    while done < kill_after:
        line = proc.stdout.readline()
        assert line.startswith("progress"), line + proc.communicate()[1]
        done = int(line.split()[1])
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    # The killed writer's lock outlives it until its TTL; a re-run on the same host sees that the
    # holder's process is gone and takes the lock over at once.
    report = run_prefetch(source, dataset=dataset, cache=cache, shard_size=SHARD_SIZE)
    assert report.state == "complete"
    assert report.ok
    assert report.written + report.skipped == report.shards == 24
    assert_consistent(cache, dataset, range(2400))


@pytest.mark.slow
def test_two_prefetchers_of_different_sources_race_never_a_mixed_dataset(
    tmp_path: Path, make_cluster: Callable[..., LocalCluster], caches: Callable[..., ShardCache],
) -> None:
    cluster = make_cluster(masters=3, replicas=0)
    cache = caches(cluster.url)
    dataset = unique_name("race")
    first = write_source(tmp_path / "a", rows=2400, start=0)
    second = write_source(tmp_path / "b", rows=2400, start=100_000)
    jobs = [start_job(cluster.url, src, dataset, "--go", "--pause", "0.02") for src in (first, second)]
    for job in jobs:
        assert job.stdin is not None
        job.stdin.write("go\n")
        job.stdin.flush()
    results = []
    for job in jobs:
        out, err = job.communicate(timeout=120)
        results.append((job.returncode, out.strip().splitlines()[-1], err))

    winners = [k for k, (code, _, _) in enumerate(results) if code == 0]
    assert winners, results
    for code, last, err in results:
        if code != 0:  # the loser says clearly why, and what to do
            assert last.startswith("error DatasetLocked"), (last, err)
            assert dataset in last
            assert "wait" in last
    manifest = cache.manifest(dataset)
    assert manifest.complete
    ids = cached_ids(cache, manifest)
    assert ids in (list(range(2400)), list(range(100_000, 102_400))), "a mixed dataset"
    for version in cache.versions(dataset):  # a loser that got as far as begin() left nothing mixed
        other = cache.manifest(dataset, version)
        if other.complete:
            assert cached_ids(cache, other) in (list(range(2400)), list(range(100_000, 102_400)))


@pytest.mark.slow
def test_two_prefetchers_of_one_source_with_wait_both_finish(
    make_cluster: Callable[..., LocalCluster], caches: Callable[..., ShardCache], source: Path,
) -> None:
    cluster = make_cluster(masters=3, replicas=0)
    cache = caches(cluster.url)
    dataset = unique_name("race-wait")
    jobs = [start_job(cluster.url, source, dataset, "--go", "--pause", "0.01", "--wait", "60") for _ in range(2)]
    for job in jobs:
        assert job.stdin is not None
        job.stdin.write("go\n")
        job.stdin.flush()
    reports = []
    for job in jobs:
        out, err = job.communicate(timeout=120)
        assert job.returncode == 0, out + err
        reports.append(json.loads(out.strip().splitlines()[-1].removeprefix("done ")))
    # One loaded every shard; the other waited for the lock, then found the version complete.
    assert sorted(r["written"] for r in reports) == [0, 24]
    assert_consistent(cache, dataset, range(2400))


def test_redis_out_of_memory_midway_is_a_clean_capacity_error_then_resumes(
    make_cluster: Callable[..., LocalCluster], caches: Callable[..., ShardCache], source: Path,
) -> None:
    cluster = make_cluster(masters=3, replicas=0, maxmemory="64mb", maxmemory_policy="noeviction")
    cache = caches(cluster.url)
    dataset = unique_name("oom")
    nodes = [redis.Redis(port=p) for p in cluster.ports]
    starved = []

    def starve_after_a_few_shards(progress: object) -> None:
        # The capacity check passed; now memory "runs out" under the prefetcher's feet.
        if not starved and getattr(progress, "shards_done", 0) >= 5:
            for node in nodes:
                node.config_set("maxmemory", 1024 * 1024)
            starved.append(True)

    with pytest.raises(CapacityExceeded) as caught:
        run_prefetch(source, dataset=dataset, cache=cache, shard_size=SHARD_SIZE, workers=1, max_inflight="16KiB",
                     progress=starve_after_a_few_shards)
    message = str(caught.value)
    assert "out of memory" in message, message
    # The node that said OOM, with its own figures: cluster-wide free bytes alone would mislead.
    assert caught.value.node in [f"127.0.0.1:{p}" for p in cluster.ports]
    assert re.search(rf"node {caught.value.node} uses [\d.]+ [KM]iB of its maxmemory 1\.0 MiB", message), message
    assert re.search(r"under maxmemory [\d.]+ MiB, [\d.]+ [KM]?i?B free", message), message
    assert caught.value.available is not None
    partial = cache.manifest(dataset)
    assert partial.state == "loading"
    assert 5 <= partial.cached_shards < partial.num_shards

    for node in nodes:
        node.config_set("maxmemory", 64 * 1024 * 1024)
    report = run_prefetch(source, dataset=dataset, cache=cache, shard_size=SHARD_SIZE)
    assert report.state == "complete"
    assert report.skipped == partial.cached_shards
    assert_consistent(cache, dataset, range(2400))
    for node in nodes:
        node.close()


@pytest.mark.slow
def test_primary_killed_mid_prefetch_with_replicas_rides_through(
    make_cluster: Callable[..., LocalCluster], caches: Callable[..., ShardCache], source: Path,
) -> None:
    cluster = make_cluster(masters=3, replicas=1)
    cache = caches(cluster.url, deadline=15.0)  # longer than the failover
    dataset = unique_name("prefetch-failover")
    killed = []

    def kill_a_primary(progress: object) -> None:
        if not killed and getattr(progress, "shards_done", 0) >= 6:
            victim = cluster.primaries()[0].port
            cluster.kill_node(victim)
            killed.append(victim)

    report = run_prefetch(source, dataset=dataset, cache=cache, shard_size=SHARD_SIZE, workers=1,
                          max_inflight="16KiB", progress=kill_a_primary)
    assert killed
    assert report.state == "complete"
    assert report.written == 24
    assert cache.stats.retries > 0, "the kill did not land mid-prefetch"
    assert_consistent(cache, dataset, range(2400))
