"""Batches built in place (inplace.py): without workers, an unshuffled read receives its image-sized
column straight into the batches; the batches are the same as gathered ones in every case, and
batches the training loop still holds are never written over."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis.exceptions as redis_exceptions

from shardcache.cache import Manifest, ShardCache
from shardcache.dataloader import CachedDataLoader
from shardcache.dataloader import inplace as inplace_module
from shardcache.prefetcher import prefetch

from .conftest import unique_name

WIDTH = 3 * 32 * 32 * 4  # float32 [3, 32, 32]: above tensors.ROW_COPY_BYTES
ROWS = 260


def rows_of(ids: np.ndarray) -> pa.Table:
    """``label`` comes before ``image``, so where the image starts in a payload depends on the row count."""
    images = (ids[:, None] * 1000 + np.arange(WIDTH // 4)[None, :]).astype(np.float32)
    image_type = pa.fixed_shape_tensor(pa.float32(), (3, 32, 32))
    storage = pa.FixedSizeListArray.from_arrays(pa.array(images.ravel()), WIDTH // 4)
    return pa.table(
        {
            "id": pa.array(ids),
            "label": pa.array((ids % 7).astype(np.int16)),
            "image": pa.ExtensionArray.from_storage(image_type, storage),
            "name": pa.array([f"row-{i}" for i in ids]),
        }
    )


def expected_image(i: int) -> np.ndarray:
    return (i * 1000 + np.arange(WIDTH // 4)).astype(np.float32).reshape(3, 32, 32)


@pytest.fixture(scope="module")
def images(cache: ShardCache, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manifest]:
    root = tmp_path_factory.mktemp("inplace-source")
    ids = np.arange(ROWS, dtype=np.int64)
    for k, part in enumerate(np.array_split(ids, 3)):  # three files: shards of uneven row counts
        pq.write_table(rows_of(part), root / f"part-{k}.parquet")
    name = unique_name("inplace")
    manifest = prefetch(str(root), dataset=name, cache=cache, shard_size="200KiB")
    assert manifest.num_shards >= 10
    assert len({s.rows for s in manifest.shards}) > 1
    yield manifest
    cache.delete(name, force=True)


@pytest.fixture
def placed(monkeypatch: pytest.MonkeyPatch) -> list[inplace_module.InPlace]:
    """Every InPlace made, to count the shards it received in place."""
    made: list[inplace_module.InPlace] = []
    original = inplace_module.InPlace.__init__

    def init(self: inplace_module.InPlace, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(inplace_module.InPlace, "__init__", init)
    return made


def check(batches: list[dict[str, Any]], ids: list[int]) -> None:
    assert [int(i) for b in batches for i in b["id"].tolist()] == ids
    for batch in batches:
        for k, i in enumerate(batch["id"].tolist()):
            assert np.array_equal(batch["image"][k].numpy(), expected_image(i)), f"row {i}"
            assert int(batch["label"][k]) == i % 7
            assert batch["name"][k] == f"row-{i}"


@pytest.mark.parametrize("batch_size", [7, 64])
def test_an_unshuffled_read_is_received_in_place(
    images: Manifest, cache: ShardCache, placed: list[inplace_module.InPlace], batch_size: int
) -> None:
    loader = CachedDataLoader(images.name, cache=cache, batch_size=batch_size, shuffle=False)
    first = list(loader)
    check(first, list(range(ROWS)))
    second = list(loader)  # the pool's buffers are reused only once nothing holds them
    check(first, list(range(ROWS)))
    check(second, list(range(ROWS)))
    assert sum(p.placed for p in placed) > images.num_shards, "all but the first shard of each row count"


def test_a_shuffled_read_is_gathered(images: Manifest, cache: ShardCache, placed: list[inplace_module.InPlace]) -> None:
    loader = CachedDataLoader(images.name, cache=cache, batch_size=16, shuffle=True, seed=3)
    batches = list(loader)
    ids = [int(i) for b in batches for i in b["id"].tolist()]
    assert sorted(ids) == list(range(ROWS))
    assert ids != list(range(ROWS))
    check(batches, ids)
    assert sum(p.placed for p in placed) == 0


def test_a_column_not_where_expected_is_read_again(
    images: Manifest, cache: ShardCache, placed: list[inplace_module.InPlace], monkeypatch: pytest.MonkeyPatch
) -> None:
    learn = inplace_module.InPlace._learn

    def misplace(self: inplace_module.InPlace, views: Any, payload: Any) -> int | None:
        found = learn(self, views, payload)
        if found is not None:
            self._offsets[views.rows] = found + 4  # the next shard of this size is placed wrongly
        return found

    monkeypatch.setattr(inplace_module.InPlace, "_learn", misplace)
    batches = list(CachedDataLoader(images.name, cache=cache, batch_size=32, shuffle=False))
    check(batches, list(range(ROWS)))
    assert sum(p.placed for p in placed) == 0


def test_a_shard_read_through_is_gathered(
    cache: ShardCache, tmp_path: Path, placed: list[inplace_module.InPlace]
) -> None:
    ids = np.arange(120, dtype=np.int64)
    pq.write_table(rows_of(ids), tmp_path / "part-0.parquet")
    name = unique_name("inplace-miss")
    manifest = prefetch(str(tmp_path), dataset=name, cache=cache, shard_size="200KiB")
    try:
        for shard in manifest.shards[2:4]:
            cache.client.delete(shard.key)  # evicted: rebuilt from the source
        batches = list(CachedDataLoader(name, cache=cache, batch_size=10, shuffle=False))
        check(batches, list(range(120)))
        assert 0 < sum(p.placed for p in placed) < manifest.num_shards
    finally:
        cache.delete(name, force=True)


def test_a_direct_read_cut_short_is_repeated_through_redis_py(
    images: Manifest, cache: ShardCache, placed: list[inplace_module.InPlace], monkeypatch: pytest.MonkeyPatch
) -> None:
    from shardcache.cache import store as store_module

    direct = store_module.read_bulk
    calls = {"cut": 0}

    def cut_every_third(client: Any, key: str, *, cluster: bool, hasher: Any = None, into: Any = ()) -> Any:
        calls["cut"] += 1
        if into and calls["cut"] % 3 == 0:
            for _, destination in into:
                destination[: min(64, len(destination))] = b"\xff" * min(64, len(destination))  # half-received
            raise redis_exceptions.ConnectionError("Connection reset by peer")
        return direct(client, key, cluster=cluster, hasher=hasher, into=into)

    monkeypatch.setattr(store_module, "read_bulk", cut_every_third)
    batches = list(CachedDataLoader(images.name, cache=cache, batch_size=32, shuffle=False))
    check(batches, list(range(ROWS)))
    assert calls["cut"] >= 6, "some reads were cut short after writing into the batches"
    assert sum(p.placed for p in placed) > 0
