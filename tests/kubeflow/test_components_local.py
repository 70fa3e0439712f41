"""Every component, run by kfp.local as a subprocess, against the real session Redis Cluster."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kfp import components as kfp_components

from shardcache.cache import connect
from shardcache.kubeflow_components import components

from .conftest import FILES, ROWS_PER_FILE, SHARD_SIZE

pytestmark = pytest.mark.slow


def shipped(name: str) -> Any:
    """A component loaded from the YAML committed in the package, as users load it."""
    return kfp_components.load_component_from_file(str(components.component_file(name)))


def test_shipped_components_run(kfp_local: Path, redis_url: str, train_data: Path, dataset: str) -> None:
    """Committed component.yaml files, pip prelude included, end to end (the other tests skip the prelude)."""
    first = shipped("prefetch_op")(source=str(train_data), dataset=dataset, redis_url=redis_url,
                                   shard_size=SHARD_SIZE)
    version = first.outputs["Output"]
    metrics = first.outputs["metrics"].metadata
    assert metrics["rows"] == FILES * ROWS_PER_FILE
    assert metrics["shards"] > 1
    assert metrics["written"] == metrics["shards"]
    assert metrics["failed"] == 0
    assert metrics["bytes"] > 0
    assert {"mb_per_s", "skipped", "seconds", "uncached"} <= metrics.keys()
    report = Path(first.outputs["report"].path).read_text()
    assert f"Version `{version}` is **complete**" in report

    status = shipped("cache_status_op")(dataset=dataset, redis_url=redis_url)
    assert (status.outputs["version"], status.outputs["state"]) == (version, "complete")
    assert status.outputs["complete"] is True
    assert status.outputs["intact"] is True
    assert status.outputs["missing"] == 0


def test_rerun_is_a_noop_and_damage_is_reported(
    kfp_local: Path, redis_url: str, train_data: Path, dataset: str, preinstalled: Any
) -> None:
    from shardcache.prefetcher import run_prefetch

    version = run_prefetch(str(train_data), dataset=dataset, cache=redis_url, shard_size=SHARD_SIZE).version

    # The version is a fingerprint of the source: the step finds it cached and loads nothing.
    again = preinstalled.prefetch_op(source=str(train_data), dataset=dataset, redis_url=redis_url,
                                     shard_size=SHARD_SIZE)
    assert again.outputs["Output"] == version
    assert again.outputs["metrics"].metadata["written"] == 0
    assert "already cached: nothing to do" in Path(again.outputs["report"].path).read_text()

    verified = preinstalled.verify_op(dataset=dataset, version=version, redis_url=redis_url)
    assert (verified.outputs["version"], verified.outputs["intact"], verified.outputs["corrupted"]) == (
        version, True, 0)
    assert verified.outputs["metrics"].metadata["cached"] == again.outputs["metrics"].metadata["shards"]

    with connect(redis_url) as cache:
        manifest = cache.manifest(dataset, version)
        cache.call("SET", cache.keys.chunk(manifest.shards[0].key, 0), b"not the shard")
        cache.call("DELETE", cache.keys.chunk(manifest.shards[1].key, 0))
    damaged = preinstalled.verify_op(dataset=dataset, redis_url=redis_url)
    assert damaged.outputs["intact"] is False
    assert (damaged.outputs["missing"], damaged.outputs["corrupted"]) == (1, 1)
    report = Path(damaged.outputs["report"].path).read_text()
    assert "Missing (evicted or lost): 1" in report  # shard indices
    assert "Corrupted: 0" in report

    # As a gate before training, the step fails instead.
    with pytest.raises(RuntimeError, match="FAILURE"):
        preinstalled.verify_op(dataset=dataset, redis_url=redis_url, require_intact=True)


LEASE_HOLDER = """
import sys, time
from shardcache.cache import connect
cache = connect(sys.argv[1])
cache.lease(sys.argv[2], ttl=2.0)  # renewed every ~0.7 s by a daemon thread, until this process dies
print("held", flush=True)
time.sleep(600)
"""


def test_evict_respects_a_live_lease_and_not_an_expired_one(
    kfp_local: Path, redis_url: str, train_data: Path, dataset: str, preinstalled: Any
) -> None:
    from shardcache.prefetcher import run_prefetch

    version = run_prefetch(str(train_data), dataset=dataset, cache=redis_url, shard_size=SHARD_SIZE).version
    holder = subprocess.Popen([sys.executable, "-c", LEASE_HOLDER, redis_url, dataset], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with connect(redis_url) as cache:
            (member,) = cache.leases(dataset)
            first_expiry = float(cache.call("ZSCORE", cache.keys.leases(dataset), member))
            # Past the lease's first expiry, it is alive only because the holder renews it.
            _wait_until(lambda: _server_ms(cache) > first_expiry, what="the lease's first TTL to pass")
            assert cache.leases(dataset) == [member]
        kept = preinstalled.evict_op(dataset=dataset, redis_url=redis_url)
        assert kept.outputs["status"] == "in_use"
        assert kept.outputs["removed"] == []
        assert "hold a live lease" in Path(kept.outputs["report"].path).read_text()
        with connect(redis_url) as cache:
            assert cache.manifest(dataset).version == version
    finally:
        holder.kill()  # a reader that dies without releasing: its lease expires after its TTL
        holder.wait(10)

    with connect(redis_url) as cache:
        _wait_until(lambda: not cache.leases(dataset), what="the lease to expire")
    removed = preinstalled.evict_op(dataset=dataset, redis_url=redis_url)
    assert removed.outputs["status"] == "removed"
    assert removed.outputs["removed"] == [version]


def _server_ms(cache: Any) -> float:
    seconds, micros = cache.call("TIME")
    return int(seconds) * 1000 + int(micros) / 1000


def _wait_until(condition: Callable[[], bool], *, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_image_variant_runs_from_the_installed_package(
    kfp_local: Path, redis_url: str, train_data: Path, dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the Dockerfile's image does: executor_main finds the function through kfp_config.ini in its workdir.

    kfp.local refuses containerized components only because it cannot build their image;
    here the image's contents are this virtual environment, so the check is lifted.
    """
    from kfp.local import subprocess_task_handler

    from shardcache.prefetcher import run_prefetch

    version = run_prefetch(str(train_data), dataset=dataset, cache=redis_url, shard_size=SHARD_SIZE).version
    workdir = tmp_path / "image-workdir"
    workdir.mkdir()
    (workdir / "kfp_config.ini").write_text(components.kfp_config())
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(subprocess_task_handler.SubprocessTaskHandler,
                        "validate_not_containerized_python_component", lambda self, command: None)

    ops = components.components_for_image("registry.example.com/ml/shardcache-python:test")
    status = ops.cache_status_op(dataset=dataset, redis_url=redis_url)

    assert (status.outputs["version"], status.outputs["intact"]) == (version, True)
