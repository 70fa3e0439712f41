"""A source file replaced while the prefetch runs: the run fails, nothing commits (issue 16, item 2)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from shardcache.cache import ShardCache
from shardcache.errors import SourceError
from shardcache.prefetcher import Progress, run_prefetch

from .conftest import cached_ids, image_table, write_parquet_files

NEW = 50_000  # ids of the replacement file


@pytest.mark.parametrize("victim", [0, 2], ids=["file-being-read", "file-not-read-yet"])
def test_a_file_replaced_mid_prefetch_fails_the_run_and_commits_nothing(
    cache: ShardCache, dataset_name: str, tmp_path: Path, victim: int
) -> None:
    write_parquet_files(tmp_path, files=4, rows=1000)
    path = tmp_path / f"part-{victim:03d}.parquet"
    replaced: list[int] = []

    def progress(p: Progress) -> None:
        if p.shards_done >= 2 and not replaced:
            pq.write_table(image_table(NEW, 1000), path, row_group_size=150)
            replaced.append(p.shards_done)

    with pytest.raises(SourceError) as info:
        run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="16KiB", progress=progress)
    assert replaced, "the file was replaced mid-run"
    assert info.value.uri == str(path)
    assert str(path) in str(info.value)
    assert "not committed" in str(info.value)
    assert info.value.dataset == dataset_name
    versions = cache.versions(dataset_name)
    assert versions, "the run got as far as beginning its version"
    assert all(cache.manifest(dataset_name, v).state == "loading" for v in versions), "nothing is complete"

    again = run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="16KiB")
    assert again.state == "complete"
    assert again.version not in versions, "a new version for the new bytes"
    old = [range(k * 1000, k * 1000 + 1000) for k in range(4)]
    expected = [i for k in range(4) for i in (range(NEW, NEW + 1000) if k == victim else old[k])]
    assert cached_ids(cache, again.manifest) == expected


def test_a_file_replaced_after_it_was_read_is_caught_before_the_commit(
    cache: ShardCache, dataset_name: str, tmp_path: Path
) -> None:
    """All of the first file is read and written before it is replaced: only the re-check before
    the commit can see it."""
    write_parquet_files(tmp_path, files=2, rows=1000)
    path = tmp_path / "part-000.parquet"
    replaced: list[int] = []
    first_file_shards: list[int] = []

    def progress(p: Progress) -> None:
        if not first_file_shards and p.shards_total:
            manifest = cache.manifest(dataset_name)
            first_file_shards.append(sum(1 for s in manifest.shards if s.source[-1].uri == str(path)))
        if first_file_shards and p.shards_done >= first_file_shards[0] + 1 and not replaced:
            pq.write_table(image_table(NEW, 1000), path, row_group_size=150)
            replaced.append(p.shards_done)

    with pytest.raises(SourceError, match="changed since the prefetch listed it") as info:
        run_prefetch(tmp_path, dataset=dataset_name, cache=cache, shard_size="16KiB", progress=progress,
                     workers=1)
    assert replaced
    assert info.value.uri == str(path)
    assert info.value.shard is None, "found by the re-check of the whole listing"
    assert all(cache.manifest(dataset_name, v).state == "loading" for v in cache.versions(dataset_name))
