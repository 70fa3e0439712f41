"""The pieces of the comparison that need no servers: options, targets, the table, scaling summaries."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from shardcache.errors import ConfigError


def _report(compare: ModuleType) -> ModuleType:
    import comparison.report  # on sys.path once compare.py is loaded

    return comparison.report


def _outcome(key: str, family: str, *, workers: int | None, batch: int | None, seconds: float, samples: int,
             group: str = "alternative", rss: int = 300_000_000) -> object:
    from comparison.rounds import Outcome, System

    system = System(key=key, family=family, name=family, group=group, spec={}, python="python", workers=workers,
                    batch_size=batch)
    run = {"seconds": seconds, "samples": samples, "nbytes": samples * 1000, "peak_rss": rss, "first_batch_s": 0.1,
           "first_epoch_s": seconds * 2, "first_epoch_samples": samples}
    return Outcome(system, runs=[run, {**run, "seconds": seconds * 3}, {**run, "seconds": seconds * 0.9}])


def test_targets_pass_and_miss_on_ratios_of_the_same_run(compare: ModuleType) -> None:
    report = _report(compare)
    outcomes = [
        _outcome("cached/w0/b64", "cached", workers=0, batch=64, seconds=1.0, samples=1000, group="shardcache"),
        _outcome("get/w0", "get", workers=0, batch=None, seconds=0.5, samples=1000, group="limit"),  # 2x faster
        _outcome("parquet/w0/b64", "parquet", workers=0, batch=64, seconds=2.0, samples=1000),
        _outcome("s3/w0/b64", "s3", workers=0, batch=64, seconds=4.0, samples=1000),
        _outcome("prefetch", "prefetch", workers=None, batch=None, seconds=1.0, samples=1000, group="shardcache"),
        _outcome("set", "set", workers=None, batch=None, seconds=1.25, samples=1000, group="limit"),
    ]
    rows = report.build_rows(outcomes, sample_bytes=1000)
    by_key = {r.key: r for r in rows}
    # Medians of 1.0, 3.0 and 0.9 s.
    assert by_key["cached/w0/b64"].samples_per_s == pytest.approx(1000.0)
    assert by_key["cached/w0/b64"].first_epoch_samples_per_s == pytest.approx(500.0)  # first epochs of 2, 6, 1.8 s
    assert by_key["parquet/w0/b64"].shardcache_ratio == pytest.approx(2.0)
    assert by_key["set"].shardcache_ratio == pytest.approx(1.25)
    scaling = {"rss_growth_x4": 1.02}
    targets = {t.name: t for t in report.build_targets(rows, workers=[0], scaling=scaling)}
    assert targets["CachedDataLoader / bare GET loop (workers=0)"].status == "MISS"
    assert targets["CachedDataLoader / bare GET loop (workers=0)"].value == pytest.approx(0.5)
    assert "first epoch (cold: worker start-up, connections, first shards) 0.25x" in \
        targets["CachedDataLoader / bare GET loop (workers=0)"].detail
    assert targets["CachedDataLoader / plain Parquet DataLoader (local disk)"].status == "PASS"
    assert targets["CachedDataLoader / direct S3, no cache"].status == "MISS"  # 4x < 5x
    assert targets["prefetch / bare SET loop"].status == "PASS"
    assert targets["loader peak RSS, dataset x4 / x1"].status == "PASS"
    mds = targets["CachedDataLoader / MosaicML Streaming (local disk)"]
    assert (mds.status, mds.value) == ("SKIP", None)
    assert "mds was not measured" in mds.detail


def test_table_shows_skipped_and_failed_systems_with_the_reason(compare: ModuleType) -> None:
    from comparison.rounds import Outcome, System

    report = _report(compare)
    skipped = Outcome(System(key="mds/w0/b256", family="mds", name="MosaicML", group="alternative", spec={},
                             python="python", workers=0, batch_size=256), skipped="skipped (--no-peers)")
    failed = Outcome(System(key="s3/w0/b256", family="s3", name="S3", group="alternative", spec={}, python="python",
                            workers=0, batch_size=256), error="s3 exited with 1:\nOSError: boom")
    rows = report.build_rows([skipped, failed], sample_bytes=100)
    text = report.render_table(rows)
    assert "MosaicML [skipped: skipped (--no-peers)]" in text
    assert "S3 [failed: OSError: boom]" in text
    markdown = report.render_table(rows, markdown=True)
    assert markdown.splitlines()[0].startswith("| system | workers | batch | MB/s")


def test_scaling_summary_reports_linear_time_and_flat_memory(compare: ModuleType) -> None:
    from comparison.scaling import _summary, render_scaling

    def point(factor: int, seconds: float, rss: float) -> dict[str, object]:
        return {"factor": factor, "shard_size": 4 << 20, "rows": 100 * factor, "bytes": 10**8 * factor,
                "prefetch_s": seconds * 2, "prefetch_mb_per_s": 50.0,
                "loader": {"0": {"batch_size": 256, "seconds": seconds, "mb_per_s": 1.0, "peak_rss_mb": rss}}}

    points = [point(1, 1.0, 400.0), point(2, 2.1, 404.0), point(4, 3.9, 408.0)]
    summary = _summary(points, 4 << 20)
    assert summary["rss_growth_x4"] == pytest.approx(1.02)
    assert summary["time_ratio_x4_by_workers"]["0"] == pytest.approx(3.9)
    text = render_scaling({"points": points, **summary})
    assert "loader time x4/x1 (linear = 4.00): w=0: 3.90; prefetch x4/x1: 3.90" in text
    assert "after the first batch" not in text


def test_options_are_validated_with_the_fix_named(compare: ModuleType) -> None:
    with pytest.raises(ConfigError, match="--workers"):
        compare.build_config(compare.parse_args(["--workers", "two"]))
    with pytest.raises(ConfigError, match="unknown systems"):
        compare.build_config(compare.parse_args(["--quick", "--systems", "cached,tensorflow"]))
    with pytest.raises(ConfigError, match="3x224x224"):
        compare.build_config(compare.parse_args(["--quick", "--image-shape", "3xAx2"]))
    cfg = compare.build_config(compare.parse_args(["--quick"]))
    assert (cfg.image_shape, cfg.rounds, cfg.warmup, cfg.batch_sizes) == ((3, 64, 64), 1, 0, (64,))


def test_peers_are_never_used_in_ci(compare: ModuleType) -> None:
    from comparison.config import default_size, peers_decision

    assert peers_decision(no_peers=False, env={"CI": "true"})[0] is False
    assert "CI=true" in peers_decision(no_peers=False, env={"CI": "true"})[1]
    assert peers_decision(no_peers=True, env={})[0] is False
    assert peers_decision(no_peers=False, env={})[0] is True
    assert default_size(available=100 * 10**9, cpus=8) == 2 * 10**9
    assert default_size(available=100 * 10**9, cpus=2) == 2 * 512 * 10**6
    assert default_size(available=10**9, cpus=8) == 512 * 10**6


def test_from_json_reports_a_file_saved_by_an_older_version(compare: ModuleType, tmp_path: Path) -> None:
    old_run = {"seconds": 1.0, "samples": 1000, "nbytes": 10**6, "peak_rss": 10**8, "first_batch_s": 0.1}
    new_run = {**old_run, "first_epoch_s": 4.0, "first_epoch_samples": 1000}

    def row(key: str, family: str, workers: int | None, run: dict[str, object]) -> dict[str, object]:
        return {"key": key, "family": family, "system": family, "group": "limit", "workers": workers,
                "batch_size": None, "samples_per_s": 1000.0, "first_batch_s": 0.1, "steady_samples_per_s": 1100.0,
                "rounds": 1, "runs": [run]}

    saved = tmp_path / "old.json"
    saved.write_text(json.dumps({
        "format": compare.JSON_FORMAT, "meta": {"config": {"workers": [0]}}, "scaling": None, "targets": [],
        "systems": [row("cached/w0/b64", "cached", 0, old_run), row("parquet/w0/b64", "parquet", 0, new_run)],
    }))
    doc = compare._reload(saved)
    rows = {r["key"]: r for r in doc["systems"]}
    assert all("steady_samples_per_s" not in r for r in rows.values())
    assert rows["cached/w0/b64"]["first_epoch_samples_per_s"] is None
    assert rows["parquet/w0/b64"]["first_epoch_samples_per_s"] == pytest.approx(250.0)
    assert {t["name"] for t in doc["targets"]} >= {"CachedDataLoader / bare GET loop (workers=0)"}
