"""Loader and prefetch metrics over real HTTP, checked against ``stats()`` and the PrefetchReport."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from shardcache.cache import Manifest, ShardCache, connect
from shardcache.dataloader import CachedDataLoader, Stream
from shardcache.errors import ConfigError, DatasetLocked
from shardcache.metrics import LOADER, PREFETCH, export, push_now, serve
from shardcache.prefetcher import run_prefetch

from .conftest import unique_name, write_source
from .metrics_helpers import no_export, samples_of, scrape, value

pytestmark = pytest.mark.usefixtures(no_export.__name__)


def test_metrics_equal_stats_after_a_real_epoch(cache: ShardCache, make_dataset: Callable[..., Manifest]) -> None:
    manifest = make_dataset(rows=400)
    # A shard gone from Redis: read through, so misses and read-throughs are not zero.
    cache.call("delete", manifest.shards[1].key)
    loader = CachedDataLoader(manifest.name, cache=cache, batch_size=32, num_workers=2, seed=3, rank=1, world_size=2)
    port = serve(0)
    seen = sum(len(batch["id"]) for batch in loader)
    stats = loader.stats()
    assert stats.samples == seen
    assert min(stats.read_throughs, stats.misses, stats.hits) >= 1
    samples = scrape(port)
    labels = {"dataset": manifest.name, "version": manifest.version, "rank": "1"}
    expected = {**stats.as_dict(), "samples_per_second": stats.samples_per_second, "epoch": 0}
    for family in LOADER:
        assert value(samples, family.samples[0], **labels) == pytest.approx(expected[family.source], rel=1e-12), family
    assert value(samples, "shardcache_loader_read_bytes_total", **labels) == stats.bytes_read > 0


def test_a_second_epoch_keeps_counting(cache: ShardCache, make_dataset: Callable[..., Manifest]) -> None:
    manifest = make_dataset(rows=200)
    loader = CachedDataLoader(manifest.name, cache=cache, batch_size=50, metrics=0)
    port = export._STATE.port
    assert port is not None
    for epoch in range(2):
        loader.set_epoch(epoch)
        for _ in loader:
            pass
    samples = scrape(port)
    assert value(samples, "shardcache_loader_samples_total", dataset=manifest.name) == 400 == loader.stats().samples
    assert value(samples, "shardcache_loader_epoch", dataset=manifest.name) == 1


def test_a_mix_loader_is_exported_with_its_totals(cache: ShardCache, make_dataset: Callable[..., Manifest]) -> None:
    # stats() of a mix holds a per-stream table beside the counters: the scrape exports the counters.
    a, b = make_dataset(rows=100), make_dataset(rows=60)
    loader = CachedDataLoader([Stream(a.name, weight=1), Stream(b.name, weight=1)], cache=cache, batch_size=20,
                              metrics=0)
    port = export._STATE.port
    assert port is not None
    seen = sum(len(batch["id"]) for batch in loader)
    samples = scrape(port)
    dataset = loader.cached_dataset.name
    assert value(samples, "shardcache_loader_samples_total", dataset=dataset) == seen == loader.stats().samples
    assert value(samples, "shardcache_loader_shard_hits_total", dataset=dataset) == loader.stats().hits


def test_prefetch_metrics_match_the_report(cache: ShardCache, tmp_path: Path) -> None:
    name = unique_name("prefetch-metrics")
    root = write_source(tmp_path / "src", 300)
    seen: list[object] = []
    port = serve(0)
    try:
        report = run_prefetch(str(root), dataset=name, cache=cache, shard_size="6KiB", progress=seen.append)
        samples = scrape(port)
    finally:
        cache.delete(name, force=True)
    assert seen, "the user's progress callback still runs"
    labels = {"dataset": name, "version": report.version}
    expected = {
        "shardcache_prefetch_shards": report.shards, "shardcache_prefetch_shards_done": report.shards,
        "shardcache_prefetch_shards_written": report.written, "shardcache_prefetch_shards_skipped": report.skipped,
        "shardcache_prefetch_shards_failed": len(report.failed),
        "shardcache_prefetch_shards_uncached": report.uncached, "shardcache_prefetch_written_bytes": report.bytes,
        "shardcache_prefetch_progress_ratio": 1.0, "shardcache_prefetch_elapsed_seconds": report.seconds,
        "shardcache_prefetch_bytes_per_second": report.bytes / report.seconds,
    }
    for metric, want in expected.items():
        assert value(samples, metric, **labels) == pytest.approx(want), metric
    assert report.written == report.shards > 1
    assert report.bytes > 0
    assert value(samples, "shardcache_prefetch_state", state="complete", **labels) == 1
    assert {f.name for f in PREFETCH} <= set(samples)


def test_a_failed_prefetch_reads_failed(cache: ShardCache, tmp_path: Path) -> None:
    name = unique_name("locked")
    port = serve(0)
    with cache.lock(name), pytest.raises(DatasetLocked):
        run_prefetch(str(write_source(tmp_path / "src", 100)), dataset=name, cache=cache, shard_size="6KiB")
    states = [labels for labels, v in scrape(port)["shardcache_prefetch_state"] if labels["dataset"] == name]
    assert [s["state"] for s in states] == ["failed"]


class _Gateway(http.server.BaseHTTPRequestHandler):
    """A tiny real Pushgateway stand-in: records each request's method, path and body."""

    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append(("PUT", self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    received: list[tuple[str, str, bytes]] = []
    handler = type("Handler", (_Gateway,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", received
    server.shutdown()
    server.server_close()


def test_push_to_a_gateway_over_http(
    cache: ShardCache, make_dataset: Callable[..., Manifest], gateway: tuple[str, list[tuple[str, str, bytes]]]
) -> None:
    url, received = gateway
    manifest = make_dataset(rows=200)
    loader = CachedDataLoader(manifest.name, cache=cache, batch_size=40)
    for _ in loader:
        pass
    push_now(url, job="train", grouping={"instance": "pod-7"})
    method, path, body = received[-1]
    assert (method, path) == ("PUT", "/metrics/job/train/instance/pod-7")
    pushed = samples_of(body.decode())
    assert value(pushed, "shardcache_loader_samples_total", dataset=manifest.name) == loader.stats().samples == 200
    assert value(pushed, "shardcache_loader_shard_hits_total", dataset=manifest.name) == loader.stats().hits


def test_a_prefetch_pushes_when_it_ends(
    cache: ShardCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    gateway: tuple[str, list[tuple[str, str, bytes]]],
) -> None:
    url, received = gateway
    monkeypatch.setenv(export.ENV_GATEWAY, url)
    monkeypatch.setenv(export.ENV_INTERVAL, "1h")  # only the pushes at the start and at the end
    name = unique_name("pushed")
    try:
        report = run_prefetch(str(write_source(tmp_path / "src", 200)), dataset=name, cache=cache, shard_size="6KiB")
    finally:
        cache.delete(name, force=True)
    assert len(received) == 2  # when pushing was set up, and when the run ended
    last = samples_of(received[-1][2].decode())
    labels = {"dataset": name, "version": report.version}
    assert value(last, "shardcache_prefetch_shards_written", **labels) == report.written > 0
    assert value(last, "shardcache_prefetch_state", state="complete", **labels) == 1


def test_environment_port_plus_local_rank(
    cache: ShardCache, make_dataset: Callable[..., Manifest], monkeypatch: pytest.MonkeyPatch,
    free_ports: Callable[..., int],
) -> None:
    base = free_ports(2, 29000, 29999, bus=False)
    monkeypatch.setenv(export.ENV_PORT, str(base))
    monkeypatch.setenv("LOCAL_RANK", "1")
    manifest = make_dataset(rows=100)
    loader = CachedDataLoader(manifest.name, cache=cache, batch_size=25)
    assert export._STATE.port == base + 1
    for _ in loader:
        pass
    assert value(scrape(base + 1), "shardcache_loader_batches_total", dataset=manifest.name) == 4


def test_metrics_false_is_not_exported(cache: ShardCache, make_dataset: Callable[..., Manifest]) -> None:
    manifest = make_dataset(rows=100)
    port = serve(0)
    loader = CachedDataLoader(manifest.name, cache=cache, batch_size=25, metrics=False)
    for _ in loader:
        pass
    assert not [s for s in scrape(port).get("shardcache_loader_samples_total", []) if s[0]["dataset"] == manifest.name]


@pytest.mark.parametrize("bad", ["ftp://x", -1, 70000, 1.5, "nine"])
def test_bad_metrics_argument(cache: ShardCache, dataset: Manifest, bad: object) -> None:
    with pytest.raises(ConfigError, match="metrics="):
        CachedDataLoader(dataset.name, cache=cache, metrics=bad)
    assert export._STATE.server is None


def test_metrics_true_without_a_setting(cache: ShardCache, dataset: Manifest) -> None:
    with pytest.raises(ConfigError, match="SHARDCACHE_METRICS_PORT"):
        CachedDataLoader(dataset.name, cache=cache, metrics=True)


def test_without_prometheus_client_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("prometheus_client", "prometheus_client.registry", "prometheus_client.exposition"):
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setattr(export._STATE, "registry", None)
    with pytest.raises(ConfigError, match=r"pip install 'shardcache\[metrics\]'"):
        serve(0)


def test_off_by_default(redis_url: str, tmp_path: Path) -> None:
    """A loader and a prefetch with no metrics settings import no prometheus_client and open no port."""
    code = f"""
import sys, psutil
from shardcache.prefetcher import prefetch
from shardcache.dataloader import CachedDataLoader
m = prefetch({str(write_source(tmp_path / 'src', 100))!r}, dataset="off-{tmp_path.name}", cache={redis_url!r})
loader = CachedDataLoader(m.name, cache={redis_url!r}, batch_size=50)
assert sum(len(b["id"]) for b in loader) == 100
listening = [c for c in psutil.Process().net_connections() if c.status == "LISTEN"]
print("prometheus_client" in sys.modules, len(listening))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDCACHE_METRICS")}
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120, env=env
        )
    finally:
        with connect(redis_url) as cache:
            cache.delete(f"off-{tmp_path.name}", force=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "0"]


def test_bad_environment_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(export.ENV_GATEWAY, "pushgateway:9091")
    with pytest.raises(ConfigError, match="SHARDCACHE_METRICS_PUSHGATEWAY='pushgateway:9091' must be a Pushgateway"):
        export.resolve(None)
    monkeypatch.setenv(export.ENV_PORT, "nine")
    with pytest.raises(ConfigError, match="SHARDCACHE_METRICS_PORT='nine' must be a port"):
        export.resolve(None)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert export.default_instance().endswith(":3")
