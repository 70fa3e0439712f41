"""A cache that does not answer when a command or a job starts (issue 16, item 7), and
`shardcache status --redis URL`, which that error points to.

The 20 s retry deadline is for riding through a failover of a cache that answered before; when
no seed answers at connect time, the CLI and the loader fail within about 2 s, in one line that
names the seeds tried and `shardcache status`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from click.testing import CliRunner, Result

from shardcache.cli import cli
from shardcache.dataloader import CachedDataLoader
from shardcache.errors import CacheUnavailable
from shardcache.localcluster import LocalCluster

WITHIN_S = 3.0


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, env={"SHARDCACHE_REDIS_URL": None})


def seeds_of(url: str) -> list[str]:
    return url.removeprefix("redis://").split(",")


@pytest.fixture
def down_url(cluster_factory: Callable[..., LocalCluster]) -> str:
    """The URL of a 3-primary cluster whose every node was stopped."""
    cluster = cluster_factory(masters=3, replicas=0)
    url = cluster.url
    cluster.stop()
    return url


@pytest.mark.parametrize("command", [("ls",), ("info", "ds"), ("rm", "ds"), ("status",)])
def test_cli_with_every_node_down_fails_within_seconds_in_one_line(down_url: str, command: tuple[str, ...]) -> None:
    began = time.monotonic()
    result = run(*command, "--redis", down_url)
    elapsed = time.monotonic() - began
    assert elapsed < WITHIN_S, f"{command} took {elapsed:.1f}s"
    assert result.exit_code == 1
    text = result.output.strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    assert all(seed in text for seed in seeds_of(down_url)), text
    assert "shardcache status" in text
    assert " node " not in text  # the seed list is not a node


def test_cli_with_an_unknown_host_fails_within_seconds() -> None:
    began = time.monotonic()
    result = run("ls", "--redis", "redis://no-such-host.invalid:7000")
    assert time.monotonic() - began < WITHIN_S
    assert result.exit_code == 1
    assert "no-such-host.invalid:7000" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_loader_with_every_node_down_fails_within_seconds(down_url: str) -> None:
    began = time.monotonic()
    with pytest.raises(CacheUnavailable) as info:
        CachedDataLoader("ds", cache=down_url, batch_size=8)
    assert time.monotonic() - began < WITHIN_S
    assert all(seed in str(info.value) for seed in seeds_of(down_url))
    assert "shardcache status" in str(info.value)


def test_status_of_a_cache_by_url(cluster_factory: Callable[..., LocalCluster]) -> None:
    cluster = cluster_factory(masters=2, replicas=1, maxmemory="32mb")
    deadline = time.monotonic() + 15
    while True:  # CLUSTER SLOTS lists a replica once gossip told its primary's peers about it
        shown = run("status", "--redis", cluster.url, "--json")
        report = json.loads(shown.output)
        if len(report["nodes"]) == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert shown.exit_code == 0, shown.output
    assert report["ok"] is True
    assert sorted(n["role"] for n in report["nodes"]) == ["primary", "primary", "replica", "replica"]
    assert all(n["cluster_state"] == "ok" and n["maxmemory"] == 32 * 1000**2 for n in report["nodes"])
    assert {n["policy"] for n in report["nodes"]} == {"volatile-lru"}
    text = run("status", "--redis", cluster.url)
    assert text.exit_code == 0
    assert text.output.startswith(f"ok: {cluster.url} (4 node(s))")


def test_status_names_a_primary_that_is_down(cluster_factory: Callable[..., LocalCluster]) -> None:
    cluster = cluster_factory(masters=3, replicas=0)
    victim = cluster.ports[1]
    cluster.kill_node(victim)
    shown = run("status", "--redis", cluster.url)
    assert shown.exit_code == 1
    assert shown.output.startswith("NOT OK")
    assert any(f":{victim}" in line and "DOWN" in line for line in shown.output.splitlines()), shown.output
