"""Arrow rows to batches: column kinds, zero-copy views, gathering, buffer reuse (no Redis needed)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from shardcache.dataloader.plan import EpochPlan
from shardcache.dataloader.tensors import ROW_COPY_BYTES, BatchBuilder, BufferPool, column_specs, row_runs
from shardcache.dataloader.worker import batch_groups, chunk_batches, shard_schedule, worker_batches
from shardcache.errors import ConfigError
from shardcache.sampling import row_offsets


def shard(rows: int, start: int) -> pa.Table:
    ids = np.arange(start, start + rows)
    return pa.table(
        {
            "id": pa.array(ids),
            "half": pa.array(ids.astype(np.float16)),
            "flag": pa.array(ids % 2 == 0),
            "bin": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(2), rows, [None, pa.py_buffer(np.repeat(ids % 256, 2).astype(np.uint8).tobytes())]
            ),
            "grid": pa.FixedSizeListArray.from_arrays(
                pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ids, 6).astype(np.int32)), 3), 2
            ),
            "tensor": pa.FixedShapeTensorArray.from_numpy_ndarray(
                np.repeat(ids, 6).astype(np.uint8).reshape(rows, 2, 3)
            ),
            "text": pa.array([f"t{i}" for i in ids]),
            "when": pa.array(ids.astype("datetime64[s]")),
        }
    )


def test_column_kinds_and_shapes():
    specs = {s.name: s for s in column_specs(shard(2, 0).schema, None)}
    assert (specs["id"].kind, specs["id"].dtype, specs["id"].shape) == ("tensor", np.dtype(np.int64), ())
    assert specs["half"].dtype == np.dtype(np.float16)
    assert specs["flag"].dtype == np.dtype(np.bool_)
    assert (specs["bin"].dtype, specs["bin"].shape) == (np.dtype(np.uint8), (2,))
    assert (specs["grid"].dtype, specs["grid"].shape) == (np.dtype(np.int32), (2, 3))
    assert (specs["tensor"].dtype, specs["tensor"].shape) == (np.dtype(np.uint8), (2, 3))
    assert specs["text"].kind == specs["when"].kind == "list"


def gather(builder: BatchBuilder, tables: list[pa.Table], picks: list[tuple[int, int]]) -> dict:
    """The batch of ``picks`` = [(shard, row), ...] in that order."""
    views = [builder.views(t, shard=i) for i, t in enumerate(tables)]
    parts = []
    for s in range(len(tables)):
        positions = np.array([k for k, (ps, _) in enumerate(picks) if ps == s], dtype=np.int64)
        rows = np.array([r for ps, r in picks if ps == s], dtype=np.int64)
        if len(rows):
            parts.append((views[s], rows, positions))
    return builder.gather(parts, len(picks))


def test_gather_builds_each_column_in_batch_order():
    tables = [shard(5, 0), shard(4, 100)]
    builder = BatchBuilder(column_specs(tables[0].schema, None), dataset="t")
    picks = [(1, 3), (0, 0), (0, 4), (1, 0), (0, 2)]
    batch = gather(builder, tables, picks)
    ids = [103, 0, 4, 100, 2]
    assert batch["id"].tolist() == ids
    assert batch["half"].dtype == torch.float16
    assert batch["flag"].tolist() == [i % 2 == 0 for i in ids]
    assert batch["bin"].shape == (5, 2)
    assert batch["bin"][:, 1].tolist() == [i % 256 for i in ids]
    assert batch["grid"].shape == (5, 2, 3)
    assert batch["grid"][:, 1, 2].tolist() == ids
    assert batch["tensor"].shape == (5, 2, 3)
    assert batch["tensor"][:, 0, 0].tolist() == [i % 256 for i in ids]
    assert batch["text"] == [f"t{i}" for i in ids]
    assert len(batch["when"]) == 5


def test_large_rows_are_gathered_in_batch_order_too():
    """Rows of at least ROW_COPY_BYTES take the per-row copy path; the result is the same."""
    width = ROW_COPY_BYTES + 8
    tables = [
        pa.table({"img": pa.array([bytes([base + r]) * width for r in range(4)], pa.binary(width))})
        for base in (0, 100)
    ]
    builder = BatchBuilder(column_specs(tables[0].schema, None), dataset="t")
    picks = [(1, 3), (0, 0), (0, 2), (1, 1)]
    batch = gather(builder, tables, picks)
    assert batch["img"].shape == (4, width)
    assert [int(batch["img"][k, 0]) for k in range(4)] == [103, 0, 2, 101]
    assert all(bool((batch["img"][k] == batch["img"][k, 0]).all()) for k in range(4))


def test_sliced_and_chunked_shards_are_viewed_at_their_offsets():
    whole = shard(10, 0)
    table = pa.concat_tables([whole.slice(3, 4), whole.slice(7, 2)])  # two chunks, both with offsets
    builder = BatchBuilder(column_specs(table.schema, ["id", "bin", "grid", "tensor"]), dataset="t")
    batch = gather(builder, [table], [(0, 0), (0, 5), (0, 3)])
    assert batch["id"].tolist() == [3, 8, 6]
    assert batch["bin"][:, 0].tolist() == [3, 8, 6]
    assert batch["grid"][:, 0, 0].tolist() == [3, 8, 6]
    assert batch["tensor"][:, 1, 2].tolist() == [3, 8, 6]


def test_a_batch_held_by_the_caller_is_never_overwritten():
    tables = [shard(8, 0)]
    builder = BatchBuilder(column_specs(tables[0].schema, ["id"]), dataset="t")
    kept = [gather(builder, tables, [(0, k), (0, k + 1)]) for k in range(6)]
    assert [b["id"].tolist() for b in kept] == [[k, k + 1] for k in range(6)]
    # Batches the caller dropped are reused rather than allocated again.
    first = gather(builder, tables, [(0, 0), (0, 1)])["id"].data_ptr()
    assert any(gather(builder, tables, [(0, 2), (0, 3)])["id"].data_ptr() == first for _ in range(4))


def test_nulls_in_a_tensor_column_raise_config_error():
    table = pa.table({"x": pa.array([1, None, 3])})
    builder = BatchBuilder(column_specs(table.schema, None), dataset="d")
    with pytest.raises(ConfigError, match="column 'x' of shard 4 of 'd' has null values"):
        builder.views(table, shard=4)


def test_unknown_or_repeated_columns_raise_config_error():
    schema = shard(1, 0).schema
    with pytest.raises(ConfigError, match="names 'nope', which the dataset does not have"):
        column_specs(schema, ["id", "nope"])
    with pytest.raises(ConfigError, match="distinct column names"):
        column_specs(schema, ["id", "id"])


def test_batch_groups_cover_each_batch_once():
    rows = (5, 0, 9, 1, 30, 2, 17)
    plan = EpochPlan.build(rows=rows, seed=1, epoch=2, world_size=2, rank=1, batch_size=7, drop_last=False)
    offsets = row_offsets(rows)
    for j in range(plan.num_batches):
        groups, size = batch_groups(plan, offsets, j)
        assert size == len(plan.batch(j))
        shards = [s for s, _, _ in groups]
        assert shards == sorted(set(shards)), "one group per shard, in shard order"
        rebuilt = np.empty(size, dtype=np.int64)
        for s, shard_rows, positions in groups:
            assert ((shard_rows >= 0) & (shard_rows < rows[s])).all()
            rebuilt[positions] = offsets[s] + shard_rows
        assert rebuilt.tolist() == plan.batch(j).tolist()


def test_workers_take_whole_chunks_and_together_every_batch():
    chunks = [worker_batches(23, start=5, chunk=4, worker=w, num_workers=3).tolist() for w in range(3)]
    assert sorted(j for c in chunks for j in c) == list(range(5, 23))
    assert chunks[0][:3] == [5, 6, 7], "the first chunk ends on a multiple of the chunk size"
    assert chunks[1][:4] == [8, 9, 10, 11]


def test_chunks_are_whole_windows_bounded_by_bytes_pool_and_workers():
    mib = 1 << 20
    # 10 MiB windows of 2 batches: six windows fit in CHUNK_BYTES (64 MiB).
    assert chunk_batches(batches_per_window=2, window_bytes=10 * mib, windows=1000, num_workers=2,
                         max_batches=100) == 12  # fmt: skip
    # The pool bounds it (in whole windows), and every worker still gets several chunks.
    assert chunk_batches(batches_per_window=2, window_bytes=10 * mib, windows=1000, num_workers=2,
                         max_batches=7) == 6  # fmt: skip
    assert chunk_batches(batches_per_window=2, window_bytes=10 * mib, windows=16, num_workers=2,
                         max_batches=100) == 4  # fmt: skip
    # Never less than one window, whatever the bounds.
    assert chunk_batches(batches_per_window=3, window_bytes=500 * mib, windows=1, num_workers=8,
                         max_batches=1) == 3  # fmt: skip


def test_gather_copies_runs_of_consecutive_rows_at_once():
    assert row_runs(np.array([0, 1, 2, 5, 6, 3]), np.array([7, 8, 9, 0, 1, 2])) == [(0, 7, 3), (5, 0, 2), (3, 2, 1)]
    assert row_runs(np.array([4]), np.array([9])) == [(4, 9, 1)]
    assert row_runs(np.array([0, 1]), np.array([3, 2])) == [(0, 3, 1), (1, 2, 1)], "rows must go up too"


def test_shard_schedule_lists_first_and_last_use():
    rows = (10, 10, 10)
    plan = EpochPlan.build(rows=rows, seed=0, epoch=0, shuffle=False, world_size=1, rank=0, batch_size=4,
                           drop_last=False)  # fmt: skip
    schedule = shard_schedule(plan, np.arange(plan.num_batches), nbytes=[100, 200, 300])
    assert [(n.shard, n.first, n.last, n.nbytes) for n in schedule] == [(0, 0, 2, 100), (1, 2, 4, 200), (2, 5, 7, 300)]


def test_the_buffer_pool_lends_an_array_again_once_nothing_views_it():
    pool = BufferPool(per_key=2)
    shape, dtype = (4, 8), np.dtype(np.float32)
    first = torch.from_numpy(pool.get(shape, dtype))
    address = first.data_ptr()
    narrowed = first[1:3]  # any view of the batch keeps the array lent
    del first
    assert pool.get(shape, dtype).ctypes.data != address, "still viewed: another array"
    del narrowed
    again = pool.get(shape, dtype)
    assert again.ctypes.data == address, "viewed by nothing: lent again"
    assert pool.get((2, 2), dtype).ctypes.data != address, "another shape, another array"


def test_the_buffer_pool_keeps_more_small_arrays_up_to_its_bytes():
    pool = BufferPool(per_key=1, keep_bytes=3 * 128)
    dtype = np.dtype(np.uint8)
    held = [pool.get((128,), dtype) for _ in range(5)]  # five lent at once: three are kept (384 bytes)
    big = [pool.get((1024,), dtype) for _ in range(3)]  # above keep_bytes: per_key, one
    kept = {shape: len(arrays) for (shape, _), arrays in pool._kept.items()}
    assert kept == {(128,): 3, (1024,): 1}
    del held, big
    again = [pool.get((128,), dtype) for _ in range(3)]
    assert {id(a.base) for a in again} == {id(a) for a, _ in pool._kept[((128,), dtype.str)]}, "all three lent again"


def test_a_batch_never_sent_gives_its_pool_slots_back(monkeypatch: pytest.MonkeyPatch):
    from shardcache.dataloader import tensors
    from shardcache.dataloader.slots import POOL_MIN_BYTES, SlotPool

    monkeypatch.setattr(tensors, "get_worker_info", object)  # build batches as a DataLoader worker does
    width = POOL_MIN_BYTES
    table = pa.table({"image": pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), 2, [None, pa.py_buffer(np.zeros(2 * width, dtype=np.uint8))])})  # fmt: skip
    pool = SlotPool(slots=2)
    builder = BatchBuilder(column_specs(table.schema, ["image"]), dataset="t", slots=pool, slot_limit=2)
    gather(builder, [table], [(0, 0), (0, 1)])
    claim, _ = builder.take_claim()
    assert claim is not None
    assert pool.board.numpy().any()
    builder.give_back(claim)  # e.g. the dataset's transform raised on it
    assert not pool.board.numpy().any()
