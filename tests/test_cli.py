"""The command line: up/status/ls/info/rm/down against real servers, and one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner, Result

from shardcache.cache import ShardCache, connect, encode_table
from shardcache.cache.manifest import Manifest, ShardInfo
from shardcache.cli import cli


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def one_line_error(result: Result) -> str:
    """A user error: non-zero exit, one line on stderr, no traceback."""
    assert result.exit_code != 0
    text = result.stderr.strip() if result.stderr_bytes is not None else result.output.strip()
    assert "Traceback" not in result.output
    assert len(text.splitlines()) == 1, text
    assert text.startswith("Error: ")
    return text


def put_dataset(cache: ShardCache, name: str, *, shards: int = 3) -> Manifest:
    table = pa.table({"id": pa.array(range(10), pa.int64())})
    keys = cache.keys
    manifest = Manifest(
        name=name, version="v1", schema=table.schema,
        shards=tuple(ShardInfo(index=i, key=keys.shard(name, "v1", i), rows=10) for i in range(shards)),
    )
    manifest = cache.begin(manifest)
    for i in range(shards):
        manifest = manifest.with_shard(cache.put_shard(manifest, i, encode_table(table)))
    return cache.commit(manifest)


@pytest.fixture
def dataset(redis_url: str) -> tuple[str, str]:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    with connect(redis_url) as cache:
        put_dataset(cache, name)
    return redis_url, name


def test_ls_info_rm_on_a_dataset(dataset: tuple[str, str]) -> None:
    url, name = dataset
    listed = json.loads(run("ls", "--redis", url, "--json").output)
    mine = next(row for row in listed if row["dataset"] == name)
    assert (mine["state"], mine["shards"], mine["cached"], mine["rows"]) == ("complete", 3, 3, 30)

    info = json.loads(run("info", name, "--redis", url, "--json").output)
    assert info["missing_shards"] == []
    assert info["rows"] == 30
    assert "id: int64" in run("info", name, "--redis", url).output

    assert run("rm", name, "--redis", url).output.strip() == f"removed 1 version(s) of {name!r}: v1"
    text = one_line_error(run("info", name, "--redis", url))
    assert name in text
    assert "prefetch it first" in text


def test_url_comes_from_the_environment(dataset: tuple[str, str]) -> None:
    url, name = dataset
    result = run("info", name, "--json", env={"SHARDCACHE_REDIS_URL": url})
    assert json.loads(result.output)["dataset"] == name


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("ls", "--redis", "http://h:1"), "redis:// or rediss://"),
        (("ls", "--redis", "redis://h:99999"), "invalid port"),
        (("rm", "x", "--redis", "redis://127.0.0.1:1", "--version", "a", "--all-old"), "not both"),
        (("status", "--dir", "/nonexistent/shardcache"), "no cluster is recorded"),
        (("up", "--port", "60000", "--dir", "/nonexistent/x"), "above 65535"),
        (("info", "x", "--dir", "/nonexistent/shardcache"), "no cache address"),
    ],
)
def test_user_errors_print_one_line_and_exit_non_zero(args: tuple[str, ...], expected: str) -> None:
    assert expected in one_line_error(run(*args))


def test_password_never_printed(dataset: tuple[str, str]) -> None:
    url, _ = dataset
    secret = "hunter2-" + uuid.uuid4().hex
    host = url.split("://", 1)[1].split(",")[0]
    result = run("ls", "--redis", f"redis://:{secret}@{host}")
    assert secret not in result.output


@pytest.mark.slow
def test_up_status_down_as_a_user_would(tmp_path: Path, free_ports: Callable[..., int]) -> None:
    """The real console script in subprocesses: up prints the URL, down stops exactly those servers."""
    exe = [sys.executable, "-m", "shardcache"]
    state = tmp_path / "state"
    port = free_ports(2, 21000, 22767)
    up = subprocess.run(
        [*exe, "up", "--masters", "1", "--replicas", "1", "--port", str(port), "--dir", str(state),
         "--maxmemory", "64mb"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert up.returncode == 0, up.stderr
    url = up.stdout.strip()
    assert url == f"redis://127.0.0.1:{port}"
    try:
        status = subprocess.run([*exe, "status", "--dir", str(state), "--json"], capture_output=True, text=True,
                                timeout=60, check=False)
        assert status.returncode == 0, status.stderr
        nodes = json.loads(status.stdout)["nodes"]
        assert sorted(n["role"] for n in nodes) == ["primary", "replica"]
        again = subprocess.run([*exe, "up", "--port", str(port), "--dir", str(state)], capture_output=True,
                               text=True, timeout=60, check=False)
        assert again.returncode != 0
        assert "still runs" in again.stderr
        assert "Traceback" not in again.stderr
        # A data command without --redis finds the cluster that `up` recorded.
        ls = subprocess.run([*exe, "ls", "--dir", str(state)], capture_output=True, text=True, timeout=60,
                            check=False)
        assert ls.returncode == 0, ls.stderr
    finally:
        down = subprocess.run([*exe, "down", "--dir", str(state)], capture_output=True, text=True, timeout=60,
                              check=False)
    assert down.returncode == 0, down.stderr
    assert "stopped 2 node(s)" in down.stdout
    for node in nodes:
        assert not Path(f"/proc/{node['pid']}").exists() or "zombie" in Path(f"/proc/{node['pid']}/status").read_text()


def test_ls_aligns_its_columns_and_quotes_names_with_spaces_or_invisible_characters(redis_url: str) -> None:
    """Issue 16, item 8: names written by older versions (bidi overrides were accepted) show escaped."""
    tag = uuid.uuid4().hex[:8]
    names = {f"cli-{tag}": f"cli-{tag}", f"cli {tag} spaced": f"'cli {tag} spaced'",
             f"cli-{tag}\u202egnp.exe": f"'cli-{tag}\\u202egnp.exe'", f"cli-{tag}-数据": f"cli-{tag}-数据"}
    with connect(redis_url) as cache:
        for name in names:
            put_dataset(cache, name)
    try:
        lines = run("ls", "--redis", redis_url).output.splitlines()
        header = lines[0]
        assert header.split() == ["DATASET", "VERSION", "STATE", "SHARDS", "ROWS", "SIZE", "VERSIONS"]
        assert "\u202e" not in "".join(lines)
        mine = {shown: next(line for line in lines if line.startswith(shown + " ")) for shown in names.values()}
        column = header.index("VERSION")
        for shown, line in mine.items():
            wide = sum(1 for c in shown if "\u4e00" <= c <= "\u9fff")
            assert line[column - wide:].split()[:3] == ["v1", "complete", "3/3"], line
            assert line[:column - wide].rstrip() == shown
        widths = {len(line) + sum(1 for c in line if "\u4e00" <= c <= "\u9fff") for line in mine.values()}
        assert len(widths) == 1, "right-aligned numbers end in one column (CJK characters take two)"
    finally:
        with connect(redis_url) as cache:
            for name in names:
                cache.delete(name, force=True)


@pytest.mark.parametrize("service", ["ml/redis", "redis.ml"])
def test_k8s_service_takes_both_namespace_forms(service: str) -> None:
    """Both forms pass the CLI's checks and reach the Kubernetes lookup (which fails here: no API)."""
    line = one_line_error(run("ls", "--k8s-service", service, env={"KUBECONFIG": "/nonexistent/kubeconfig"}))
    assert "is invalid" not in line
