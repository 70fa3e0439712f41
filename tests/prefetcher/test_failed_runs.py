"""What a failed, killed or removed prefetch leaves behind: what `ls`, `info`, loaders, the next prefetch and
`rm` see, and that nothing of it outlives `rm` (not even from a writer still running)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from shardcache.cache import ShardCache, connect
from shardcache.cli import cli
from shardcache.dataloader import CachedDataLoader
from shardcache.errors import CapacityExceeded, ConfigError, DatasetLocked, DatasetNotFound, SourceError
from shardcache.prefetcher import Progress, plan_prefetch, run_prefetch

from .conftest import cached_ids, image_table, kill_at, write_parquet_files
from .test_resume import KILLER

THIS_HOST = f"{socket.gethostname()}/{os.stat('/proc/self/ns/pid').st_ino}"  # as lock tokens name it

# One part of a planned version in its own process; after its second shard it waits for a line on stdin
# (the test's go-ahead), then goes on writing.
PAUSED_PART = textwrap.dedent(
    """
    import sys
    from shardcache.prefetcher import run_prefetch

    paused = False

    def progress(p):
        global paused
        print("done", p.shards_done, flush=True)
        if p.shards_done >= 2 and not paused:
            paused = True
            sys.stdin.readline()

    run_prefetch(sys.argv[1], dataset=sys.argv[2], cache=sys.argv[3], shard_size="8KiB", workers=1,
                 max_inflight="8KiB", part=int(sys.argv[4]), parts=int(sys.argv[5]), version=sys.argv[6],
                 progress=progress)
    print("finished", flush=True)
    """
)


def cli_run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def keys_of(cache: ShardCache, name: str) -> list[str]:
    """Every key of dataset ``name`` on every primary: metadata, records, locks and shard chunks."""
    found: list[str] = []
    prefix = cache.keys.prefix
    for pattern in (f"{prefix}{{d={name}}}*", f"{prefix}s:{name}:*"):
        for node in cache.client.get_primaries():  # type: ignore[union-attr]
            found += [k.decode() for k in cache.client.keys(pattern, target_nodes=node)]  # type: ignore[call-arg]
    return sorted(found)


def shard_keys(cache: ShardCache, name: str) -> list[str]:
    return [k for k in keys_of(cache, name) if k.startswith(f"{cache.keys.prefix}s:")]


def corrupt_pages(path: Path) -> None:
    """Overwrite the start of the image column's first page: the footer reads, the rows do not."""
    data = bytearray(path.read_bytes())
    start = pq.ParquetFile(path).metadata.row_group(0).column(1).data_page_offset + 40
    data[start : start + 2000] = b"\xff" * 2000
    path.write_bytes(bytes(data))


def ids_read(name: str, cache: ShardCache) -> list[int]:
    ids: list[int] = []
    for batch in CachedDataLoader(name, cache=cache, batch_size=64):
        ids += batch["id"].tolist()
    return ids


def test_a_prefetch_failing_at_file_k_of_n_stays_visible_resumes_and_rm_reclaims_it(
    redis_url: str, cache: ShardCache, dataset_name: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    paths = write_parquet_files(src, files=4, rows=300, row_group_size=300, width=512)
    corrupt_pages(paths[2])
    common = [str(src), "--dataset", dataset_name, "--redis", redis_url, "--shard-size", "64KiB"]

    first = cli_run("prefetch", *common, "--json")
    assert first.exit_code == 1
    report = json.loads(first.stdout)
    assert report["state"] == "loading"
    failed = {f["shard"] for f in report["failed"]}
    assert failed
    assert {f["source"] for f in report["failed"]} == {str(paths[2])}
    manifest = cache.manifest(dataset_name)
    assert manifest.state == "loading"
    assert {s.index for s in manifest.shards if not s.cached} == failed  # the good files' shards are kept
    assert cache.call("GET", cache.keys.lock(dataset_name)) is None  # the writer lock was released
    assert len(shard_keys(cache, dataset_name)) == manifest.cached_shards  # one chunk each here

    # `ls` and `info` show the version as loading, with the memory its shards hold.
    listed = json.loads(cli_run("ls", "--redis", redis_url, "--json").stdout)
    row = next(r for r in listed if r["dataset"] == dataset_name)
    assert (row["state"], row["cached"], row["shards"]) == ("loading", manifest.cached_shards, manifest.num_shards)
    assert row["bytes"] == manifest.nbytes > 0
    info = json.loads(cli_run("info", dataset_name, "--redis", redis_url, "--json").stdout)
    assert (info["state"], info["cached_shards"], info["bytes"]) == ("loading", manifest.cached_shards, manifest.nbytes)
    assert info["writers"] == []  # no prefetch is loading it: `info` says so, and what to run
    text = cli_run("info", dataset_name, "--redis", redis_url).stdout
    assert "no prefetch is loading it (it failed or was killed): run the same prefetch again" in text
    assert f"`shardcache rm {dataset_name} --version {manifest.version}`" in text

    # A loader reads the loading version: what is cached from Redis, the rest through from the source,
    # where the corrupt file stops it with an error that names the file (never a silently short epoch).
    with pytest.raises(SourceError, match=r"part-002\.parquet"):
        ids_read(dataset_name, cache)

    # The next prefetch resumes the same version: it loads nothing that is cached and fails the same shards.
    again = cli_run("prefetch", *common, "--json")
    assert again.exit_code == 1
    resumed = json.loads(again.stdout)
    assert (resumed["version"], resumed["written"], resumed["skipped"]) == (manifest.version, 0,
                                                                          manifest.cached_shards)
    assert {f["shard"] for f in resumed["failed"]} == failed

    # `rm` removes it whole: every chunk, record and key of the dataset.
    removed = cli_run("rm", dataset_name, "--redis", redis_url)
    assert removed.exit_code == 0, removed.output
    assert manifest.version in removed.stdout
    assert keys_of(cache, dataset_name) == []
    assert dataset_name not in cache.datasets()

    # Once the file is good again, the prefetch loads every row, exactly once.
    pq.write_table(image_table(2 * 300, 300, width=512), paths[2], row_group_size=300)
    done = run_prefetch(src, dataset=dataset_name, cache=cache, shard_size="64KiB")
    assert done.state == "complete"
    assert cached_ids(cache, done.manifest) == list(range(1200))  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_sigkilled_prefetch_is_read_through_and_removed_at_once(
    redis_url: str, cache: ShardCache, dataset_name: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write_parquet_files(src, files=3, rows=200)
    with subprocess.Popen(
        [sys.executable, "-c", KILLER, str(src), dataset_name, redis_url, "4"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        kill_at(proc, 4)
    killed = cache.manifest(dataset_name)
    assert killed.state == "loading"
    assert 0 < killed.cached_shards < killed.num_shards
    # The dead prefetcher's lock lives on until its TTL; it blocks neither `rm` nor the next prefetch here.
    assert cache.call("GET", cache.keys.lock(dataset_name)) is not None

    # A loader on the loading version reads every row once: the cached shards from Redis, the rest
    # through from the source.
    assert Counter(ids_read(dataset_name, cache)) == Counter(range(600))

    removed = cli_run("rm", dataset_name, "--redis", redis_url)
    assert removed.exit_code == 0, removed.output
    assert keys_of(cache, dataset_name) == [cache.keys.lock(dataset_name)]  # the dead one's, until its TTL
    assert 0 < int(cache.call("PTTL", cache.keys.lock(dataset_name))) <= 15_000


def test_rm_refuses_while_a_prefetch_loads_and_force_leaves_nothing_behind(
    redis_url: str, cache: ShardCache, dataset_name: str, tmp_path: Path
) -> None:
    write_parquet_files(tmp_path, files=2, rows=200)
    holding, release = threading.Event(), threading.Event()
    outcome: dict[str, BaseException | object] = {}

    def slow(p: Progress) -> None:
        if p.shards_done >= 2:
            holding.set()
            release.wait(30)

    def prefetcher() -> None:
        with connect(redis_url) as c:
            try:
                outcome["report"] = run_prefetch(tmp_path, dataset=dataset_name, cache=c, shard_size="8KiB",
                                                 workers=1, progress=slow)
            except BaseException as exc:
                outcome["error"] = exc

    thread = threading.Thread(target=prefetcher, name="prefetcher")
    thread.start()
    try:
        assert holding.wait(30), outcome
        refused = cli_run("rm", dataset_name, "--redis", redis_url)
        assert refused.exit_code == 1
        assert "Traceback" not in refused.output
        line = refused.stderr.strip()
        assert len(line.splitlines()) == 1
        assert "is still loading: a prefetch is writing it" in line
        assert "add --force to the same `shardcache rm` command" in line
        assert cache.manifest(dataset_name).state == "loading"  # nothing was removed
        info = json.loads(cli_run("info", dataset_name, "--redis", redis_url, "--json").stdout)
        assert len(info["writers"]) == 1
        assert info["writers"][0].startswith(f"a prefetch is writing it ({THIS_HOST}:{os.getpid()}:")

        assert cli_run("rm", dataset_name, "--redis", redis_url, "--force").exit_code == 0
    finally:
        release.set()
        thread.join(60)
    error = outcome.get("error")
    assert isinstance(error, DatasetNotFound), outcome
    assert "was removed" in str(error)
    # The prefetcher wrote on after `rm` until it found the version gone: none of it stays.
    assert keys_of(cache, dataset_name) == []
    assert dataset_name not in cache.datasets()


@pytest.mark.slow
def test_rm_of_a_version_loading_in_parts_refuses_then_force_and_no_part_re_creates_it(
    redis_url: str, cache: ShardCache, dataset_name: str, tmp_path: Path
) -> None:
    write_parquet_files(tmp_path, files=3, rows=400)
    plan = plan_prefetch(tmp_path, dataset=dataset_name, cache=cache, parts=2, shard_size="8KiB")
    part = subprocess.Popen(
        [sys.executable, "-c", PAUSED_PART, str(tmp_path), dataset_name, redis_url, "1", "2", plan.version],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert part.stdout is not None
        for line in part.stdout:  # until it waits, after its second shard (or EOF: then the asserts fail)
            if line.startswith("done") and int(line.split()[1]) >= 2:
                break
        refused = f"version {plan.version} of .* is still loading: part 1 of its prefetch is writing it"
        with pytest.raises(DatasetLocked, match=refused):
            cache.delete(dataset_name)
        assert cache.manifest(dataset_name, plan.version).state == "loading"
        assert cache.delete(dataset_name, force=True) == [plan.version]
        out, err = part.communicate(input="go\n", timeout=120)  # it writes on into the removed version
    finally:
        if part.poll() is None:
            part.kill()
    assert part.returncode != 0
    assert "finished" not in out
    assert "DatasetNotFound" in err
    assert "was removed" in err
    assert keys_of(cache, dataset_name) == []
    # The part, run again, finds no plan rather than begin half a version.
    with pytest.raises(DatasetNotFound, match="is not planned"):
        run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="8KiB", part=0, parts=2,
                     version=plan.version)
    assert keys_of(cache, dataset_name) == []


def test_parts_and_allow_partial_never_write_into_a_committed_version(
    redis_url: str, cache: ShardCache, dataset_name: str, tmp_path: Path
) -> None:
    write_parquet_files(tmp_path, files=2, rows=200)
    committed = run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="8KiB").manifest
    assert committed is not None
    assert committed.complete
    common = [str(tmp_path), "--dataset", dataset_name, "--redis", redis_url, "--shard-size", "8KiB"]
    for flags in (["--part", "0", "--parts", "2"], ["--commit"], ["--processes", "2"], ["--plan-only", "--parts", "2"]):
        result = cli_run("prefetch", *common, "--allow-partial", *flags)
        assert result.exit_code == 2, (flags, result.output)
        assert f"--allow-partial does not apply to {flags[0]}" in result.output
    with pytest.raises(ConfigError, match="allow_partial does not apply to a part"):
        run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="8KiB", part=0, parts=2,
                     allow_partial=True)
    assert cache.manifest(dataset_name) == committed

    # A part of a committed version only restores a shard it records (evicted), byte for byte.
    cache.client.delete(cache.keys.chunk(committed.shards[0].key, 0))
    restored = run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="8KiB", part=0, parts=2,
                            version=committed.version)
    assert (restored.written, restored.state) == (1, "complete")
    assert cache.manifest(dataset_name) == committed
    assert cached_ids(cache, committed) == list(range(400))


@pytest.mark.slow
def test_a_part_never_writes_the_shards_a_committed_partial_version_left_uncached(  # type: ignore[no-untyped-def]
    cluster_factory, tmp_path: Path
) -> None:
    cluster = cluster_factory(masters=3, replicas=0, maxmemory="12mb", maxmemory_policy="noeviction")
    src = tmp_path / "src"
    write_parquet_files(src, files=4, rows=640, row_group_size=200, width=16_000)
    with connect(cluster.url) as cache:
        partial = run_prefetch(src, dataset="big", cache=cache, shard_size="1MiB", allow_partial=True).manifest
        assert partial is not None
        assert partial.complete
        uncached = [s for s in partial.shards if not s.cached]
        assert uncached
        for node in cache.client.get_primaries():  # room now for the whole version
            cache.client.config_set("maxmemory", "200mb", target_nodes=node)
        for part in range(2):
            report = run_prefetch(src, dataset="big", cache=cache, shard_size="1MiB", part=part, parts=2,
                                  version=partial.version)
            assert (report.written, report.state) == (0, "complete")
        # Nothing written where the committed manifest names no shard; the manifest is unchanged.
        assert cache.client.exists(*(cache.keys.chunk(s.key, 0) for s in uncached)) == 0
        assert cache.manifest("big") == partial
        # A whole prefetch caches the rest, and commits them.
        whole = run_prefetch(src, dataset="big", cache=cache, shard_size="1MiB")
        assert whole.written == len(uncached)
        assert whole.manifest is not None
        assert whole.manifest.cached_shards == whole.manifest.num_shards


def test_rm_all_old_keeps_the_last_committed_version_while_the_newest_failed(
    redis_url: str, cache: ShardCache, dataset_name: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write_parquet_files(src, files=2, rows=300, row_group_size=300, width=512)
    oldest = run_prefetch(src, dataset=dataset_name, cache=cache, shard_size="64KiB")
    pq.write_table(image_table(600, 300, width=512), src / "part-002.parquet", row_group_size=300)
    committed = run_prefetch(src, dataset=dataset_name, cache=cache, shard_size="64KiB")
    pq.write_table(image_table(900, 300, width=512), src / "part-003.parquet", row_group_size=300)
    corrupt_pages(src / "part-003.parquet")
    failed = run_prefetch(src, dataset=dataset_name, cache=cache, shard_size="64KiB")
    assert (oldest.state, committed.state, failed.state) == ("complete", "complete", "loading")
    assert cache.latest_version(dataset_name) == failed.version

    assert cache.delete(dataset_name, all_old=True) == [oldest.version]
    assert cache.versions(dataset_name) == [committed.version, failed.version]
    assert cached_ids(cache, cache.manifest(dataset_name, committed.version)) == list(range(900))


def test_a_write_into_a_committed_version_after_rm_leaves_no_orphan_chunk(
    cache: ShardCache, dataset_name: str, tmp_path: Path
) -> None:
    write_parquet_files(tmp_path, files=2, rows=200)
    committed = run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="8KiB").manifest
    assert committed is not None
    assert committed.complete
    payload = cache.get_payload(committed, 0)
    # A writer read the committed manifest (a loader writing a shard back, a part restoring it), then
    # `rm` removed the version before its write landed: the write finds the version gone and undoes itself.
    assert cache.delete(dataset_name) == [committed.version]
    assert keys_of(cache, dataset_name) == []
    with pytest.raises(DatasetNotFound, match="was removed"):
        cache.put_shard(committed, 0, payload)
    assert keys_of(cache, dataset_name) == []  # no chunk on any primary, none waiting out a TTL


def test_rm_refuses_while_a_prefetch_restores_a_committed_version_and_force_leaves_nothing(
    redis_url: str, cache: ShardCache, dataset_name: str, tmp_path: Path
) -> None:
    write_parquet_files(tmp_path, files=2, rows=200)
    committed = run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="8KiB").manifest
    assert committed is not None
    assert committed.complete
    assert committed.num_shards >= 4
    for key in shard_keys(cache, dataset_name):  # every shard evicted: the next prefetch restores them
        cache.client.delete(key)
    holding, release = threading.Event(), threading.Event()
    outcome: dict[str, BaseException | object] = {}

    def slow(p: Progress) -> None:
        if p.shards_done >= 2:
            holding.set()
            release.wait(30)

    def prefetcher() -> None:
        with connect(redis_url) as c:
            try:
                outcome["report"] = run_prefetch(tmp_path, dataset=dataset_name, cache=c, shard_size="8KiB",
                                                 workers=1, max_inflight="8KiB", progress=slow)
            except BaseException as exc:
                outcome["error"] = exc

    thread = threading.Thread(target=prefetcher, name="prefetcher")
    thread.start()
    try:
        assert holding.wait(30), outcome
        for args in (["--version", committed.version], []):
            refused = cli_run("rm", dataset_name, "--redis", redis_url, *args)
            assert refused.exit_code == 1, refused.output
            assert "Traceback" not in refused.output
            line = refused.stderr.strip()
            assert len(line.splitlines()) == 1
            assert f"version {committed.version} of {dataset_name!r} is being written: a prefetch is writing it" in line
            assert "add --force to the same `shardcache rm` command" in line
        assert cache.manifest(dataset_name) == committed  # nothing was removed
        info = json.loads(cli_run("info", dataset_name, "--redis", redis_url, "--json").stdout)
        assert [w.split(" (")[0] for w in info["writers"]] == ["a prefetch is writing it"]  # as rm saw it
        forced = cli_run("rm", dataset_name, "--redis", redis_url, "--version", committed.version, "--force")
        assert forced.exit_code == 0, forced.output
    finally:
        release.set()
        thread.join(60)
    error = outcome.get("error")
    assert isinstance(error, DatasetNotFound), outcome
    assert "was removed" in str(error)
    # It wrote on after `rm` until it found the version gone: none of it stays, on any primary.
    assert keys_of(cache, dataset_name) == []
    assert dataset_name not in cache.datasets()


def test_a_resumed_prefetch_of_an_older_loading_version_is_its_writer_for_info_and_rm(
    redis_url: str, cache: ShardCache, dataset_name: str, tmp_path: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    write_parquet_files(first, files=2, rows=200)
    write_parquet_files(second, files=3, rows=200)

    def stop(p: Progress) -> None:
        if p.shards_done >= 2:
            raise KeyboardInterrupt  # the prefetch is stopped midway: its version stays loading

    for src in (first, second):
        with pytest.raises(KeyboardInterrupt):
            run_prefetch(src, dataset=dataset_name, cache=cache, shard_size="8KiB", workers=1, max_inflight="8KiB",
                         progress=stop)
    older, newer = cache.versions(dataset_name)
    assert cache.latest_version(dataset_name) == newer
    assert 0 < cache.manifest(dataset_name, older).cached_shards < cache.manifest(dataset_name, older).num_shards
    assert {cache.manifest(dataset_name, v).state for v in (older, newer)} == {"loading"}

    holding, release = threading.Event(), threading.Event()
    outcome: dict[str, BaseException | object] = {}

    def slow(p: Progress) -> None:
        if p.shards_done - p.skipped >= 1:
            holding.set()
            release.wait(30)

    def prefetcher() -> None:  # resumes the older version: `begin` is not called, `latest` stays the newer
        with connect(redis_url) as c:
            try:
                outcome["report"] = run_prefetch(first, dataset=dataset_name, cache=c, shard_size="8KiB",
                                                 workers=1, max_inflight="8KiB", progress=slow)
            except BaseException as exc:
                outcome["error"] = exc

    thread = threading.Thread(target=prefetcher, name="prefetcher")
    thread.start()
    try:
        assert holding.wait(30), outcome
        assert cache.latest_version(dataset_name) == newer
        assert len(cache.writers(dataset_name, older)) == 1
        assert cache.writers(dataset_name, older)[0].startswith(
            f"a prefetch is writing it ({THIS_HOST}:{os.getpid()}:")
        assert cache.writers(dataset_name, newer) == []  # nothing loads the newer one now
        info = json.loads(cli_run("info", dataset_name, "--redis", redis_url, "--json").stdout)
        assert (info["version"], info["writers"]) == (newer, [])
        refused = cli_run("rm", dataset_name, "--redis", redis_url, "--all-old")
        assert refused.exit_code == 1, refused.output
        line = refused.stderr.strip()
        assert len(line.splitlines()) == 1
        assert "Traceback" not in refused.output
        assert f"version {older} of {dataset_name!r} is still loading: a prefetch is writing it" in line
        assert "add --force to the same `shardcache rm` command" in line
        assert cache.versions(dataset_name) == [older, newer]  # nothing was removed
        # The newer one, which no one loads, is removed at once.
        assert cache.delete(dataset_name, newer) == [newer]
    finally:
        release.set()
        thread.join(60)
    report = outcome.get("report")
    assert getattr(report, "state", None) == "complete", outcome
    assert cache.versions(dataset_name) == [older]
    assert cached_ids(cache, cache.manifest(dataset_name, older)) == list(range(400))
    prefix = f"{cache.keys.prefix}s:{cache.keys.encode(dataset_name)}:{older}:"
    assert shard_keys(cache, dataset_name)
    assert all(k.startswith(prefix) for k in shard_keys(cache, dataset_name))


@pytest.mark.slow
def test_a_shard_its_version_cannot_record_leaves_no_chunk_behind(  # type: ignore[no-untyped-def]
    cluster_factory, tmp_path: Path
) -> None:
    # A node full under noeviction takes no record; the shards that fit on the others must not stay
    # there unrecorded (a version committed under allow_partial would never name them again).
    cluster = cluster_factory(masters=3, replicas=0, maxmemory="200mb", maxmemory_policy="noeviction")
    write_parquet_files(tmp_path / "src", files=2, rows=200)
    with connect(cluster.url) as cache:
        plan = plan_prefetch(tmp_path / "src", dataset="full", cache=cache, parts=1, shard_size="8KiB")
        loading = cache.manifest("full", plan.version)
        meta_node = cache.node_of(cache.keys.manifest("full", plan.version))
        index = next(s.index for s in loading.shards if cache.node_of(s.key) != meta_node)
        assert meta_node is not None
        for node in cache.client.get_primaries():  # type: ignore[union-attr]
            if f"{node.host}:{node.port}" == meta_node:
                cache.client.config_set("maxmemory", "1", target_nodes=node)  # type: ignore[call-arg]
        with pytest.raises(CapacityExceeded):
            cache.put_shard(loading, index, b"x" * 1000)
        assert shard_keys(cache, "full") == []  # on no primary
        assert cache.manifest("full", plan.version).cached_shards == 0
