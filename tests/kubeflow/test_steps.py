"""What the components do, called directly (no KFP): status, verification, eviction and their reports."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from shardcache.cache import ShardCache, connect
from shardcache.errors import (
    ConfigError,
    DatasetInUse,
    DatasetLocked,
    DatasetNotFound,
    ShardCorrupted,
    ShardMissing,
)
from shardcache.kubeflow_components import ops, steps
from shardcache.prefetcher import Progress, run_prefetch

from .conftest import SHARD_SIZE


@pytest.fixture
def cache(redis_url: str) -> Iterator[ShardCache]:
    with connect(redis_url) as c:
        yield c


@pytest.fixture
def cached(cache: ShardCache, train_data: Path, dataset: str) -> str:
    """``dataset`` prefetched; returns its version."""
    result = steps.prefetch(cache, source=str(train_data), dataset=dataset, shard_size=SHARD_SIZE)
    assert result.report["state"] == "complete"
    return result.version


def test_status_of_an_intact_dataset(cache: ShardCache, dataset: str, cached: str) -> None:
    status = steps.dataset_status(cache, dataset=dataset)
    assert (status.version, status.state, status.complete, status.intact) == (cached, "complete", True, True)
    assert status.cached == status.shards > 1
    status.check()  # raises nothing
    assert "is **complete** and **intact** (keys checked, contents not read)" in status.markdown()


def test_verification_tells_missing_from_corrupted(cache: ShardCache, dataset: str, cached: str) -> None:
    manifest = cache.manifest(dataset, cached)
    cache.call("SET", cache.keys.chunk(manifest.shards[0].key, 0), b"garbage")
    cache.call("DELETE", cache.keys.chunk(manifest.shards[2].key, 0))

    listed = steps.dataset_status(cache, dataset=dataset)  # keys only: the garbage is not seen
    assert (listed.missing, listed.corrupted, listed.intact) == ((2,), (), False)
    verified = steps.verify_dataset(cache, dataset=dataset, version=cached)
    assert (verified.missing, verified.corrupted, verified.intact) == ((2,), (0,), False)
    assert verified.metrics()["corrupted"] == 1
    with pytest.raises(ShardCorrupted, match=r"1 shard\(s\) .* failed their checksum \(0\)"):
        verified.check()
    with pytest.raises(ShardMissing, match=r"1 shard\(s\) not in the cache \(2\)"):
        listed.check()


def test_absent_dataset_is_a_status_not_an_error(cache: ShardCache) -> None:
    status = steps.verify_dataset(cache, dataset="never-prefetched-kfp")
    assert (status.state, status.complete, status.intact) == ("absent", False, False)
    assert "is **not in the cache**" in status.markdown()
    with pytest.raises(DatasetNotFound, match="run the prefetch step first"):
        status.check()


def test_eviction_outcomes(cache: ShardCache, dataset: str, cached: str) -> None:
    assert steps.evict_dataset(cache, dataset=dataset, all_old=True).status == "nothing"  # one version only
    with cache.lease(dataset, cached, ttl=30):
        in_use = steps.evict_dataset(cache, dataset=dataset)
        assert in_use.status == "in_use"
        assert len(in_use.leases) == 1
        assert in_use.leases[0].startswith(f"{cached}|")
        with pytest.raises(DatasetInUse):
            in_use.check()
    removed = steps.evict_dataset(cache, dataset=dataset)
    assert (removed.status, removed.removed) == ("removed", (cached,))
    removed.check()
    assert steps.evict_dataset(cache, dataset=dataset).status == "not_found"
    with pytest.raises(ConfigError, match="pass one of them"):
        steps.evict_dataset(cache, dataset=dataset, version=cached, all_old=True)


def test_eviction_while_a_prefetch_writes_is_in_use_and_fails_only_if_asked(
    redis_url: str, cache: ShardCache, train_data: Path, dataset: str, tmp_path: Path
) -> None:
    holding, release = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def slow(p: Progress) -> None:
        if p.shards_done >= 1:
            holding.set()
            release.wait(30)

    def prefetcher() -> None:
        with connect(redis_url) as c:
            try:
                outcome["report"] = run_prefetch(train_data, dataset=dataset, cache=c, shard_size=SHARD_SIZE,
                                                 workers=1, progress=slow)
            except BaseException as exc:
                outcome["error"] = exc

    thread = threading.Thread(target=prefetcher, name="prefetcher")
    thread.start()
    try:
        assert holding.wait(30), outcome
        (version,) = cache.versions(dataset)
        eviction = steps.evict_dataset(cache, dataset=dataset)
        assert (eviction.status, eviction.removed, eviction.leases) == ("in_use", (), ())
        assert f"version {version} of {dataset!r} is still loading: a prefetch is writing it" in eviction.writer
        assert eviction.metrics()["in_use"] == 1
        assert "Not removed: version" in eviction.markdown()
        with pytest.raises(DatasetLocked, match="is still loading"):
            eviction.check()
        assert steps.evict_dataset(cache, dataset=dataset, all_old=True).status == "nothing"  # the newest stays
        # The component: succeeds with status 'in_use', or fails when fail_if_in_use is set.
        report = SimpleNamespace(path=str(tmp_path / "report.md"))
        assert ops.evict_op(dataset=dataset, redis_url=redis_url, report=report) == ("in_use", [])
        assert "a prefetch is writing it" in Path(report.path).read_text()
        with pytest.raises(DatasetLocked, match="a prefetch is writing it"):
            ops.evict_op(dataset=dataset, redis_url=redis_url, fail_if_in_use=True, report=report)
        assert cache.manifest(dataset, version).state == "loading"  # nothing was removed
    finally:
        release.set()
        thread.join(60)
    assert getattr(outcome.get("report"), "state", None) == "complete", outcome
    assert steps.evict_dataset(cache, dataset=dataset).removed == (version,)


def test_reports_escape_markdown() -> None:
    status = steps.DatasetStatus(dataset="a`b|c", version="v1", state="loading", shards=3, uncached=(1, 2))
    text = status.markdown()
    assert "`a'b|c`" in text
    assert "is **loading** and **not intact**" in text
    eviction = steps.Eviction(dataset="d", status="in_use", leases=("v1|host:1:abc",))
    assert "1 reader(s) hold a live lease (`v1|host:1:abc`)" in eviction.markdown()


def test_publish_writes_metrics_and_markdown(tmp_path: Path) -> None:
    logged: dict[str, float] = {}

    class Metrics:
        def log_metric(self, metric: str, value: float) -> None:
            logged[metric] = value

    class Report:
        path = str(tmp_path / "report.md")

    steps.publish(steps.Eviction(dataset="d", status="removed", removed=("v1",)), metrics=Metrics(), report=Report())
    assert logged == {"removed": 1.0, "in_use": 0.0}
    assert Path(Report.path).read_text() == "# Eviction of `d`\n\nRemoved version(s): `v1`.\n"
