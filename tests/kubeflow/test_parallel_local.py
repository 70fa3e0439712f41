"""The parallel prefetch in Kubeflow: plan_op, prefetch_op per part, commit_op, run by kfp.local on the real cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shardcache.cache import connect
from shardcache.prefetcher import part_range

from .conftest import FILES, ROWS_PER_FILE, SHARD_SIZE, load_example, write_parquet

pytestmark = pytest.mark.slow





@pytest.mark.filterwarnings("ignore:Task .* have no effect in the current local runner:UserWarning")
def test_example_parallel_pipeline_loads_in_parts_and_commits_once(
    kfp_local: Path, redis_url: str, dataset: str, tmp_path: Path
) -> None:
    """The committed example, pip prelude included: a ParallelFor of 3 parts, then one commit."""
    data = write_parquet(tmp_path / "train", files=3)
    example = load_example("parallel_pipeline")
    run = example.pipeline(source=str(data), dataset=dataset, parts=3, k8s_service="", redis_url=redis_url,
                           shard_size=SHARD_SIZE)
    with connect(redis_url) as cache:
        manifest = cache.manifest(dataset)
        assert run.output == manifest.version
        assert manifest.complete
        assert manifest.num_rows == 3 * ROWS_PER_FILE
        assert manifest.cached_shards == manifest.num_shards
        assert not cache.missing_shards(manifest, check_sizes=True)
        assert cache.call("EXISTS", cache.keys.done(dataset, manifest.version)) == 0


def test_components_plan_parts_and_commit(
    kfp_local: Path, redis_url: str, train_data: Path, dataset: str, preinstalled: Any
) -> None:
    common = {"source": str(train_data), "dataset": dataset, "redis_url": redis_url, "shard_size": SHARD_SIZE}
    plan = preinstalled.plan_op(parts=2, **common)
    items = plan.outputs["Output"]
    version = items[0]["version"]
    assert items == [{"part": 0, "parts": 2, "version": version}, {"part": 1, "parts": 2, "version": version}]
    report = Path(plan.outputs["report"].path).read_text()
    assert "in 2 parts" in report
    assert "is **loading**" in report
    with connect(redis_url) as cache:
        shards = cache.manifest(dataset, version).num_shards

    first = preinstalled.prefetch_op(part=0, parts=2, version=version, **common)
    assert first.outputs["Output"] == version
    assert first.outputs["metrics"].metadata["written"] == len(part_range(shards, 0, 2))
    assert "(part 0 of 2)" in Path(first.outputs["report"].path).read_text()

    # A part is missing: the commit step fails and the version stays loading.
    with pytest.raises(RuntimeError):
        preinstalled.commit_op(parts_done=[version], **common)
    with connect(redis_url) as cache:
        assert cache.manifest(dataset, version).state == "loading"

    second = preinstalled.prefetch_op(part=1, parts=2, version=version, **common)
    assert second.outputs["metrics"].metadata["written"] == len(part_range(shards, 1, 2))
    done = preinstalled.commit_op(parts_done=[version, version], **common)
    assert done.outputs["Output"] == version
    assert done.outputs["metrics"].metadata["rows"] == FILES * ROWS_PER_FILE
    again = preinstalled.commit_op(version=version, parts_done=[version, version], **common)
    assert "already cached: nothing to do" in Path(again.outputs["report"].path).read_text()
    with connect(redis_url) as cache:
        manifest = cache.manifest(dataset, version)
        assert manifest.complete
        assert manifest.num_rows == FILES * ROWS_PER_FILE
