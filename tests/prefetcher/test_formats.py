"""Every format and source layout, prefetched and then rebuilt from the source byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from shardcache.cache import ShardCache
from shardcache.prefetcher import prefetch

from .conftest import assert_rebuilds, cached_ids, image_table

ROWS = 900


def test_parquet_files_in_source_order(cache: ShardCache, dataset_name: str, parquet_source) -> None:
    root = parquet_source(files=3, rows=300)
    m = prefetch(root, dataset=dataset_name, cache=cache, shard_size="64KiB")
    assert m.complete
    assert m.num_rows == ROWS
    assert m.num_shards > 3
    assert cached_ids(cache, m) == list(range(ROWS))
    # shards cross file boundaries and record one segment per file
    assert any(len(s.source) == 2 for s in m.shards)
    assert all(s.nbytes <= 64 * 1024 for s in m.shards)
    assert_rebuilds(cache, m)


def test_parquet_glob_and_columns(cache: ShardCache, dataset_name: str, parquet_source) -> None:
    root = parquet_source(files=3, rows=300)
    m = prefetch(f"{root}/part-00[02].parquet", dataset=dataset_name, cache=cache, columns=["name", "id"],
                 shard_size="32KiB", compression="zstd")
    assert m.schema.names == ["name", "id"]
    assert cached_ids(cache, m) == list(range(300)) + list(range(600, 900))
    assert m.compression == "zstd"
    assert_rebuilds(cache, m)


def test_hive_partitioned_directory(cache: ShardCache, dataset_name: str, tmp_path: Path) -> None:
    for k, year in enumerate((2020, 2021)):
        part = tmp_path / "hive" / f"year={year}"
        part.mkdir(parents=True)
        pq.write_table(image_table(k * 200, 200, width=64), part / "data.parquet", row_group_size=70)
    (tmp_path / "hive" / "_SUCCESS").write_text("")
    m = prefetch(f"file://{tmp_path / 'hive'}", dataset=dataset_name, cache=cache, shard_size="16KiB")
    assert "year" in m.schema.names
    table = pa.concat_tables(cache.get_table(m, i) for i in range(m.num_shards))
    assert table.column("id").to_pylist() == list(range(400))
    assert table.column("year").to_pylist() == [2020] * 200 + [2021] * 200
    assert_rebuilds(cache, m)


def test_arrow_ipc_files(cache: ShardCache, dataset_name: str, tmp_path: Path) -> None:
    for k in range(2):
        feather.write_feather(image_table(k * 300, 300, width=128), tmp_path / f"f{k}.feather", chunksize=100)
    m = prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="16KiB")
    assert m.source is not None
    assert m.source.format == "arrow"
    assert cached_ids(cache, m) == list(range(600))
    assert_rebuilds(cache, m)


def test_csv_and_tsv(cache: ShardCache, dataset_name: str, tmp_path: Path) -> None:
    for k in range(2):
        t = pa.table({"id": list(range(k * 500, (k + 1) * 500)), "text": [f"line {i}" for i in range(500)]})
        pacsv.write_csv(t, tmp_path / f"part{k}.csv")
    m = prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="4KiB")
    assert m.schema.field("id").type == pa.int64()
    assert cached_ids(cache, m) == list(range(1000))
    assert_rebuilds(cache, m)


def test_jsonl(cache: ShardCache, dataset_name: str, tmp_path: Path) -> None:
    with open(tmp_path / "a.jsonl", "w") as f:
        for i in range(700):
            f.write(json.dumps({"id": i, "text": "x" * (i % 13), **({"extra": 1.5} if i % 2 else {})}) + "\n")
    m = prefetch(tmp_path / "a.jsonl", dataset=dataset_name, cache=cache, shard_size="4KiB")
    assert m.source is not None
    assert m.source.format == "jsonl"
    assert cached_ids(cache, m) == list(range(700))
    assert_rebuilds(cache, m)


def test_raw_files_with_labels(cache: ShardCache, dataset_name: str, tmp_path: Path) -> None:
    expected = {}
    for label in ("cat", "dog"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(25):
            data = bytes([i]) * (1000 + i)
            (tmp_path / "imgs" / label / f"{i:03d}.jpg").write_bytes(data)
            expected[f"{label}/{i:03d}.jpg"] = (data, label)
    (tmp_path / "imgs" / ".hidden").write_text("skip me")
    m = prefetch(tmp_path / "imgs", dataset=dataset_name, cache=cache, label=True, shard_size="8KiB")
    assert m.source is not None
    assert m.source.format == "files"
    table = pa.concat_tables(cache.get_table(m, i) for i in range(m.num_shards))
    columns = (table.column(c).to_pylist() for c in ("path", "bytes", "label"))
    got = {p: (b, lab) for p, b, lab in zip(*columns, strict=True)}
    assert got == expected
    assert table.column("path").to_pylist() == sorted(expected)
    assert_rebuilds(cache, m)


def test_transform_is_applied_and_rebuilt(cache: ShardCache, dataset_name: str, parquet_source) -> None:
    root = parquet_source(files=2, rows=200)

    def double(batch: pa.RecordBatch) -> pa.RecordBatch:
        ids = pa.compute.multiply(batch.column("id"), 2)
        return pa.RecordBatch.from_arrays([ids, batch.column("img")], names=["id", "img"])

    m = prefetch(root, dataset=dataset_name, cache=cache, transform=double, shard_size="16KiB")
    assert m.schema.names == ["id", "img"]
    assert m.transform_id is not None
    assert cached_ids(cache, m) == [2 * i for i in range(400)]
    assert_rebuilds(cache, m, transform=double)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_explicit_format_ignores_other_files(cache: ShardCache, dataset_name: str, tmp_path: Path, fmt: str) -> None:
    t = pa.table({"id": list(range(50))})
    pq.write_table(t, tmp_path / "a.parquet")
    pacsv.write_csv(t, tmp_path / "a.csv")
    m = prefetch(tmp_path, dataset=dataset_name, cache=cache, format=fmt)
    assert m.source is not None
    assert m.source.format == fmt
    assert cached_ids(cache, m) == list(range(50))


def test_fsspec_fallback_for_schemes_pyarrow_lacks(cache: ShardCache, dataset_name: str) -> None:
    fsspec = pytest.importorskip("fsspec")
    mem = fsspec.filesystem("memory")
    with mem.open(f"/{dataset_name}/a.parquet", "wb") as f:
        pq.write_table(image_table(0, 120, width=32), f, row_group_size=50)
    try:
        m = prefetch(f"memory://{dataset_name}/", dataset=dataset_name, cache=cache, shard_size="2KiB")
        assert cached_ids(cache, m) == list(range(120))
        assert_rebuilds(cache, m)
    finally:
        mem.rm(f"/{dataset_name}", recursive=True)
