"""The main job, small: local cluster, Parquet, prefetch, 2-process DDP training through CachedDataLoader."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardcache.demo import DemoResult, run_demo
from shardcache.errors import ConfigError


@pytest.mark.slow
def test_demo_trains_on_every_sample_and_stops_its_cluster(tmp_path: Path):
    result = run_demo(workdir=tmp_path, samples=640, image_size=16, batch_size=32, world_size=2)
    assert isinstance(result, DemoResult)
    assert result.samples_seen == 640, "each sample once over the two ranks"
    assert result.hit_ratio == 1.0
    assert result.read_throughs == 0
    assert 0.0 <= result.wait_fraction <= 1.0
    assert result.samples_per_second > 0
    assert result.shards >= 1
    assert set(result.to_dict()) >= {"samples_per_second", "hit_ratio", "wait_fraction"}
    assert "hit ratio 100.0%" in result.summary()
    assert not (tmp_path / "cluster" / "cluster.json").exists(), "the cluster was stopped"


@pytest.mark.parametrize(("option", "value"), [("samples", 0), ("world_size", 0), ("image_size", 4), ("epochs", True)])
def test_demo_rejects_bad_options_before_starting_anything(tmp_path: Path, option, value):
    with pytest.raises(ConfigError, match=f"{option}={value!r} is invalid"):
        run_demo(workdir=tmp_path, **{option: value})
    assert not (tmp_path / "cluster").exists()
