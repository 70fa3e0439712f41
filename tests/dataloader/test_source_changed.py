"""A source file rewritten in place after the prefetch: its rows never reach a batch (issue 16, item 1)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardcache.cache import ShardCache, ShardInfo
from shardcache.dataloader import CachedDataLoader
from shardcache.errors import SourceError
from shardcache.prefetcher import prefetch, read_source_shard

from .conftest import make_table, unique_name
from .test_read_through import shard_keys

FOREIGN = 1_000_000  # ids of the rewritten file start here; the dataset's are below


def rewrite_in_place(path: Path, *, keep_mtime: bool = False) -> None:
    """The same row count and schema, other ids (optionally with the old mtime put back)."""
    before = path.stat()
    rows = pq.read_metadata(path).num_rows
    pq.write_table(make_table(rows, start=FOREIGN), path, row_group_size=97)
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def read_until_error(loader: CachedDataLoader) -> tuple[list[int], BaseException | None]:
    delivered: list[int] = []
    try:
        for batch in loader:
            delivered += batch["id"].tolist()
    except SourceError as exc:
        return delivered, exc
    return delivered, None


@pytest.mark.parametrize(("num_workers", "keep_mtime"), [(0, False), (2, False), (0, True)])
def test_rewritten_file_and_an_evicted_shard_raise_before_any_foreign_row(
    make_dataset, cache: ShardCache, num_workers: int, keep_mtime: bool
) -> None:
    manifest = make_dataset(rows=300)
    path = Path(manifest.shards[0].source[0].uri)
    rewrite_in_place(path, keep_mtime=keep_mtime)
    cache.client.delete(*shard_keys(cache, manifest, 0))
    loader = CachedDataLoader(manifest.name, cache=cache, batch_size=32, num_workers=num_workers, shuffle=False)
    delivered, error = read_until_error(loader)
    assert error is not None, "the rebuilt shard's rows were delivered"
    assert [i for i in delivered if i >= FOREIGN] == [], "foreign rows reached the training loop"
    assert isinstance(error, SourceError)
    assert (error.dataset, error.version, error.shard) == (manifest.name, manifest.version, 0)
    assert error.uri == str(path)
    assert str(path) in str(error)
    assert "re-run the prefetch" in str(error)
    assert cache.missing_shards(manifest) == [0], "nothing foreign was written back"


def test_read_source_shard_refuses_a_rewritten_file(make_dataset, cache: ShardCache) -> None:
    manifest = make_dataset(rows=300)
    path = Path(manifest.shards[0].source[0].uri)
    rewrite_in_place(path)
    with pytest.raises(SourceError, match="was rewritten") as info:
        read_source_shard(manifest, 0)
    assert info.value.uri == str(path)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_loading_version_checks_the_files_it_reads_through(make_dataset, cache: ShardCache, num_workers) -> None:
    """A loading version records no checksums yet: the file's size and mtime are compared instead."""
    complete = make_dataset(rows=300)
    version = "unfinished"
    loading = cache.begin(complete.replace(
        version=version, state="loading",
        shards=tuple(
            ShardInfo(index=s.index, key=cache.keys.shard(complete.name, version, s.index), rows=s.rows,
                      source=s.source)
            for s in complete.shards
        ),
    ))
    assert loading.files, "the manifest records each source file's size and mtime"
    path = Path(complete.shards[-1].source[-1].uri)
    rewrite_in_place(path)
    loader = CachedDataLoader(complete.name, cache=cache, batch_size=32, num_workers=num_workers, shuffle=False)
    assert loader.cached_dataset.version == version
    delivered, error = read_until_error(loader)
    assert isinstance(error, SourceError)
    assert [i for i in delivered if i >= FOREIGN] == []
    assert error.uri == str(path)
    assert "was rewritten" in str(error)


def test_a_same_size_rewrite_with_the_old_mtime_is_caught_by_the_checksum(cache: ShardCache, tmp_path: Path) -> None:
    """Size and mtime cannot see this rewrite (other ids, plain encoding: the same size; the mtime
    put back): the checksum of the rebuilt shard does."""
    name = unique_name("same-size")
    path = tmp_path / "part-0.parquet"
    plain = {"compression": "NONE", "use_dictionary": False, "write_statistics": False, "row_group_size": 97}
    table = make_table(200)
    pq.write_table(table, path, **plain)
    manifest = prefetch(str(tmp_path), dataset=name, cache=cache, shard_size="6KiB")
    try:
        before = path.stat()
        foreign = pa.array(np.arange(FOREIGN, FOREIGN + 200, dtype=np.int64))
        pq.write_table(table.set_column(0, "id", foreign), path, **plain)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert path.stat().st_size == before.st_size
        cache.client.delete(*shard_keys(cache, manifest, 0))
        delivered, error = read_until_error(CachedDataLoader(name, cache=cache, batch_size=32, shuffle=False))
        assert isinstance(error, SourceError)
        assert [i for i in delivered if i >= FOREIGN] == []
        assert "does not match the checksum" in str(error)
        assert error.uri == str(path)
        assert error.shard == 0
    finally:
        cache.delete(name, force=True)
