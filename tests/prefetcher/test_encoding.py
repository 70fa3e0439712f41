"""Shard bytes depend on the rows only: however they were sliced, and whichever encoder wrote them."""

from __future__ import annotations

import pyarrow as pa
import pytest

from shardcache.cache import encode_table
from shardcache.prefetcher.plan import plan_shards, redis_bytes, target_bytes
from shardcache.source.formats import Piece
from shardcache.source.rebuild import canonical, encode_shard
from shardcache.source.transform import transform_id

TABLE = pa.table({
    "i": pa.array(range(20), pa.int64()),
    "b": pa.array([bytes([i]) * i for i in range(20)], pa.binary()),
    "s": pa.array([str(i) * 3 for i in range(20)], pa.large_string()),
    "n": pa.array([None if i % 3 else i for i in range(20)], pa.int32()),
    "ns": pa.array([None if i % 4 else "x" for i in range(20)], pa.string()),
    "l": pa.array([[i] * (i % 3) for i in range(20)], pa.list_(pa.int16())),
    "f": pa.array([bytes([i]) * 4 for i in range(20)], pa.binary(4)),
    "img": pa.array([bytes([i]) * 16 for i in range(20)], pa.binary(16)),
    "t": pa.array([i % 2 == 0 for i in range(20)]),
})


RANGES = sorted({(a, min(a + n, 20)) for a in range(20) for n in (0, 1, 2, 3, 5, 8, 13, 20)})


@pytest.mark.parametrize("compression", [None, "lz4"])
@pytest.mark.parametrize("column", [*TABLE.column_names, None])
def test_same_rows_same_bytes(compression: str | None, column: str | None) -> None:
    table = TABLE if column is None else TABLE.select([column])
    for start, stop in RANGES:
        _check(table, start, stop, compression)


def _check(source: pa.Table, start: int, stop: int, compression: str | None) -> None:
    fresh = pa.Table.from_pylist(source.slice(start, stop - start).to_pylist(), schema=source.schema)
    sliced = source.slice(start, stop - start)
    split = pa.concat_tables([source.slice(start, max(0, (stop - start) // 2)),
                              source.slice(start + (stop - start) // 2, stop - start - (stop - start) // 2)])
    payloads = {
        encode_table(canonical(t), compression=compression).to_pybytes() for t in (fresh, sliced, split)
    } | {encode_shard(canonical(t), compression=compression).to_pybytes() for t in (fresh, sliced, split)}
    assert len(payloads) == 1, (source.column_names, start, stop)
    assert pa.ipc.open_stream(payloads.pop()).read_all().equals(fresh)


def test_plan_keeps_order_and_size() -> None:
    pieces = [Piece("a", 0, 100, 100_000), Piece("b", 0, 50, 50_000), Piece("c", 0, 1, 1000)]
    shards = plan_shards(pieces, target_bytes=30_000)
    assert [s.rows for s in shards] == [30, 30, 30, 30, 30, 1]
    assert [(g.uri, g.row_start, g.row_stop) for g in shards[3].segments] == [("a", 90, 100), ("b", 0, 20)]
    assert all(s.nbytes <= 30_000 for s in shards)
    assert target_bytes(4 << 20) == (4 << 20) - (64 << 10)


def test_redis_bytes_counts_allocation_classes() -> None:
    assert redis_bytes(4 << 20, chunk_size=8 << 20) > 5 << 20  # just over 4 MiB takes the 5 MiB class
    assert redis_bytes((4 << 20) - (64 << 10), chunk_size=8 << 20) < (4 << 20) + 1024
    assert redis_bytes(20 << 20, chunk_size=8 << 20) >= 20 << 20


def test_transform_id_is_stable_and_sees_parameters() -> None:
    def make(scale: int):
        def scaled(batch: pa.RecordBatch) -> pa.RecordBatch:
            return batch.set_column(0, "i", pa.compute.multiply(batch.column(0), scale))
        return scaled

    assert transform_id(make(2)) == transform_id(make(2))
    assert transform_id(make(2)) != transform_id(make(3))

    class Resize:
        def __init__(self, size: int) -> None:
            self.size = size

        def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
            return batch

    assert transform_id(Resize(224)) == transform_id(Resize(224)) != transform_id(Resize(256))

    def declared(batch: pa.RecordBatch) -> pa.RecordBatch:
        return batch

    declared.transform_id = "tokenizer-v3"  # type: ignore[attr-defined]
    assert transform_id(declared) == "tokenizer-v3"
