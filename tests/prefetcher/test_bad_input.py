"""Bad sources fail with a clear error naming the file, and leave nothing half-written in the cache."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardcache.cache import ShardCache
from shardcache.errors import ConfigError, PrefetchFailed, SourceError
from shardcache.prefetcher import prefetch, run_prefetch

from .conftest import image_table, write_parquet_files


def assert_nothing_visible(cache: ShardCache, name: str) -> None:
    assert name not in cache.datasets()
    assert cache.versions(name) == []
    assert cache.latest_version(name) is None


def test_missing_path(cache: ShardCache, dataset_name: str, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist") as info:
        prefetch(tmp_path / "nope", dataset=dataset_name, cache=cache)
    assert info.value.uri == str(tmp_path / "nope")
    assert_nothing_visible(cache, dataset_name)


def test_empty_directory_and_empty_files(cache: ShardCache, dataset_name: str, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no data files"):
        prefetch(tmp_path / "empty", dataset=dataset_name, cache=cache)
    pq.write_table(image_table(0, 0), tmp_path / "zero.parquet")
    with pytest.raises(SourceError, match="holds no rows"):
        prefetch(tmp_path / "zero.parquet", dataset=dataset_name, cache=cache)
    assert_nothing_visible(cache, dataset_name)


def test_schema_mismatch_names_both_files(cache: ShardCache, dataset_name: str, tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": [1, 2], "x": [1.0, 2.0]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": [3, 4], "x": ["s", "t"]}), tmp_path / "b.parquet")
    with pytest.raises(SourceError) as info:
        prefetch(tmp_path, dataset=dataset_name, cache=cache)
    message = str(info.value)
    assert "a.parquet" in message
    assert "b.parquet" in message
    assert "x: string" in message
    assert info.value.uri == str(tmp_path / "b.parquet")
    assert_nothing_visible(cache, dataset_name)


def test_corrupt_parquet_footer_is_named(cache: ShardCache, dataset_name: str, tmp_path: Path) -> None:
    write_parquet_files(tmp_path, files=2, rows=50)
    bad = tmp_path / "part-001.parquet"
    bad.write_bytes(bad.read_bytes()[:-20] + b"\0" * 20)
    with pytest.raises(SourceError) as info:
        prefetch(tmp_path, dataset=dataset_name, cache=cache)
    assert "part-001.parquet" in str(info.value)
    assert_nothing_visible(cache, dataset_name)


def test_corrupt_parquet_pages_fail_their_shards_only(cache: ShardCache, dataset_name: str, tmp_path: Path) -> None:
    write_parquet_files(tmp_path, files=2, rows=300, row_group_size=300, width=512)
    bad = tmp_path / "part-001.parquet"
    data = bytearray(bad.read_bytes())
    meta = pq.ParquetFile(bad).metadata.row_group(0).column(1)
    start = meta.data_page_offset + 40  # inside the image column's first page, past its header
    data[start : start + 2000] = b"\xff" * 2000
    bad.write_bytes(bytes(data))
    report = run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="64KiB", compression="lz4")
    assert report.failed
    assert report.state == "loading"
    assert {f.source for f in report.failed} == {str(bad)}
    assert report.written > 0  # the good file's shards are cached and kept for the re-run
    with pytest.raises(PrefetchFailed) as info:
        prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="64KiB", compression="lz4")
    assert "part-001.parquet" in str(info.value)
    assert info.value.report.skipped == report.written  # type: ignore[attr-defined]
    assert cache.manifest(dataset_name).state == "loading"


def test_row_larger_than_shard_size(cache: ShardCache, dataset_name: str, tmp_path: Path) -> None:
    pq.write_table(image_table(0, 4, width=100_000), tmp_path / "big.parquet", row_group_size=1)
    with pytest.raises(SourceError, match="more than shard_size") as info:
        prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="64KiB")
    assert "big.parquet" in str(info.value)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "huge.bin").write_bytes(b"x" * 100_000)
    with pytest.raises(SourceError, match=r"huge\.bin"):
        prefetch(tmp_path / "files", dataset=dataset_name, cache=cache, shard_size="64KiB")
    assert_nothing_visible(cache, dataset_name)


def test_csv_type_error_is_named(cache: ShardCache, dataset_name: str, tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,v\n1,2\n2,3\n")
    (tmp_path / "b.csv").write_text("id,v\n3,oops\n")
    with pytest.raises(SourceError, match=r"b\.csv"):
        prefetch(tmp_path, dataset=dataset_name, cache=cache)
    (tmp_path / "b.csv").write_text("id,w\n3,4\n")
    with pytest.raises(SourceError, match=r"a\.csv.*b\.csv"):
        prefetch(tmp_path, dataset=dataset_name, cache=cache)
    assert_nothing_visible(cache, dataset_name)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shard_size": "lots"}, "shard_size"),
        ({"compression": "gzip"}, "compression"),
        ({"order": "random"}, "order"),
        ({"workers": 0}, "workers"),
        ({"columns": "id"}, "columns"),
        ({"columns": ["nope"]}, "nope"),
        ({"format": "xml"}, "format"),
        ({"label": True}, "label"),
        ({"bucket_secret": "x"}, "filesystem option"),
        ({"world_size": 0, "order": "epoch0"}, "world_size"),
    ],
)
def test_bad_options(cache: ShardCache, dataset_name: str, tmp_path: Path, kwargs: dict, match: str) -> None:
    write_parquet_files(tmp_path, files=1, rows=10)
    with pytest.raises(ConfigError, match=match):
        prefetch(tmp_path, dataset=dataset_name, cache=cache, **kwargs)
    assert_nothing_visible(cache, dataset_name)


def test_transform_that_drops_rows_fails_its_shards(cache: ShardCache, dataset_name: str, tmp_path: Path) -> None:
    write_parquet_files(tmp_path, files=1, rows=10)
    with pytest.raises(ConfigError, match="one to one"):
        prefetch(tmp_path, dataset=dataset_name, cache=cache, transform=lambda b: b.slice(1))
    assert_nothing_visible(cache, dataset_name)
