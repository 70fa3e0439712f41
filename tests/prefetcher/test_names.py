"""Dataset names that Redis keys cannot hold, or a terminal would show as another name (issue 16, item 4)."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardcache.cache import KeySpace, ShardCache
from shardcache.cache.keys import MAX_KEY_LENGTH, check_dataset_name
from shardcache.dataloader import CachedDataLoader, CachedDataset
from shardcache.errors import ConfigError
from shardcache.prefetcher import prefetch

from .conftest import write_parquet_files

REFUSED = {
    "115 CJK characters": ("数" * 115, "over the 600 limit"),
    "200 x e-acute": ("é" * 200, "over the 600 limit"),
    "right-to-left override": ("train\u202egnp.exe", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
    "newline": ("train\nfake", "U+000A"),
    "zero-width space": ("tra\u200bin", "U+200B"),
}


@pytest.mark.parametrize(("name", "expected"), REFUSED.values(), ids=REFUSED.keys())
def test_prefetch_refuses_the_name_before_writing_anything(
    cache: ShardCache, tmp_path: Path, name: str, expected: str
) -> None:
    write_parquet_files(tmp_path, files=1, rows=50)
    with pytest.raises(ConfigError, match=r"^dataset=") as info:
        prefetch(tmp_path, dataset=name, cache=cache, shard_size="16KiB")
    assert expected in str(info.value)
    assert not any(c in str(info.value) for c in "\u202e\n\u200b"), "invisible characters are shown escaped"
    assert name not in cache.datasets()


@pytest.mark.parametrize(("name", "expected"), REFUSED.values(), ids=REFUSED.keys())
def test_loaders_refuse_the_name(cache: ShardCache, name: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=r"^dataset=") as info:
        CachedDataLoader(name, cache=cache)
    assert expected in str(info.value)
    with pytest.raises(ConfigError, match=r"^name="):
        CachedDataset(name, cache=cache)


@pytest.mark.parametrize("name", ["数" * 66, "é" * 100, ":" * 200, "imagenet/train v2 (ö)"])
def test_names_at_the_limit_prefetch_and_read_back(cache: ShardCache, tmp_path: Path, name: str) -> None:
    write_parquet_files(tmp_path, files=1, rows=50)
    try:
        manifest = prefetch(tmp_path, dataset=name, cache=cache, shard_size="16KiB")
        assert cache.manifest(name).version == manifest.version
        ids = [i for batch in CachedDataLoader(name, cache=cache, batch_size=16, shuffle=False)
               for i in batch["id"].tolist()]
        assert ids == list(range(50))
    finally:
        cache.delete(name, force=True)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=200))
def test_every_accepted_name_makes_keys_a_manifest_can_hold(name: str) -> None:
    """With the longest prefix, version and index, an accepted name's shard key fits; a refused
    name's error never prints an invisible character raw."""
    try:
        check_dataset_name(name)
    except ConfigError as exc:
        refusal = str(exc)
    else:
        assert len(KeySpace("p" * 64).shard(name, "v" * 64, 10**9)) <= MAX_KEY_LENGTH
        return
    assert all(unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp", "Cs") for c in refusal)
