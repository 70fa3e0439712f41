"""The example pipeline, end to end with kfp.local, against the real session Redis Cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardcache.cache import connect

from .conftest import FILES, ROWS_PER_FILE, SHARD_SIZE, load_example, write_parquet

pytestmark = pytest.mark.slow





@pytest.mark.filterwarnings("ignore:Task .* have no effect in the current local runner:UserWarning")
def test_example_pipeline_trains_from_the_cache(
    kfp_local: Path, redis_url: str, train_data: Path, dataset: str, tmp_path: Path
) -> None:
    example = load_example()
    eval_data = write_parquet(tmp_path / "eval", files=1, rows=50, seed=1)

    run = example.pipeline(
        source=str(train_data), eval_source=str(eval_data), dataset=dataset, k8s_service="", redis_url=redis_url,
        shard_size=SHARD_SIZE, epochs=1, batch_size=64, num_workers=0,
    )

    # The training step saw every sample once, through CachedDataLoader.
    assert run.output == FILES * ROWS_PER_FILE
    with connect(redis_url) as cache:
        manifest = cache.manifest(dataset)
        assert manifest.complete
        assert manifest.num_rows == FILES * ROWS_PER_FILE


@pytest.mark.filterwarnings("ignore:Task .* have no effect in the current local runner:UserWarning")
def test_example_mix_pipeline_trains_on_a_weighted_mix(
    kfp_local: Path, redis_url: str, train_data: Path, dataset: str, tmp_path: Path
) -> None:
    example = load_example()
    extra = write_parquet(tmp_path / "extra", files=1, rows=80, seed=2)
    second = f"{dataset}-extra"
    try:
        run = example.mix_pipeline(
            source=str(train_data), mix_source=str(extra), dataset=dataset, mix_dataset=second, mix_weight=0.25,
            epoch_size=400, k8s_service="", redis_url=redis_url, shard_size=SHARD_SIZE, epochs=2, batch_size=64,
            num_workers=0,
        )  # fmt: skip
        assert run.output == 400, "each epoch holds epoch_size samples"
        with connect(redis_url) as cache:
            assert cache.manifest(second).num_rows == 80
    finally:
        with connect(redis_url) as cache:
            if second in cache.datasets():
                cache.delete(second, force=True)


def test_training_reads_through_what_the_cache_lacks(
    kfp_local: Path, redis_url: str, train_data: Path, dataset: str
) -> None:
    """A shard evicted (or never cached) is rebuilt from the source: training sees the same samples."""
    from kfp import dsl

    from shardcache.prefetcher import run_prefetch

    version = run_prefetch(str(train_data), dataset=dataset, cache=redis_url, shard_size=SHARD_SIZE).version
    with connect(redis_url) as cache:
        manifest = cache.manifest(dataset, version)
        cache.call("DELETE", cache.keys.chunk(manifest.shards[0].key, 0))
    # The example's training function, without the pip prelude (the pipeline test runs that).
    train = dsl.component(base_image="python:3.11-slim", install_kfp_package=False)(load_example().train_op)

    task = train(dataset=dataset, version=version, redis_url=redis_url, epochs=1, num_workers=0)

    assert task.outputs["Output"] == FILES * ROWS_PER_FILE
    metrics = task.outputs["metrics"].metadata
    assert metrics["read_throughs"] >= 1
    assert metrics["cache_hit_ratio"] < 1
