"""The public names of shardcache.dataloader, pinned."""

from __future__ import annotations

import pytest

import shardcache
import shardcache.dataloader


def test_exported_members():
    assert shardcache.dataloader.__all__ == [
        "CachedDataset",
        "CachedDataLoader",
        "CachedMapDataset",
        "DevicePrefetcher",
        "LoaderStats",
        "MapStats",
        "Stream",
        "StreamStats",
        "to_device",
    ]
    for name in shardcache.dataloader.__all__:
        assert getattr(shardcache.dataloader, name).__module__.startswith("shardcache.dataloader.")


def test_the_package_facade_loads_the_loader_lazily():
    assert shardcache.CachedDataLoader is shardcache.dataloader.CachedDataLoader
    assert shardcache.CachedDataset is shardcache.dataloader.CachedDataset
    assert shardcache.Stream is shardcache.dataloader.Stream
    assert shardcache.CachedMapDataset is shardcache.dataloader.CachedMapDataset


def test_a_cache_that_is_neither_a_shardcache_nor_a_url_is_refused():
    for cls in (shardcache.dataloader.CachedDataset, shardcache.dataloader.CachedMapDataset):
        with pytest.raises(shardcache.ConfigError, match="cache=42 is invalid: pass a ShardCache or a redis:// URL"):
            cls("some-dataset", cache=42)
