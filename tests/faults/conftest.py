"""Fixtures of the fault-injection suite: dedicated clusters that tests kill, stall, restart and
starve of memory, and a source whose rows each carry a unique ``id``.

Clusters here use a 500 ms node timeout, so a killed primary's replica takes over in a few
seconds, and caches use a 3 s retry deadline, so a test that cannot ride through fails fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shardcache.cache import ShardCache
from shardcache.localcluster import LocalCluster

from .harness import quick_cache, write_source

NODE_TIMEOUT_MS = 500
DEADLINE_S = 3.0


@pytest.fixture
def make_cluster(cluster_factory: Callable[..., LocalCluster]) -> Callable[..., LocalCluster]:
    """``make_cluster(masters=3, replicas=1, **LocalCluster kwargs)`` with a short node timeout."""

    def make(**kwargs: Any) -> LocalCluster:
        kwargs.setdefault("masters", 3)
        kwargs.setdefault("replicas", 1)
        kwargs.setdefault("node_timeout_ms", NODE_TIMEOUT_MS)
        kwargs.setdefault("maxmemory", "64mb")
        return cluster_factory(**kwargs)

    return make


@pytest.fixture
def caches() -> Iterator[Callable[..., ShardCache]]:
    """``open(url, **quick_cache kwargs)``: caches with a short deadline, closed at teardown."""
    opened: list[ShardCache] = []

    def open_(url: str, **kwargs: Any) -> ShardCache:
        kwargs.setdefault("deadline", DEADLINE_S)
        cache = quick_cache(url, **kwargs)
        opened.append(cache)
        return cache

    yield open_
    for cache in opened:
        cache.close()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """2400 rows, ids 0..2399, in 3 Parquet files."""
    return write_source(tmp_path / "source")
