"""`shardcache prefetch` as a user runs it: JSON report, exit status, one-line errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from shardcache.cache import connect
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


# -- help and errors in the command line's own words (issue 16, item 8) --------------------------


def test_prefetch_help_describes_every_option_with_its_default() -> None:
    text = " ".join(run("prefetch", "--help").output.split())
    for flag, words in {
        "--shard-size": ("most Arrow bytes per shard", "[default: 4MiB]"),
        "--compression": ("[none|lz4|zstd]", "[default: none]"),
        "--order": ("epoch0", "[default: source]"),
        "--workers": ("Writer threads", "[default: 4;"),
        "--format": ("tsv", "relative to SOURCE"),
    }.items():
        assert flag in text
        for word in words:
            assert word in text, (flag, word)


@pytest.mark.parametrize(
    ("args", "expected", "python_words"),
    [
        (("--shard-size", "0"), "--shard-size '0' must be positive", ("shard_size",)),
        (("--shard-size", "lots"), "--shard-size 'lots' is not a size", ("shard_size",)),
        (("--dataset", "x\u202ey"), "--dataset 'x\\u202ey' contains U+202E", ("dataset=",)),
        (("--dataset", "数" * 115), "--dataset '数", ("dataset=",)),
        (("--columns", "id,id"), "--columns ['id', 'id'] names a column twice", ("columns=",)),
        (("--label",), "--label applies to --format 'files' only", ("label=", "format=")),
    ],
)
def test_user_errors_name_the_flags(
    redis_url: str, tmp_path: Path, args: tuple[str, ...], expected: str, python_words: tuple[str, ...]
) -> None:
    write_parquet_files(tmp_path, files=1, rows=20)
    base = ["prefetch", str(tmp_path), "--redis", redis_url]
    if "--dataset" not in args:
        base += ["--dataset", "cli-flags"]
    line = one_line_error(run(*base, *args))
    assert expected in line
    for word in python_words:
        assert word not in line


def test_mixed_formats_point_at_the_format_flag(redis_url: str, tmp_path: Path) -> None:
    write_parquet_files(tmp_path, files=1, rows=20)
    (tmp_path / "extra.csv").write_text("id\n1\n")
    line = one_line_error(run("prefetch", str(tmp_path), "--dataset", "cli-mixed", "--redis", redis_url))
    assert "pass --format or point" in line
    assert "format=" not in line


def test_format_tsv_reads_tab_separated_files_of_any_extension(
    redis_url: str, dataset_name: str, tmp_path: Path
) -> None:
    (tmp_path / "a.txt").write_text("id\tname\n1\tone, two\n2\tthree\n")
    result = run("prefetch", str(tmp_path), "--dataset", dataset_name, "--redis", redis_url, "--format", "tsv",
                 "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows"] == 2
    with connect(redis_url) as cache:
        manifest = cache.manifest(dataset_name)
        assert cache.get_table(manifest, 0).column("name").to_pylist() == ["one, two", "three"]


def one_line_error(result: Result) -> str:
    assert result.exit_code != 0
    text = (result.stderr if result.stderr_bytes is not None else result.output).strip()
    assert "Traceback" not in result.output
    assert len(text.splitlines()) == 1, text
    assert text.startswith("Error: ")
    return text


def test_bad_flags_fail_before_connecting(tmp_path: Path) -> None:
    """A typo is reported at once, not after waiting out an unreachable cache's retry deadline."""
    for args in (("--shard-size", "0"), ("--dataset", "a\nb")):
        base = ["prefetch", str(tmp_path), "--redis", "redis://127.0.0.1:1"]
        if "--dataset" not in args:
            base += ["--dataset", "x"]
        started = time.monotonic()
        line = one_line_error(run(*base, *args))
        assert time.monotonic() - started < 5
        assert line.startswith(f"Error: {args[0]} ")


def test_prefetch_in_parts_by_hand_and_in_processes(redis_url: str, dataset_name: str, tmp_path: Path) -> None:
    write_parquet_files(tmp_path, files=2, rows=150)
    common = [str(tmp_path), "--dataset", dataset_name, "--redis", redis_url, "--shard-size", "8KiB"]
    plan = json.loads(run("prefetch", *common, "--plan-only", "--parts", "2", "--json").output)
    assert (plan["parts"], plan["state"], plan["missing"]) == (2, "loading", plan["shards"])
    assert plan["ranges"][0][0] == 0
    assert plan["ranges"][-1][1] == plan["shards"]

    early = run("prefetch", *common, "--commit")
    assert early.exit_code == 1
    assert early.output.count("\n") == 1  # one line, no traceback
    assert "part 0: shards" in early.output
    assert "part 1: shards" in early.output

    for part in ("0", "1"):
        out = run("prefetch", *common, "--part", part, "--parts", "2", "--version", plan["version"], "--json")
        assert out.exit_code == 0, out.output
        assert json.loads(out.output)["state"] == "loading"
    done = json.loads(run("prefetch", *common, "--commit", "--version", plan["version"], "--json").output)
    assert (done["state"], done["version"]) == ("complete", plan["version"])
    with connect(redis_url) as cache:
        assert cache.manifest(dataset_name).complete

    again = json.loads(run("prefetch", *common, "--processes", "2", "--json").output)
    assert again["noop"]


@pytest.mark.parametrize(("args", "message"), [
    (["--processes", "2", "--part", "0"], "--processes and --part do not go together"),
    (["--part", "0"], "--part needs --parts N"),
    (["--parts", "2"], "--parts goes with"),
    (["--part", "2", "--parts", "2"], "--part 2 is out of range"),
    (["--processes", "2", "--allow-partial"], "--allow-partial does not apply to --processes"),
])
def test_prefetch_parts_options_clash(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["prefetch", str(tmp_path), "--dataset", "d", "--redis", "redis://127.0.0.1:1",
                                      *args])
    assert result.exit_code == 2
    assert message in result.output
