"""Versions, no-ops, resumption after a kill, repair of evicted shards, and concurrent prefetchers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from shardcache.cache import ShardCache, connect
from shardcache.errors import DatasetLocked
from shardcache.prefetcher import Progress, prefetch, run_prefetch

from .conftest import cached_ids, image_table, kill_at, write_parquet_files

# Prints each progress call; once ``argv[4]`` shards are written it blocks (reading stdin) until the test
# kills it. While it blocks, no shard is read or submitted, and max_inflight of one shard keeps the writes
# not yet reported to about one: the kill lands midway whatever the scheduling. (With the default 64 MiB in
# flight, every shard could be submitted, and written, before the first progress call reported any.)
KILLER = textwrap.dedent(
    """
    import os, sys
    from shardcache.prefetcher import run_prefetch

    kill_after = int(sys.argv[4])

    def progress(p):
        print("done", p.shards_done, flush=True)
        if p.shards_done >= kill_after:
            sys.stdin.read()  # until the test kills this process
            os._exit(3)  # stdin closed, no kill: the test is gone; stop as a killed run would

    run_prefetch(sys.argv[1], dataset=sys.argv[2], cache=sys.argv[3], shard_size="8KiB", workers=2,
                 max_inflight="8KiB", progress=progress)
    print("finished", flush=True)
    """
)


def test_unchanged_source_is_a_noop_and_changed_source_a_new_version(
    cache: ShardCache, dataset_name: str, tmp_path: Path
) -> None:
    write_parquet_files(tmp_path, files=2, rows=200)
    first = run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="16KiB")
    assert first.state == "complete"
    assert first.written == first.shards > 1

    calls = []
    again = run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="16KiB",
                         progress=calls.append)
    assert again.noop
    assert again.written == 0
    assert again.skipped == first.shards
    assert again.version == first.version
    assert calls == []

    # Any option that changes the shards changes the version.
    other = run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="32KiB")
    assert other.version != first.version

    # Rewriting a file (new size/mtime) gives a new version; the old one is still listed.
    pq.write_table(image_table(10_000, 50), tmp_path / "part-001.parquet")
    changed = run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="16KiB")
    assert changed.version not in (first.version, other.version)
    assert cache.latest_version(dataset_name) == changed.version
    assert set(cache.versions(dataset_name)) == {first.version, other.version, changed.version}
    assert cached_ids(cache, changed.manifest) == list(range(200)) + list(range(10_000, 10_050))
    assert cache.delete(dataset_name, all_old=True)
    assert cache.versions(dataset_name) == [changed.version]


def test_evicted_and_truncated_shards_are_reloaded(cache: ShardCache, dataset_name: str, tmp_path: Path) -> None:
    write_parquet_files(tmp_path, files=1, rows=300)
    m = prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="16KiB")
    cache.client.delete(m.shards[1].key)
    cache.client.set(m.shards[2].key, b"truncated")
    report = run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="16KiB")
    assert report.written == 2
    assert report.skipped == m.num_shards - 2
    assert report.state == "complete"
    assert cached_ids(cache, report.manifest) == list(range(300))


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [1, 6])
def test_resume_after_sigkill(redis_url: str, cache: ShardCache, dataset_name: str, tmp_path: Path,
                              kill_after: int) -> None:
    write_parquet_files(tmp_path / "src", files=3, rows=200)
    with subprocess.Popen(
        [sys.executable, "-c", KILLER, str(tmp_path / "src"), dataset_name, redis_url, str(kill_after)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        reported = kill_at(proc, kill_after)
    interrupted = cache.manifest(dataset_name)
    assert interrupted.state == "loading"
    done_before = interrupted.cached_shards
    # Every shard it reported is recorded; besides those only the writes in flight can have landed.
    assert reported <= done_before < interrupted.num_shards

    report = run_prefetch(tmp_path / "src", dataset=dataset_name, cache=cache, shard_size="8KiB")
    assert report.state == "complete"
    assert report.version == interrupted.version
    assert report.skipped == done_before
    assert report.written == interrupted.num_shards - done_before
    ids = cached_ids(cache, report.manifest)
    assert Counter(ids) == Counter(range(600))
    assert ids == sorted(ids)
    assert cache.versions(dataset_name) == [interrupted.version]
    assert run_prefetch(tmp_path / "src", dataset=dataset_name, cache=cache, shard_size="8KiB").noop


def test_second_prefetcher_fails_fast_or_waits(redis_url: str, dataset_name: str, tmp_path: Path) -> None:
    write_parquet_files(tmp_path, files=2, rows=200)
    holding = threading.Event()
    release = threading.Event()
    results: dict[str, object] = {}

    def slow(p: Progress) -> None:
        if p.shards_done >= 2:
            holding.set()
            release.wait(30)

    def first() -> None:
        with connect(redis_url) as c:
            results["first"] = run_prefetch(tmp_path, dataset=dataset_name, cache=c, shard_size="16KiB",
                                            progress=slow)

    thread = threading.Thread(target=first, name="first-prefetcher")
    thread.start()
    try:
        assert holding.wait(30)
        with connect(redis_url) as c:
            with pytest.raises(DatasetLocked, match="being written by"):
                run_prefetch(tmp_path, dataset=dataset_name, cache=c, shard_size="16KiB")
            threading.Timer(0.5, release.set).start()
            waited = run_prefetch(tmp_path, dataset=dataset_name, cache=c, shard_size="16KiB", wait=30)
    finally:
        release.set()
        thread.join(60)
    first_report = results["first"]
    assert first_report.state == "complete"
    assert first_report.written == first_report.shards
    assert waited.noop
    assert waited.written == 0
    with connect(redis_url) as c:
        assert cached_ids(c, c.manifest(dataset_name)) == list(range(400))
        c.delete(dataset_name, force=True)


@pytest.mark.slow
def test_concurrent_prefetchers_in_processes_never_interleave(redis_url: str, dataset_name: str,
                                                              tmp_path: Path) -> None:
    write_parquet_files(tmp_path, files=2, rows=200)
    script = textwrap.dedent(
        """
        import sys, json
        from shardcache.prefetcher import run_prefetch
        r = run_prefetch(sys.argv[1], dataset=sys.argv[2], cache=sys.argv[3], shard_size="16KiB", wait=60)
        print(json.dumps({"written": r.written, "noop": r.noop, "state": r.state}))
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path), dataset_name, redis_url],
                         stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    import json

    reports = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    with connect(redis_url) as c:
        m = c.manifest(dataset_name)
        assert m.state == "complete"
        # One process loaded every shard; the other found the version complete.
        assert sorted(r["written"] for r in reports) == [0, m.num_shards]
        assert cached_ids(c, m) == list(range(400))
        c.delete(dataset_name, force=True)
