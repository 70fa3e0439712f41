"""Fixtures of the store tests: every test here runs against a real cluster and a real standalone server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pytest

from shardcache.cache import Manifest, RetryPolicy, ShardCache, ShardInfo, SourceSegment, connect, encode_table
from shardcache.cache.keys import KeySpace
from shardcache.errors import DatasetNotFound

# Long enough to ride through a failover of the shared cluster, short enough that a broken
# test fails in reasonable time.
TEST_RETRY = RetryPolicy(deadline=20.0)


@pytest.fixture(params=["cluster", "standalone"])
def url(request: pytest.FixtureRequest) -> str:
    """The session cluster's URL, then the session standalone server's."""
    if request.param == "standalone" and request.node.get_closest_marker("onlycluster"):
        pytest.skip("needs a Redis Cluster")
    return str(request.getfixturevalue("redis_url" if request.param == "cluster" else "standalone_url"))


@pytest.fixture
def cache(url: str) -> Iterator[ShardCache]:
    with connect(url, retry=TEST_RETRY, env={}) as c:
        yield c


@pytest.fixture
def name(cache: ShardCache) -> Iterator[str]:
    """A dataset name no other test (or test session sharing the cluster) uses; removed afterwards."""
    dataset = f"test-{uuid.uuid4().hex[:12]}"
    yield dataset
    try:
        cache.delete(dataset, force=True)
    except DatasetNotFound:  # the test removed it itself
        pass


def tables(count: int, *, rows: int = 50, start: int = 0) -> list[pa.Table]:
    """``count`` small tables with distinct contents."""
    return [
        pa.table({"x": pa.array(range(start + i * rows, start + (i + 1) * rows), pa.int64()),
                  "s": [f"row-{j}" for j in range(start + i * rows, start + (i + 1) * rows)]})
        for i in range(count)
    ]


def new_manifest(name: str, parts: Sequence[pa.Table], *, version: str = "v1", prefix: str = "sc:") -> Manifest:
    """A loading manifest whose shard table matches ``parts``."""
    keys = KeySpace(prefix)
    shards, row = [], 0
    for i, t in enumerate(parts):
        seg = SourceSegment(uri=f"file:///data/{name}.parquet", row_start=row, row_stop=row + t.num_rows)
        shards.append(ShardInfo(index=i, key=keys.shard(name, version, i), rows=t.num_rows, source=(seg,)))
        row += t.num_rows
    return Manifest(name=name, version=version, schema=parts[0].schema, shards=tuple(shards))


def write_version(cache: ShardCache, name: str, parts: Sequence[pa.Table], *, version: str = "v1",
                  commit: bool = True) -> Manifest:
    """Lock, begin, put every shard, commit (unless ``commit=False``), release; return the manifest."""
    with cache.lock(name) as lock:
        manifest = cache.begin(new_manifest(name, parts, version=version, prefix=cache.keys.prefix))
        for i, t in enumerate(parts):
            manifest = manifest.with_shard(cache.put_shard(manifest, i, encode_table(t)))
        if commit:
            manifest = cache.commit(manifest, lock=lock)
    return manifest
