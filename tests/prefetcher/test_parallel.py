"""Parallel prefetch: a version planned once, loaded in parts by separate processes, committed once."""

from __future__ import annotations

import gc
import json
import multiprocessing.connection
import multiprocessing.queues
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from shardcache.cache import ShardCache, connect
from shardcache.errors import (
    CapacityExceeded,
    ConfigError,
    DatasetLocked,
    DatasetNotFound,
    PrefetchFailed,
    SourceError,
)
from shardcache.prefetcher import (
    Progress,
    commit_prefetch,
    parallel_prefetch,
    part_range,
    plan_prefetch,
    run_prefetch,
)

from .conftest import assert_rebuilds, cached_ids, kill_at, write_parquet_files

SHARD = "8KiB"

# One part of a planned version in its own process, which blocks (reading stdin) in its progress call
# once argv[7] shards are written, until the test kills it: nothing more is read or submitted, and
# max_inflight of one shard keeps the writes not yet reported to about one (see kill_at).
SLOW_PART = textwrap.dedent(
    """
    import os, sys
    from shardcache.prefetcher import run_prefetch

    kill_after = int(sys.argv[7])

    def progress(p):
        print("done", p.shards_done, flush=True)
        if p.shards_done >= kill_after:
            sys.stdin.read()  # until the test kills this process
            os._exit(3)  # stdin closed, no kill: the test is gone; stop as a killed run would

    run_prefetch(sys.argv[1], dataset=sys.argv[2], cache=sys.argv[3], shard_size="8KiB", workers=1,
                 max_inflight="8KiB", part=int(sys.argv[4]), parts=int(sys.argv[5]), version=sys.argv[6],
                 progress=progress)
    print("finished", flush=True)
    """
)


def doubled(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A transform run in the parts: adds ``twice`` = 2 * id (module level: it travels to spawned processes)."""
    return batch.append_column("twice", pc.multiply(batch.column("id"), 2))


def picky(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A transform that fails on the rows with ids 500-509."""
    ids = batch.column("id")
    if pc.any(pc.and_(pc.greater_equal(ids, 500), pc.less(ids, 510))).as_py():
        raise ValueError("row 500-509 cannot be decoded")
    return batch


def dies_on_late_rows(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A transform whose process is killed by rows with ids >= 1000 (the last part's), as by the OOM killer."""
    if pc.max(batch.column("id")).as_py() >= 1000:
        os.kill(os.getpid(), signal.SIGKILL)
    return batch


def dies_mid_message(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Like :func:`dies_on_late_rows`, but the kill lands while the part reports to the parent: the part first
    takes what guards its channel to the parent and starts a message it never finishes."""
    if pc.max(batch.column("id")).as_py() >= 1000:
        partial = struct.pack("!i", 1 << 16) + b"cut short"  # a frame header, then a fraction of its bytes
        for obj in gc.get_objects():
            if isinstance(obj, multiprocessing.queues.Queue):  # a channel shared by the parts: its write lock
                obj._wlock.acquire()  # type: ignore[attr-defined]
            elif isinstance(obj, multiprocessing.connection.Connection) and obj.writable and not obj.closed:
                os.write(obj.fileno(), partial)
        os.kill(os.getpid(), signal.SIGKILL)
    return batch


def cached_or_planned_ids(manifest: object, index: int) -> list[int]:
    """The ids a shard's source segments hold (the source rows are ``id`` = row number here)."""
    shard = manifest.shards[index]  # type: ignore[attr-defined]
    ids: list[int] = []
    for segment in shard.source:
        k = int(Path(segment.uri).stem.split("-")[1])
        ids += range(k * 400 + segment.row_start, k * 400 + segment.row_stop)
    return ids


def shard_ttls(cache: ShardCache, keys: list[str]) -> list[int]:
    return [int(cache.call("PTTL", k)) for k in keys]


def test_part_range_is_disjoint_and_covers_every_shard() -> None:
    for shards in (0, 1, 7, 100, 101):
        for parts in (1, 2, 3, 4, 16):
            ranges = [part_range(shards, i, parts) for i in range(parts)]
            assert [i for r in ranges for i in r] == list(range(shards))
            assert max(map(len, ranges)) - min(map(len, ranges)) <= 1


@pytest.mark.slow
def test_parts_in_separate_processes_load_disjoint_shards_and_one_commit(
    redis_url: str, cache: ShardCache, dataset_name: str, tmp_path: Path
) -> None:
    write_parquet_files(tmp_path / "src", files=3, rows=200)
    src = str(tmp_path / "src")
    plan = plan_prefetch(src, dataset=dataset_name, cache=cache, parts=3, shard_size=SHARD)
    assert (plan.state, plan.parts, plan.parts_list, plan.missing) == ("loading", 3, [0, 1, 2], plan.shards)
    assert cache.manifest(dataset_name).state == "loading"

    # Each part is `shardcache prefetch --part I --parts 3` in its own process, all at once.
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "shardcache", "prefetch", src, "--dataset", dataset_name, "--redis", redis_url,
             "--shard-size", SHARD, "--part", str(i), "--parts", "3", "--version", plan.version, "--json"],
            stdout=subprocess.PIPE, text=True,
        )
        for i in range(3)
    ]
    reports = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        reports.append(json.loads(out))
    for i, report in enumerate(reports):
        assert (report["part"], report["parts"], report["state"]) == (i, 3, "loading")
        assert report["written"] == report["shards"] == len(plan.shards_of(i))  # its own range, nothing else
    assert sum(r["written"] for r in reports) == plan.shards
    assert cache.manifest(dataset_name).state == "loading"  # parts never commit

    done = commit_prefetch(src, dataset=dataset_name, cache=cache, version=plan.version, shard_size=SHARD)
    assert (done.state, done.noop) == ("complete", False)
    again = commit_prefetch(src, dataset=dataset_name, cache=cache, version=plan.version, shard_size=SHARD)
    assert again.noop  # committed exactly once
    manifest = cache.manifest(dataset_name)
    assert manifest.complete
    assert cache.call("EXISTS", cache.keys.done(dataset_name, plan.version)) == 0
    assert cached_ids(cache, manifest) == list(range(600))
    assert_rebuilds(cache, manifest)
    # The same bytes as one whole prefetch would write: the version is the source's, however loaded.
    assert run_prefetch(src, dataset=dataset_name, cache=cache, shard_size=SHARD).noop


@pytest.mark.slow
def test_parallel_prefetch_runs_the_transform_in_the_worker_processes(
    redis_url: str, cache: ShardCache, dataset_name: str, tmp_path: Path
) -> None:
    write_parquet_files(tmp_path, files=2, rows=300)
    seen: list[Progress] = []
    report = parallel_prefetch(tmp_path, dataset=dataset_name, processes=2, cache=redis_url, shard_size=SHARD,
                               transform=doubled, workers=2, progress=seen.append)
    assert (report.state, report.ok, report.written) == ("complete", True, report.shards)
    assert seen[-1].shards_done == seen[-1].shards_total == report.shards  # both parts' progress, summed
    manifest = cache.manifest(dataset_name)
    table = pa.concat_tables(cache.get_table(manifest, i) for i in range(manifest.num_shards))
    assert table.column("id").to_pylist() == list(range(600))
    assert table.column("twice").to_pylist() == [2 * i for i in range(600)]
    assert_rebuilds(cache, manifest, transform=doubled)

    again = parallel_prefetch(tmp_path, dataset=dataset_name, processes=2, cache=redis_url, shard_size=SHARD,
                              transform=doubled)
    assert again.noop
    with pytest.raises(ConfigError, match="worker processes"):
        parallel_prefetch(tmp_path, dataset=dataset_name, processes=2, cache=redis_url, transform=lambda b: b)


@pytest.mark.slow
def test_killed_part_is_rerun_alone_and_the_version_commits_once(
    redis_url: str, cache: ShardCache, dataset_name: str, tmp_path: Path
) -> None:
    write_parquet_files(tmp_path / "src", files=3, rows=400)  # 15 shards a part
    src = str(tmp_path / "src")
    plan = plan_prefetch(src, dataset=dataset_name, cache=cache, parts=3, shard_size=SHARD)
    with subprocess.Popen(
        [sys.executable, "-c", SLOW_PART, src, dataset_name, redis_url, "1", "3", plan.version, "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        reported = kill_at(proc, 1)
    for part in (0, 2):
        assert run_prefetch(src, dataset=dataset_name, cache=cache, shard_size=SHARD, part=part, parts=3).ok

    interrupted = cache.manifest(dataset_name)
    assert interrupted.state == "loading"
    killed = plan.shards_of(1)
    loaded = [i for i in killed if interrupted.shards[i].cached]
    assert reported <= len(loaded) < len(killed)
    with pytest.raises(PrefetchFailed, match=r"part 1: shards? .*--part 1 --parts 3") as refused:
        commit_prefetch(src, dataset=dataset_name, cache=cache, shard_size=SHARD)
    assert refused.value.report.state == "loading"
    assert cache.manifest(dataset_name).state == "loading"

    others = [interrupted.shards[i].key for p in (0, 2) for i in plan.shards_of(p)]
    ttls = shard_ttls(cache, others)
    time.sleep(0.05)
    # The re-run takes over the dead run's part lock at once and loads only what its range lacks.
    rerun = run_prefetch(src, dataset=dataset_name, cache=cache, shard_size=SHARD, part=1, parts=3,
                         version=plan.version)
    assert (rerun.written, rerun.skipped) == (len(killed) - len(loaded), len(loaded))
    for part in (0, 2):  # the other parts have nothing to do
        assert run_prefetch(src, dataset=dataset_name, cache=cache, shard_size=SHARD, part=part, parts=3).noop
    assert all(after <= before for after, before in zip(shard_ttls(cache, others), ttls, strict=True)), (
        "a shard of another part was rewritten"
    )

    commits = [commit_prefetch(src, dataset=dataset_name, cache=cache, shard_size=SHARD) for _ in range(2)]
    assert [c.noop for c in commits] == [False, True]
    manifest = cache.manifest(dataset_name)
    assert manifest.complete
    ids = cached_ids(cache, manifest)
    assert Counter(ids) == Counter(range(1200))
    assert_rebuilds(cache, manifest)


def test_two_runs_of_one_part_never_interleave(redis_url: str, dataset_name: str, tmp_path: Path) -> None:
    write_parquet_files(tmp_path, files=2, rows=200)
    plan = plan_prefetch(tmp_path, dataset=dataset_name, cache=redis_url, parts=2, shard_size=SHARD)
    holding, release = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def slow(p: Progress) -> None:
        if p.shards_done >= 1:
            holding.set()
            release.wait(30)

    def run(name: str, **kwargs: object) -> None:
        try:
            results[name] = run_prefetch(tmp_path, dataset=dataset_name, cache=redis_url, shard_size=SHARD, part=0,
                                         parts=2, **kwargs)  # type: ignore[arg-type]
        except Exception as exc:
            results[name] = exc

    first = threading.Thread(target=run, args=("first",), kwargs={"progress": slow})
    first.start()
    try:
        assert holding.wait(30)
        run("second")  # fails at once, naming the part
        waiter = threading.Thread(target=run, args=("waiter",), kwargs={"wait": 30.0})
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive()  # waits for the first run's lock
        # Another part is not held up.
        assert run_prefetch(tmp_path, dataset=dataset_name, cache=redis_url, shard_size=SHARD, part=1, parts=2).ok
    finally:
        release.set()
        first.join(60)
    waiter.join(60)
    assert isinstance(results["second"], DatasetLocked)
    assert f"part 0 of dataset {dataset_name!r}" in str(results["second"])
    first_report, waited = results["first"], results["waiter"]
    assert first_report.written == len(plan.shards_of(0))  # type: ignore[union-attr]
    assert waited.noop
    assert waited.written == 0


def test_a_failing_part_leaves_the_version_loading_with_a_clear_report(
    cache: ShardCache, dataset_name: str, tmp_path: Path
) -> None:
    write_parquet_files(tmp_path, files=3, rows=400)
    plan = plan_prefetch(tmp_path, dataset=dataset_name, cache=cache, parts=3, shard_size=SHARD, transform=picky)
    reports = [run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size=SHARD, transform=picky,
                            part=i, parts=3, version=plan.version) for i in range(3)]
    bad = [r for r in reports if r.failed]
    assert len(bad) == 1
    report = bad[0]
    assert report.part is not None
    assert {f.shard for f in report.failed} <= set(plan.shards_of(report.part))
    assert all("row 500-509 cannot be decoded" in f.reason for f in report.failed)
    assert f"(part {report.part} of 3)" in report.summary()
    message = str(report.failure())
    assert f"run part {report.part} of 3 again (--part {report.part} --parts 3)" in message
    assert f"of {dataset_name!r} (part {report.part} of 3) failed" in message
    with pytest.raises(PrefetchFailed, match=f"part {report.part}: shard"):
        commit_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size=SHARD, transform=picky)
    assert cache.manifest(dataset_name).state == "loading"


@pytest.mark.slow
def test_parallel_prefetch_reports_every_failed_shard_and_commits_nothing(
    cache: ShardCache, dataset_name: str, tmp_path: Path
) -> None:
    write_parquet_files(tmp_path, files=3, rows=400)
    combined = parallel_prefetch(tmp_path, dataset=dataset_name, processes=3, cache=cache, shard_size=SHARD,
                                 transform=picky)
    assert combined.state == "loading"
    assert combined.failed
    manifest = cache.manifest(dataset_name)
    assert manifest.state == "loading"
    failed = {f.shard for f in combined.failed}
    assert failed == {s.index for s in manifest.shards if not s.cached}
    # Exactly the shards holding the rows the transform refuses.
    assert failed == {s for s in range(manifest.num_shards)
                      if any(500 <= i < 510 for i in cached_or_planned_ids(manifest, s))}


@pytest.mark.slow
def test_a_part_process_that_dies_is_reported_and_nothing_is_committed(
    cache: ShardCache, dataset_name: str, tmp_path: Path
) -> None:
    write_parquet_files(tmp_path, files=3, rows=400)
    with pytest.raises(PrefetchFailed, match=r"part 2 \(exit code -9\) .* died before reporting") as info:
        parallel_prefetch(tmp_path, dataset=dataset_name, processes=3, cache=cache, shard_size=SHARD,
                          transform=dies_on_late_rows)
    manifest = cache.manifest(dataset_name)
    assert manifest.state == "loading"
    assert info.value.report.written == len(part_range(manifest.num_shards, 0, 3)) + len(
        part_range(manifest.num_shards, 1, 3))  # the other parts finished
    assert all(manifest.shards[i].cached for p in (0, 1) for i in part_range(manifest.num_shards, p, 3))


def test_a_part_killed_while_it_reports_never_blocks_the_others_or_the_parent(
    cache: ShardCache, dataset_name: str, tmp_path: Path
) -> None:
    write_parquet_files(tmp_path, files=3, rows=400)
    outcome: dict[str, BaseException | object] = {}

    def run() -> None:
        try:
            outcome["report"] = parallel_prefetch(tmp_path, dataset=dataset_name, processes=3, cache=cache,
                                                  shard_size=SHARD, transform=dies_mid_message)
        except BaseException as exc:
            outcome["error"] = exc

    runner = threading.Thread(target=run, name="parallel-prefetch", daemon=True)
    runner.start()
    runner.join(120)
    assert not runner.is_alive(), "the parallel prefetch hung on the killed part's channel"
    error = outcome.get("error")
    assert isinstance(error, PrefetchFailed), outcome
    assert re.search(r"part 2 \(exit code -9\) .* died before reporting", str(error)), error
    manifest = cache.manifest(dataset_name)
    assert manifest.state == "loading"
    done = [i for p in (0, 1) for i in part_range(manifest.num_shards, p, 3)]
    assert error.report.written == len(done)  # the other parts finished and reported
    assert all(manifest.shards[i].cached for i in done)


def test_a_part_refuses_a_source_changed_since_the_plan(cache: ShardCache, dataset_name: str, tmp_path: Path) -> None:
    paths = write_parquet_files(tmp_path, files=3, rows=100)
    plan = plan_prefetch(tmp_path, dataset=dataset_name, cache=cache, parts=2, shard_size=SHARD)
    paths[2].unlink()
    with pytest.raises(SourceError, match=f"not the planned {plan.version}"):
        run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size=SHARD, part=0, parts=2,
                     version=plan.version)
    # Without the pin, the listing is another version, which was never planned.
    with pytest.raises(DatasetNotFound, match="is not planned"):
        run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size=SHARD, part=0, parts=2)
    assert cache.manifest(dataset_name, plan.version).state == "loading"
    assert cache.manifest(dataset_name, plan.version).cached_shards == 0


def test_parts_must_match_the_plan(cache: ShardCache, dataset_name: str, tmp_path: Path) -> None:
    write_parquet_files(tmp_path, files=1, rows=200)
    plan_prefetch(tmp_path, dataset=dataset_name, cache=cache, parts=2, shard_size=SHARD)
    with pytest.raises(ConfigError, match="planned in 2 parts"):
        plan_prefetch(tmp_path, dataset=dataset_name, cache=cache, parts=3, shard_size=SHARD)
    with pytest.raises(ConfigError, match="planned in 2 parts, not 4"):
        run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size=SHARD, part=0, parts=4)
    for bad, match in (({"part": 2, "parts": 2}, "part=2"), ({"parts": 2}, "needs part="),
                       ({"part": 0, "parts": 0}, "parts=0"),
                       ({"part": 0, "parts": 2, "allow_partial": True}, "allow_partial")):
        with pytest.raises(ConfigError, match=match):
            run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size=SHARD, **bad)  # type: ignore[arg-type]


def test_a_whole_run_refuses_a_version_being_loaded_in_parts(
    cache: ShardCache, dataset_name: str, tmp_path: Path
) -> None:
    # The parts hold part locks, not the writer lock: a whole run would write the shards they are writing.
    write_parquet_files(tmp_path, files=2, rows=150)
    plan = plan_prefetch(tmp_path, dataset=dataset_name, cache=cache, parts=2, shard_size=SHARD)
    run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size=SHARD, part=0, parts=2, version=plan.version)
    with pytest.raises(ConfigError, match=r"being loaded in 2 parts: .*--part I --parts 2 .*--commit.*--processes 2"):
        run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size=SHARD)
    run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size=SHARD, part=1, parts=2, version=plan.version)
    commit_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size=SHARD)
    assert cache.manifest(dataset_name).state == "complete"
    report = run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size=SHARD)  # complete: a no-op
    assert report.noop


@pytest.mark.slow
def test_processes_with_a_metrics_port_serve_one_port_per_part(
    redis_url: str, dataset_name: str, tmp_path: Path, free_ports: Callable[..., int]
) -> None:
    write_parquet_files(tmp_path / "src", files=2, rows=200)
    port = free_ports(2, 29000, 29999, bus=False)  # parts 0 and 1 serve on port and port + 1
    env = {**os.environ, "SHARDCACHE_METRICS_PORT": str(port)}
    env.pop("LOCAL_RANK", None)
    out = subprocess.run(
        [sys.executable, "-m", "shardcache", "prefetch", str(tmp_path / "src"), "--dataset", dataset_name,
         "--redis", redis_url, "--shard-size", SHARD, "--processes", "2", "--json"],
        check=False, capture_output=True, text=True, env=env, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["state"] == "complete"


def test_capacity_check_covers_the_whole_version_at_plan_time(cluster_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cluster = cluster_factory(masters=3, replicas=0, maxmemory="12mb", maxmemory_policy="noeviction")
    # ~41 MB in 3 x 12 MB: each part alone (~10 MB) would fit, the version does not
    write_parquet_files(tmp_path / "src", files=4, rows=640, row_group_size=200, width=16_000)
    with connect(cluster.url) as cache:
        with pytest.raises(CapacityExceeded, match="needs about"):
            plan_prefetch(tmp_path / "src", dataset="big", cache=cache, parts=4, shard_size="1MiB")
        assert cache.datasets() == []  # nothing written


def test_errors_cross_processes_with_their_attributes() -> None:
    error = SourceError("gone", uri="s3://b/k", dataset="d", version="v", shard=3)
    back = pickle.loads(pickle.dumps(error))
    assert (type(back), str(back), back.uri, back.shard) == (SourceError, "gone", "s3://b/k", 3)
    failed = pickle.loads(pickle.dumps(PrefetchFailed("x", report={"a": 1})))
    assert failed.report == {"a": 1}
