"""Batches built in place (inplace.py): a read, shuffled or not, receives its image-sized column
straight into the batches, with or without workers; the batches are the same as gathered ones in every case,
batches the training loop still holds are never written over, and a worker's pool slots taken for
batches never gathered are given back once no read writes into them."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis.exceptions as redis_exceptions

from shardcache.cache import Manifest, ShardCache
from shardcache.dataloader import CachedDataLoader, CachedDataset
from shardcache.dataloader import inplace as inplace_module
from shardcache.dataloader import slots as slots_module
from shardcache.dataloader import tensors as tensors_module
from shardcache.dataloader.slots import SlotPool
from shardcache.dataloader.source import ShardSource
from shardcache.dataloader.stats import Counters
from shardcache.dataloader.tensors import BatchBuilder
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


def check(batches: list[dict[str, Any]], ids: list[int]) -> None:
    assert [int(i) for b in batches for i in b["id"].tolist()] == ids
    for batch in batches:
        for k, i in enumerate(batch["id"].tolist()):
            assert np.array_equal(batch["image"][k].numpy(), expected_image(i)), f"row {i}"
            assert int(batch["label"][k]) == i % 7
            assert batch["name"][k] == f"row-{i}"


@pytest.mark.parametrize("batch_size", [7, 64])
def test_an_unshuffled_read_is_received_in_place(images: Manifest, cache: ShardCache, batch_size: int) -> None:
    loader = CachedDataLoader(images.name, cache=cache, batch_size=batch_size, shuffle=False)
    first = list(loader)
    check(first, list(range(ROWS)))
    second = list(loader)  # the pool's buffers are reused only once nothing holds them
    check(first, list(range(ROWS)))
    check(second, list(range(ROWS)))
    # All but the first shard of each row count, in each epoch.
    assert loader.stats().received_in_place > images.num_shards


@pytest.mark.parametrize("batch_size", [7, 100])
def test_workers_receive_in_place_into_their_pool_blocks(images: Manifest, cache: ShardCache, batch_size: int) -> None:
    loader = CachedDataLoader(images.name, cache=cache, batch_size=batch_size, shuffle=False, num_workers=2,
                              persistent_workers=True)  # fmt: skip
    first = list(loader)
    second = list(loader)  # while the first epoch's batches are held: their blocks are not reused
    check(first, list(range(ROWS)))
    check(second, list(range(ROWS)))
    del first, second
    before = loader.stats()
    third = list(loader)  # now they are
    check(third, list(range(ROWS)))
    after = loader.stats()
    assert after.received_in_place > images.num_shards
    if batch_size == 100:  # batches of 7 are below the pool's POOL_MIN_BYTES: fresh blocks
        assert after.reused_buffers > before.reused_buffers


def test_a_loop_cut_short_loses_no_batch_of_the_next_epoch(images: Manifest, cache: ShardCache) -> None:
    loader = CachedDataLoader(images.name, cache=cache, batch_size=100, shuffle=False, num_workers=2,
                              persistent_workers=True)  # fmt: skip
    for k, _ in enumerate(loader):
        if k == 1:
            break
    check(list(loader), list(range(ROWS)))
    gc.collect()
    boards = [slots_module._boards[token] for token in loader._pools]
    assert boards
    # The batch in flight when the loop stopped keeps its slot (as before in-place receiving); the
    # batches the read-ahead had prepared and never sent give theirs back (without that, 3 here).
    assert sum(int((board != 0).sum()) for board in boards) <= 1


def _gathered(self: Any, rows: int, uses: Any) -> tuple[None, list[Any]]:
    return None, []  # never received in place: every shard read into its own buffer, then gathered


def _as_bytes(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v.numpy().tobytes() if hasattr(v, "numpy") else list(v) for k, v in b.items()} for b in batches]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_shuffled_read_is_received_in_place_into_the_same_batches(
    images: Manifest, cache: ShardCache, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    def epochs(*, inplace: bool) -> tuple[list[list[dict[str, Any]]], int]:
        if not inplace:
            monkeypatch.setattr(inplace_module.InPlace, "_into", _gathered)
        loader = CachedDataLoader(images.name, cache=cache, batch_size=16, shuffle=True, seed=3,
                                  num_workers=workers, persistent_workers=workers > 0)  # fmt: skip
        out = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            out.append(_as_bytes(list(loader)))
        monkeypatch.undo()
        return out, loader.stats().received_in_place

    placed, received = epochs(inplace=True)
    gathered, none = epochs(inplace=False)
    assert none == 0
    assert received > images.num_shards  # all but the first shard of each row count, in each epoch
    assert placed == gathered  # byte for byte, epoch by epoch
    for epoch in placed:
        ids = [i for b in epoch for i in np.frombuffer(b["id"], dtype=np.int64).tolist()]
        assert sorted(ids) == list(range(ROWS))  # every sample exactly once
        assert ids != list(range(ROWS))
    assert placed[0] != placed[1]  # another order in the next epoch
    loader = CachedDataLoader(images.name, cache=cache, batch_size=16, shuffle=True, seed=3, num_workers=workers,
                              persistent_workers=workers > 0)  # fmt: skip
    batches = list(loader)
    check(batches, [int(i) for b in batches for i in b["id"].tolist()])


def test_a_shard_whose_row_is_used_twice_is_gathered(images: Manifest, cache: ShardCache) -> None:
    # Rank 2 of 3 pads its part with its own last sample: that shard's row goes to two positions.
    def ids_of(**kw: Any) -> list[dict[str, Any]]:
        ds = CachedDataset(images.name, cache=cache, shuffle=True, seed=5, rank=2, world_size=3, **kw)
        return list(CachedDataLoader(ds, batch_size=16))

    batches = ids_of()
    ids = [int(i) for b in batches for i in b["id"].tolist()]
    assert len(ids) == len(set(ids)) + 1  # the padding sample
    check(batches, ids)


def test_a_column_not_where_expected_is_read_again(
    images: Manifest, cache: ShardCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    learn = inplace_module.InPlace._learn

    def misplace(self: inplace_module.InPlace, views: Any, payload: Any) -> int | None:
        found = learn(self, views, payload)
        if found is not None:
            self._offsets[views.rows] = found + 4  # the next shard of this size is placed wrongly
        return found

    monkeypatch.setattr(inplace_module.InPlace, "_learn", misplace)
    loader = CachedDataLoader(images.name, cache=cache, batch_size=32, shuffle=False)
    check(list(loader), list(range(ROWS)))
    assert loader.stats().received_in_place == 0


def test_a_shard_read_through_is_gathered(cache: ShardCache, tmp_path: Path) -> None:
    ids = np.arange(120, dtype=np.int64)
    pq.write_table(rows_of(ids), tmp_path / "part-0.parquet")
    name = unique_name("inplace-miss")
    manifest = prefetch(str(tmp_path), dataset=name, cache=cache, shard_size="200KiB")
    try:
        for shard in manifest.shards[2:4]:
            cache.client.delete(shard.key)  # evicted: rebuilt from the source
        loader = CachedDataLoader(name, cache=cache, batch_size=10, shuffle=False)
        check(list(loader), list(range(120)))
        assert 0 < loader.stats().received_in_place < manifest.num_shards
    finally:
        cache.delete(name, force=True)


def test_a_direct_read_cut_short_is_repeated_through_redis_py(
    images: Manifest, cache: ShardCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shardcache.cache.store import shards as store_module

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
    loader = CachedDataLoader(images.name, cache=cache, batch_size=32, shuffle=False)
    check(list(loader), list(range(ROWS)))
    assert calls["cut"] >= 6, "some reads were cut short after writing into the batches"
    assert loader.stats().received_in_place > 0


class GatedSource(ShardSource):
    """A real ShardSource whose loads wait for ``gate`` once ``hold`` is set."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hold, self.gate, self.waiting = threading.Event(), threading.Event(), threading.Event()

    def load_into(self, index: int, into: Any = ()) -> Any:
        if self.hold.is_set():
            self.waiting.set()
            assert self.gate.wait(30)
        return super().load_into(index, into)


def test_closing_gives_pool_slots_back_once_no_load_writes_into_them(
    images: Manifest, cache: ShardCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tensors_module, "get_worker_info", object)  # build batches as a worker does
    ds = CachedDataset(images.name, cache=cache, shuffle=False)
    pool = SlotPool(4)
    builder = BatchBuilder(ds.column_specs, dataset=ds.name, slots=pool, slot_limit=4)
    source = GatedSource(cache=cache, manifest=ds.manifest, counters=Counters(), read_through=True,
                         write_back=False, prefetch_transform=None)  # fmt: skip
    inplace = inplace_module.InPlace(builder, source)
    rows = images.shards[0].rows
    same = [s.index for s in images.shards[1:] if s.rows == rows]
    assert len(same) >= 2

    def uses(key: int) -> list[inplace_module.Use]:  # the shard's rows first in a batch of 100 (> POOL_MIN_BYTES)
        return [(key, 100, np.arange(rows), np.arange(rows))]

    inplace.load(0, uses(0))  # learns where the image column starts; nothing received in place
    assert inplace.take(0) is None
    inplace.load(same[0], uses(1))
    taken = inplace.take(1)
    assert taken is not None
    assert taken.claimed is not None  # a pool slot, busy until the batch is sent and released
    assert pool.board.numpy()[taken.claimed[0][0]] != 0
    builder.discard(taken)
    assert not pool.board.numpy().any()

    source.hold.set()
    outcome: list[Any] = []
    loading = threading.Thread(target=lambda: outcome.append(inplace.load(same[1], uses(2))))
    loading.start()
    assert source.waiting.wait(30)  # the batch is prepared and the load is about to receive into it
    assert pool.board.numpy().any()
    inplace.close()
    assert pool.board.numpy().any(), "a load still writes into that block: its slot must stay busy"
    source.gate.set()
    loading.join(30)
    assert not loading.is_alive()
    assert len(outcome) == 1, "the load itself succeeded"
    assert not pool.board.numpy().any(), "given back once the load finished"
    assert inplace.take(2) is None
