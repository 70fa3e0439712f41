"""Reader heartbeats, ``shardcache top``, ``shardcache exporter``, and the deploy/ dashboard and monitors.

All after real epochs on the session cluster; the dashboard is checked offline against the names a real
scrape returns."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from shardcache.cache import Manifest, ShardCache, connect
from shardcache.cli import cli
from shardcache.cli.top import exporter
from shardcache.dataloader import CachedDataLoader
from shardcache.metrics import Reader, Snapshots, exposed_names, serve, serve_cluster
from shardcache.units import format_bytes

from .metrics_helpers import no_export, scrape, value

pytestmark = pytest.mark.usefixtures(no_export.__name__)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def reader_of(cache: ShardCache, name: str) -> list[Reader]:
    view = Snapshots(cache).take()
    return [r for d in view.datasets if d.name == name for r in d.readers]


@pytest.fixture
def reading(cache: ShardCache, make_dataset: Callable[..., Manifest]) -> Iterator[tuple[Manifest, CachedDataLoader]]:
    """A rank 0 of 2 that read a whole epoch (one shard read through), then one batch of the next, and holds."""
    manifest = make_dataset(rows=300)
    cache.call("delete", manifest.shards[0].key)
    loader = CachedDataLoader(manifest.name, cache=cache, batch_size=30, rank=0, world_size=2, lease_ttl=0.6)
    for _ in loader:
        pass
    loader.set_epoch(1)
    iterator = iter(loader)
    next(iterator)
    time.sleep(0.6)  # renewals every 0.2 s: the heartbeat now has the batch of epoch 1 too
    yield manifest, loader
    iterator.close()


def test_heartbeat_follows_the_lease(cache: ShardCache, reading: tuple[Manifest, CachedDataLoader]) -> None:
    manifest, loader = reading
    stats = loader.stats()
    assert 0 < stats.hit_ratio < 1
    (reader,) = reader_of(cache, manifest.name)
    assert reader.version == manifest.version
    assert 0 < reader.expires_in <= 0.6
    beat = reader.beat
    assert (beat["rank"], beat["world_size"], beat["epoch"]) == (0, 2, 1)
    assert beat["batches"] == stats.batches  # refreshed by the renewals since the lease was taken
    assert beat["hits"] == stats.hits
    assert beat["misses"] == stats.misses
    assert beat["hit_ratio"] == round(stats.hit_ratio, 4)
    assert beat["wait_fraction"] == round(stats.wait_fraction, 4)


def test_heartbeat_goes_with_the_lease(cache: ShardCache, make_dataset: Callable[..., Manifest]) -> None:
    manifest = make_dataset(rows=100)
    loader = CachedDataLoader(manifest.name, cache=cache, batch_size=50)
    iterator = iter(loader)
    next(iterator)
    assert len(reader_of(cache, manifest.name)) == 1
    assert cache.call("exists", cache.keys.readers(manifest.name)) == 1
    iterator.close()
    assert reader_of(cache, manifest.name) == []
    assert cache.call("exists", cache.keys.readers(manifest.name)) == 0  # its only field went with the lease


def test_top_once(cache: ShardCache, redis_url: str, reading: tuple[Manifest, CachedDataLoader]) -> None:
    manifest, loader = reading
    result = CliRunner().invoke(cli, ["top", "--once", "--redis", redis_url], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    for node in cache.capacity().nodes:
        limit = re.escape(format_bytes(node.maxmemory))
        assert re.search(rf"^{re.escape(node.node)}\s+\S+ \S+\s+{limit}\s+\d+\.\d%\s+volatile-lru$", out, re.M), out
    row = next(line for line in out.splitlines() if line.startswith(f"{manifest.name} "))
    assert row.split()[1:4] == [manifest.version, "complete", f"{manifest.num_shards}/{manifest.num_shards}"]
    assert row.split()[-1] == "1"  # one live lease
    stats = loader.stats()
    reader = next(line for line in out.splitlines() if f" {manifest.name} " in line and "0/2" in line)
    cells = reader.split()
    assert cells[2:7] == [manifest.version, "0/2", "1", f"{100 * stats.hit_ratio:.1f}",
                          f"{100 * round(stats.wait_fraction, 4):.1f}"]


def test_top_without_a_cache_is_one_line(free_ports: Callable[..., int]) -> None:
    port = free_ports(1, 29000, 29999, bus=False)
    result = CliRunner().invoke(cli, ["top", "--once", "--redis", f"redis://127.0.0.1:{port}"])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("Error: ")


def test_exporter_matches_the_cluster(cache: ShardCache, reading: tuple[Manifest, CachedDataLoader]) -> None:
    manifest, loader = reading
    server = serve_cluster(cache, port=0)
    try:
        samples = scrape(server.server_port)
    finally:
        server.shutdown()
    assert value(samples, "shardcache_up") == 1
    for node in cache.capacity().nodes:
        assert value(samples, "shardcache_node_maxmemory_bytes", node=node.node) == node.maxmemory
        assert value(samples, "shardcache_node_used_memory_bytes", node=node.node) > 0
    labels = {"dataset": manifest.name, "version": manifest.version, "state": "complete"}
    assert value(samples, "shardcache_dataset_shards", **labels) == manifest.num_shards
    assert value(samples, "shardcache_dataset_bytes", **labels) == manifest.nbytes
    assert value(samples, "shardcache_dataset_rows", **labels) == manifest.num_rows == 300
    assert value(samples, "shardcache_dataset_versions", dataset=manifest.name) == 1
    assert value(samples, "shardcache_dataset_leases", dataset=manifest.name, version=manifest.version) == 1
    hit = value(samples, "shardcache_reader_hit_ratio", dataset=manifest.name, rank="0")
    assert hit == round(loader.stats().hit_ratio, 4)


def test_exporter_command(redis_url: str, free_ports: Callable[..., int]) -> None:
    port = free_ports(1, 29000, 29999, bus=False)
    env = {**os.environ, "SHARDCACHE_REDIS_URL": redis_url}
    process = subprocess.Popen([sys.executable, "-m", "shardcache", "exporter", "--port", str(port)], env=env,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                samples = scrape(port)
                break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert value(samples, "shardcache_up") == 1
        assert samples["shardcache_node_maxmemory_bytes"]
    finally:
        process.terminate()
        process.wait(timeout=10)


# -- deploy/: the dashboard and the monitors, offline ------------------------------------------------------------


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    out = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable.get("type") == "query":
            out.append(query["query"] if isinstance(query, dict) else query)
    return out


def metric_names(promql: str) -> set[str]:
    """The shardcache metric names a PromQL expression (or label_values query) reads; quoted strings
    (label values, regexes) are not names."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', promql)
    return set(re.findall(r"\bshardcache_[A-Za-z0-9_:]*", bare))


def test_dashboard_queries_name_exported_metrics(
    cache: ShardCache, reading: tuple[Manifest, CachedDataLoader]
) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "shardcache-dashboard.json").read_text())
    assert dashboard["uid"] == "shardcache"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    # What a real process exports after an epoch and a prefetch (make_dataset), and the cluster exporter.
    scraped = set(scrape(serve(0)))
    server = serve_cluster(cache, port=0)
    try:
        scraped |= set(scrape(server.server_port))
    finally:
        server.shutdown()
    assert exposed_names() <= scraped
    for panel in panels:
        exprs = [t["expr"] for t in panel["targets"]]
        assert exprs, panel["title"]
        for expr in exprs:
            names = metric_names(expr)
            assert names, (panel["title"], expr)
            assert names <= scraped, (panel["title"], sorted(names - scraped))
    for query in dashboard_queries(dashboard):
        assert metric_names(query) <= scraped, query
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_monitors_select_the_exporter_and_the_loaders() -> None:
    docs = [d for f in sorted((DEPLOY / "prometheus").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs if "kind" in d}
    deployment, service = by_kind["Deployment"], by_kind["Service"]
    monitor, pods = by_kind["ServiceMonitor"], by_kind["PodMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert pods["spec"]["podMetricsEndpoints"][0]["port"] == "shardcache"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:2] == ["shardcache", "exporter"]
    exporter.make_context("exporter", command[2:])  # the options exist and parse
    port = int(command[command.index("--port") + 1])
    assert {p["containerPort"] for p in container["ports"]} == {port}
    scrape_config = yaml.safe_load((DEPLOY / "prometheus" / "scrape-config.yaml").read_text())
    jobs = {job["job_name"]: job for job in scrape_config["scrape_configs"]}
    assert jobs["shardcache-exporter"]["static_configs"][0]["targets"] == [f"shardcache-exporter.shardcache.svc:{port}"]
    assert jobs["shardcache-pushgateway"]["honor_labels"] is True
    validate = pytest.importorskip("kubernetes_validate")
    for doc in (deployment, service):
        validate.validate(doc, validate.utils.latest_version(), strict=True)


@pytest.mark.faults
def test_a_stalled_cache_scrapes_as_down_in_time(cluster_factory: Callable[..., Any]) -> None:
    """A node that stops answering: the scrape reports shardcache_up 0 within the timeout, not after the
    20 s retry deadline; once the node is back, the cache is up again."""
    cluster = cluster_factory(masters=1, replicas=0, cluster=False)
    (port,) = cluster.ports
    with connect(cluster.url) as cache:
        server = serve_cluster(cache, port=0, timeout=0.5)
        try:
            assert value(scrape(server.server_port), "shardcache_up") == 1
            cluster.stall_node(port)
            try:
                started = time.monotonic()
                assert value(scrape(server.server_port), "shardcache_up") == 0
                assert time.monotonic() - started < 5
            finally:
                cluster.resume_node(port)
            deadline = time.monotonic() + 30
            while value(scrape(server.server_port), "shardcache_up") == 0:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        finally:
            server.shutdown()


def test_a_planted_readers_key_costs_the_heartbeat_not_the_lease(
    cache: ShardCache, make_dataset: Callable[..., Manifest]
) -> None:
    manifest = make_dataset(rows=100)
    key = cache.keys.readers(manifest.name)
    cache.call("set", key, "not a hash")
    try:
        loader = CachedDataLoader(manifest.name, cache=cache, batch_size=25, lease_ttl=0.3)
        iterator = iter(loader)
        next(iterator)
        time.sleep(0.4)  # renewals went on
        (reader,) = reader_of(cache, manifest.name)
        assert reader.beat == {}
        assert reader.expires_in > 0
        assert sum(1 for _ in iterator) == 3
    finally:
        cache.call("delete", key)


def test_many_expired_leases_are_swept_and_a_new_lease_is_taken(
    cache: ShardCache, make_dataset: Callable[..., Manifest]
) -> None:
    # After a large job died: thousands of expired members and their heartbeats. The renewal script drops
    # their heartbeats in bounded HDELs (one unpack of them all would overflow Lua's stack and fail the lease).
    manifest = make_dataset(rows=10)
    leases, readers = cache.keys.leases(manifest.name), cache.keys.readers(manifest.name)
    members = [f"{manifest.version}|dead-{i}" for i in range(10_000)]
    for start in range(0, len(members), 1000):
        chunk = members[start : start + 1000]
        cache.call("zadd", leases, dict.fromkeys(chunk, 1))  # expired in 1970
        cache.call("hset", readers, mapping=dict.fromkeys(chunk, "{}"))
    lease = cache.lease(manifest.name, manifest.version, ttl=30)
    try:
        lease.heartbeat(lambda: json.dumps({"samples_per_second": 1.0}))
        assert len(cache.leases(manifest.name)) == 1
        assert cache.call("hlen", readers) == 1
    finally:
        lease.release()


def test_a_heartbeat_with_odd_values_is_shown_and_exported_without_them(
    cache: ShardCache, redis_url: str, make_dataset: Callable[..., Manifest]
) -> None:
    # A heartbeat is data from Redis: top and the exporter show what is a number and skip the rest.
    manifest = make_dataset(rows=10)
    beat = {"rank": 0, "world_size": 1, "samples_per_second": "fast", "hit_ratio": "high", "wait_fraction": None}
    lease = cache.lease(manifest.name, manifest.version, ttl=30)
    try:
        lease.heartbeat(lambda: json.dumps(beat))
        result = CliRunner().invoke(cli, ["top", "--once", "--redis", redis_url], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert any(f" {manifest.name} " in line and "0/1" in line for line in result.output.splitlines())
        server = serve_cluster(cache, port=0)
        try:
            samples = scrape(server.server_port)
        finally:
            server.shutdown()
        assert value(samples, "shardcache_up") == 1
        assert value(samples, "shardcache_dataset_leases", dataset=manifest.name, version=manifest.version) == 1
    finally:
        lease.release()
