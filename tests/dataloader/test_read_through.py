"""Read-through: shards the cache cannot serve are rebuilt from the source, the same rows in the same order."""

from __future__ import annotations

import pytest

from shardcache.cache import Manifest, RetryPolicy, ShardCache, ShardInfo, connect
from shardcache.dataloader import CachedDataLoader
from shardcache.errors import ShardCorrupted, ShardMissing, SourceError

from .test_resume import id_batches


def shard_keys(cache: ShardCache, manifest: Manifest, index: int) -> list[str]:
    shard = manifest.shards[index]
    return [cache.keys.chunk(shard.key, c) for c in range(max(shard.chunks, 1))]


def reference(manifest: Manifest, cache: ShardCache, **options) -> list[list[int]]:
    """The batches read with every shard cached, before a test damages any."""
    return id_batches(CachedDataLoader(manifest.name, cache=cache, batch_size=32, **options))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_deleted_shards_are_read_through_and_written_back(make_dataset, cache: ShardCache, num_workers):
    manifest = make_dataset()
    expected = reference(manifest, cache)
    for index in (0, 3):
        cache.client.delete(*shard_keys(cache, manifest, index))
    loader = CachedDataLoader(manifest.name, cache=cache, batch_size=32, num_workers=num_workers)
    assert id_batches(loader) == expected
    stats = loader.stats()
    if num_workers == 0:
        assert (stats.misses, stats.read_throughs, stats.written_back, stats.corrupted) == (2, 2, 2, 0)
        assert stats.hits == manifest.num_shards - 2
        assert stats.source_rows == manifest.shards[0].rows + manifest.shards[3].rows
    else:  # a shard at the edge of two workers' windows is read by both
        assert 2 <= stats.misses == stats.read_throughs <= 4
        assert stats.written_back >= 2
    assert cache.missing_shards(manifest) == []
    again = CachedDataLoader(manifest.name, cache=cache, batch_size=32)
    assert id_batches(again) == expected
    assert again.stats().misses == 0


def test_a_corrupt_shard_is_read_through_and_repaired(make_dataset, cache: ShardCache):
    manifest = make_dataset()
    expected = reference(manifest, cache)
    key = shard_keys(cache, manifest, 2)[0]
    good = cache.client.get(key)
    cache.client.set(key, bytes(len(good)))
    loader = CachedDataLoader(manifest.name, cache=cache, batch_size=32, num_workers=2)
    assert id_batches(loader) == expected
    assert (loader.stats().corrupted, loader.stats().read_throughs, loader.stats().written_back) == (1, 1, 1)
    assert cache.client.get(key) == good, "the rebuilt shard is byte for byte the prefetched one"


def test_a_loader_started_during_the_prefetch_reads_through_what_is_not_cached(make_dataset, cache: ShardCache):
    complete = make_dataset()
    expected = reference(complete, cache, version=complete.version)
    # A second version of the same source, loading, with only some shards written so far.
    version = "unfinished"
    loading = complete.replace(
        version=version,
        state="loading",
        shards=tuple(
            ShardInfo(index=s.index, key=cache.keys.shard(complete.name, version, i), rows=s.rows, source=s.source)
            for i, s in enumerate(complete.shards)
        ),
    )
    loading = cache.begin(loading)
    written = (0, 2, 5)
    for index in written:
        cache.put_shard(loading, index, cache.get_payload(complete, index))
    loader = CachedDataLoader(complete.name, cache=cache, batch_size=32)  # the newest version: the loading one
    assert loader.cached_dataset.version == version
    assert id_batches(loader) == expected
    stats = loader.stats()
    assert stats.hits == len(written)
    assert stats.read_throughs == complete.num_shards - len(written)
    assert cache.manifest(complete.name, version).cached_shards == complete.num_shards, "written back as it loads"
    assert cache.manifest(complete.name, version).state == "loading"


@pytest.mark.parametrize("num_workers", [0, 2])
def test_read_through_false_raises_shard_missing(make_dataset, cache: ShardCache, num_workers):
    manifest = make_dataset()
    cache.client.delete(*shard_keys(cache, manifest, 1))
    loader = CachedDataLoader(manifest.name, cache=cache, batch_size=32, num_workers=num_workers, read_through=False)
    with pytest.raises(ShardMissing, match="read_through=False") as info:
        list(loader)
    assert (info.value.dataset, info.value.version, info.value.shard) == (manifest.name, manifest.version, 1)
    assert cache.leases(manifest.name) == [], "the error ends the iteration and releases its lease"


def test_a_corrupt_shard_without_read_through_raises_shard_corrupted(make_dataset, cache: ShardCache):
    manifest = make_dataset()
    key = shard_keys(cache, manifest, 0)[0]
    cache.client.set(key, b"x" * len(cache.client.get(key)))
    loader = CachedDataLoader(manifest.name, cache=cache, batch_size=32, num_workers=2, read_through=False)
    with pytest.raises(ShardCorrupted, match="checksum"):
        list(loader)


def test_a_missing_shard_whose_source_is_gone_raises_source_error(make_dataset, cache: ShardCache, tmp_path):
    manifest = make_dataset()
    cache.client.delete(*shard_keys(cache, manifest, 0))
    for segment in manifest.shards[0].source:
        (tmp_path / manifest.name / segment.uri.rsplit("/", 1)[-1]).unlink(missing_ok=True)
    loader = CachedDataLoader(manifest.name, cache=cache, batch_size=32, num_workers=2)
    with pytest.raises(SourceError):
        list(loader)


@pytest.mark.slow
def test_an_unreachable_cache_is_read_through_without_write_back(cluster_factory, tmp_path):
    from shardcache.prefetcher import prefetch

    from .conftest import write_source

    server = cluster_factory(masters=1, replicas=0, cluster=False)
    cache = connect(server.url, retry=RetryPolicy(deadline=0.3))
    manifest = prefetch(str(write_source(tmp_path / "src", 120)), dataset="unreachable", cache=cache, shard_size="6KiB")
    expected = id_batches(CachedDataLoader("unreachable", cache=cache, batch_size=32))
    loader = CachedDataLoader("unreachable", cache=cache, batch_size=32)
    server.stop()
    assert id_batches(loader) == expected
    stats = loader.stats()
    assert (stats.hits, stats.read_throughs, stats.written_back) == (0, manifest.num_shards, 0)
