"""The public names are pinned: adding or removing one is a decision, made here on purpose."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import shardcache
import shardcache.cache
import shardcache.errors

ERRORS = {
    "ShardCacheError", "ConfigError", "CacheUnavailable", "AccessDenied", "DatasetNotFound", "ShardMissing",
    "ShardCorrupted", "ManifestCorrupted", "CapacityExceeded", "DatasetLocked", "DatasetInUse", "SourceError",
    "PrefetchFailed", "KubernetesError",
}
PUBLIC = {
    "__version__", "connect", "prefetch", "ShardCache", "Manifest", "CachedDataset", "CachedDataLoader", "Stream",
    "CachedMapDataset", *ERRORS,
}
CACHE = {
    "connect", "ShardCache", "Manifest", "ShardInfo", "SourceSegment", "SourceSpec", "RetryPolicy", "CacheStats",
    "Capacity", "NodeMemory", "DatasetLock", "Lease", "KeySpace", "CacheURL", "parse_url", "encode_table",
    "decode_payload", "checksum",
}


@pytest.mark.parametrize(
    ("module", "names"),
    [(shardcache, PUBLIC), (shardcache.cache, CACHE), (shardcache.errors, ERRORS)],
    ids=["shardcache", "shardcache.cache", "shardcache.errors"],
)
def test_all_is_pinned(module: object, names: set[str]) -> None:
    exported = module.__all__  # type: ignore[attr-defined]
    assert len(exported) == len(set(exported)), "a name is exported twice"
    assert set(exported) == names
    for name in exported:
        assert getattr(module, name) is not None


def test_facade_objects_are_the_implementations() -> None:
    assert shardcache.connect is shardcache.cache.connect
    assert shardcache.ShardCache is shardcache.cache.ShardCache
    assert shardcache.Manifest is shardcache.cache.Manifest
    for name in ERRORS:
        assert getattr(shardcache, name) is getattr(shardcache.errors, name)


def test_every_error_derives_from_the_root() -> None:
    for name in ERRORS:
        error = getattr(shardcache.errors, name)
        assert inspect.isclass(error)
        assert issubclass(error, shardcache.ShardCacheError)
    assert issubclass(shardcache.ConfigError, ValueError)
    assert issubclass(shardcache.CacheUnavailable, ConnectionError)
    assert issubclass(shardcache.AccessDenied, shardcache.CacheUnavailable)
    assert issubclass(shardcache.ManifestCorrupted, shardcache.ShardCorrupted)


def test_version_is_the_distribution_version() -> None:
    from importlib.metadata import version

    assert shardcache.__version__ == version("shardcache")


def test_import_stays_light() -> None:
    # The CLI and prefetch-only jobs import shardcache; torch loads only with the loader names.
    code = "import sys, shardcache, shardcache.cache; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_framework_helpers_are_pinned() -> None:
    # Optional (the frameworks extra): a module of its own, so that importing shardcache never needs it.
    pytest.importorskip("transformers")
    import shardcache.dataloader.hf

    assert shardcache.dataloader.hf.__all__ == ["CachedLoaderCallback"]
