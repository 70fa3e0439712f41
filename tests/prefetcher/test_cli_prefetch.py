"""`shardcache prefetch` as a user runs it: JSON report, exit status, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from click.testing import CliRunner, Result

from shardcache.cli import cli

from .conftest import write_parquet_files


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_prefetch_json_then_noop(redis_url: str, dataset_name: str, tmp_path: Path) -> None:
    write_parquet_files(tmp_path, files=2, rows=100)
    result = run("prefetch", str(tmp_path), "--dataset", dataset_name, "--redis", redis_url,
                 "--shard-size", "16KiB", "--compression", "lz4", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["state"] == "complete"
    assert report["rows"] == 200
    assert report["failed"] == []
    assert report["written"] == report["shards"] > 1
    assert report["bytes"] > 0
    assert "mb_per_s" in report

    again = json.loads(run("prefetch", str(tmp_path), "--dataset", dataset_name, "--redis", redis_url,
                           "--shard-size", "16KiB", "--compression", "lz4", "--json").output)
    assert again["noop"]
    assert again["version"] == report["version"]
    assert again["skipped"] == report["shards"]

    text = run("prefetch", str(tmp_path), "--dataset", dataset_name, "--redis", redis_url,
               "--shard-size", "16KiB", "--compression", "lz4").output
    assert "already cached, nothing to do" in text


def test_failed_shards_exit_non_zero_with_the_report(redis_url: str, dataset_name: str, tmp_path: Path) -> None:
    write_parquet_files(tmp_path, files=2, rows=300, row_group_size=300, width=512)
    bad = tmp_path / "part-001.parquet"
    data = bytearray(bad.read_bytes())
    start = pq.ParquetFile(bad).metadata.row_group(0).column(1).data_page_offset + 40
    data[start : start + 2000] = b"\xff" * 2000
    bad.write_bytes(bytes(data))
    result = run("prefetch", str(tmp_path), "--dataset", dataset_name, "--redis", redis_url,
                 "--shard-size", "64KiB", "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["state"] == "loading"
    assert report["failed"]
    assert all(f["source"] == str(bad) and f["reason"] for f in report["failed"])


def test_missing_source_is_one_line(redis_url: str, dataset_name: str, tmp_path: Path) -> None:
    result = run("prefetch", str(tmp_path / "nope"), "--dataset", dataset_name, "--redis", redis_url)
    assert result.exit_code == 1
    lines = (result.stderr or result.output).strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: source")
    assert "does not exist" in lines[0]
