"""A manifest is one Redis value: its size is computed right after planning, and one too large for
Redis (``proto-max-bulk-len``) or for a loader (256 MiB) fails the prefetch before anything is written,
naming the shard_size that fits. Tests lower the limit instead of building a 256 MiB manifest."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
import redis
from click.testing import CliRunner

from shardcache.cache import ShardCache, connect
from shardcache.cache.manifest import Manifest, ShardInfo, committed_size
from shardcache.cli import cli
from shardcache.errors import ConfigError
from shardcache.prefetcher import manifest_size, plan_prefetch, run_prefetch
from shardcache.units import parse_size

from .conftest import cached_ids, write_parquet_files


def stored_json(cache: ShardCache, m: Manifest) -> bytes:
    raw = cache.client.get(cache.keys.manifest(m.name, m.version))
    assert isinstance(raw, bytes)
    return raw


def found(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match is not None, text
    return match.group(1)


def as_planned(m: Manifest) -> Manifest:
    """``m`` as the planner made it: no shard written, no TTL recorded."""
    shards = tuple(ShardInfo(index=s.index, key=s.key, rows=s.rows, source=s.source) for s in m.shards)
    return m.replace(shards=shards, state="loading", shard_ttl=None)


def write_csv(root: Path, *, files: int = 3, rows: int = 2000) -> int:
    root.mkdir(parents=True)
    for k in range(files):
        ids = np.arange(k * rows, (k + 1) * rows)
        pcsv.write_csv(pa.table({"id": ids, "text": [f"row {i} " * 4 for i in ids]}), root / f"part-{k}.csv")
    return files * rows


def write_raw_files(root: Path, *, files: int) -> int:
    for k in range(files):
        folder = root / f"class-{k % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img-{k:05d}.jpg").write_bytes(os.urandom(3000))
    return files


@pytest.mark.parametrize(("kind", "shard_size"), [("parquet", "64KiB"), ("csv", "16KiB"), ("files", "32KiB")])
def test_planned_size_bounds_the_committed_manifest(
    cache: ShardCache, dataset_name: str, tmp_path: Path, kind: str, shard_size: str
) -> None:
    src = tmp_path / "src"
    if kind == "parquet":
        write_parquet_files(src, files=3, rows=400, row_group_size=100, width=512)  # 4 row groups a file
        rows = 1200
    elif kind == "csv":
        rows = write_csv(src)
    else:
        rows = write_raw_files(src, files=300)
    options = {"format": "files", "label": True} if kind == "files" else {}
    report = run_prefetch(src, dataset=dataset_name, cache=cache, shard_size=shard_size, **options)
    m = report.manifest
    assert m is not None
    assert m.complete
    assert m.num_shards > 10
    if kind == "files":
        assert sum(len(cache.get_table(m, i)) for i in range(m.num_shards)) == rows
    else:
        assert sorted(cached_ids(cache, m)) == list(range(rows))
    actual = len(stored_json(cache, m))
    size = committed_size(as_planned(m), max_shard_bytes=10 * parse_size(shard_size))  # as the prefetcher
    assert actual <= size.total <= actual * 1.15  # an upper bound, and a close one
    assert 0 < size.fixed < size.total
    if kind == "files":  # a file list entry and a segment per file: most of it, whatever the shard size
        assert size.fixed > size.total * 0.6


def test_too_large_fails_before_writing_and_the_suggested_shard_size_fits(
    cache: ShardCache, dataset_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    write_parquet_files(src, files=4, rows=500, row_group_size=125, width=256)  # 1000 shards of 1 KiB
    limit = 96 * 1024
    monkeypatch.setattr(manifest_size, "MAX_MANIFEST_BYTES", limit)
    with pytest.raises(ConfigError) as info:
        run_prefetch(src, dataset=dataset_name, cache=cache, shard_size="1KiB")
    text = str(info.value)
    shards = int(found(r"\((\d+) shards of at most 1.0 KiB, 4 source files\)", text))
    assert shards >= 1000
    assert repr(dataset_name) in text
    assert "over the 96.0 KiB limit (shardcache's)" in text
    assert "nothing was written" in text
    assert dataset_name not in cache.datasets()
    assert cache.client.keys(f"*{dataset_name}*") == []
    with pytest.raises(ConfigError, match="needs a manifest of about"):  # a parallel prefetch's plan too
        plan_prefetch(src, dataset=dataset_name, cache=cache, shard_size="1KiB", parts=2)
    assert dataset_name not in cache.datasets()

    suggested = found(r"raise shard_size \(--shard-size\) to (\d+KiB) or more", text)
    m = run_prefetch(src, dataset=dataset_name, cache=cache, shard_size=suggested).manifest
    assert m is not None
    assert m.complete
    assert limit / 3 < len(stored_json(cache, m)) <= limit  # it fits, and no shard size far larger was asked for
    assert cached_ids(cache, m) == list(range(2000))


def test_too_many_raw_files_ask_for_a_split_not_a_shard_size(
    cache: ShardCache, dataset_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_raw_files(tmp_path / "imgs", files=300)  # each file is listed and is a segment: ~40 KB of manifest
    monkeypatch.setattr(manifest_size, "MAX_MANIFEST_BYTES", 32 * 1024)
    with pytest.raises(ConfigError, match="300 source files") as info:
        run_prefetch(tmp_path / "imgs", dataset=dataset_name, cache=cache, format="files", shard_size="1MiB")
    assert "whatever the shard size: split the source into several datasets" in str(info.value)
    assert "shard_size (" not in str(info.value)
    assert dataset_name not in cache.datasets()


def test_cli_says_it_in_one_line(
    redis_url: str, cache: ShardCache, dataset_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_parquet_files(tmp_path / "src", files=2, rows=300, row_group_size=100, width=256)
    monkeypatch.setattr(manifest_size, "MAX_MANIFEST_BYTES", 32 * 1024)
    result = CliRunner().invoke(cli, ["prefetch", str(tmp_path / "src"), "--dataset", dataset_name, "--redis",
                                      redis_url, "--shard-size", "1KiB"])
    assert result.exit_code == 1
    lines = (result.stderr or result.output).strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"Error: dataset {dataset_name!r} needs a manifest of about")
    assert re.search(r"raise --shard-size to \d+KiB or more", lines[0])
    assert "Traceback" not in result.output
    assert dataset_name not in cache.datasets()


@pytest.mark.slow
def test_the_servers_proto_max_bulk_len_is_the_limit(
    cluster_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = cluster_factory(masters=3, replicas=0)
    src = tmp_path / "src"
    write_parquet_files(src, files=2, rows=50_000, row_group_size=10_000, width=64)  # ~2 MiB of manifest at 1 KiB
    with redis.Redis(port=cluster.ports[1]) as node:
        node.config_set("proto-max-bulk-len", "1mb")  # the lowest Redis takes; one node sets the limit
    with connect(cluster.url) as cache:
        assert cache.max_value_bytes() == 1024 * 1024
        with pytest.raises(ConfigError, match=r"over the 1.0 MiB limit \(Redis's proto-max-bulk-len\)") as info:
            run_prefetch(src, dataset="big", cache=cache, shard_size="1KiB")
        assert "raise shard_size (--shard-size) to" in str(info.value)
        assert cache.datasets() == []
        # An ACL that refuses CONFIG: Redis's default is assumed, and the check goes on with shardcache's limit.
        for port in cluster.ports:
            with redis.Redis(port=port) as node:
                node.execute_command("ACL", "SETUSER", "default", "-config")
        assert cache.max_value_bytes() is None
        monkeypatch.setattr(manifest_size, "MAX_MANIFEST_BYTES", 1536 * 1024)
        with pytest.raises(ConfigError, match=r"over the 1.5 MiB limit \(shardcache's\)"):
            run_prefetch(src, dataset="big", cache=cache, shard_size="1KiB")
        assert cache.datasets() == []
