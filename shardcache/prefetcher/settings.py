"""The checked settings of one prefetch, shared by a whole run, a planner, each part and the commit."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from ..cache.codec import validate_compression
from ..cache.keys import check_dataset_name
from ..cache.store import ShardCache, connect
from ..errors import ConfigError
from ..source.transform import Transform
from ..units import parse_size
from .job import Source, open_source, version_id
from .order import load_order
from .report import ProgressCallback

__all__ = ["DEFAULT_WORKERS", "MIN_INFLIGHT", "Settings", "open_cache", "settings"]

DEFAULT_WORKERS = 4  # one SET in flight per primary of a 3-node cluster, and one more
MIN_INFLIGHT = 64 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """What shapes the shards (and so the version id), and how to load them."""

    dataset: str
    shard_size: int
    compression: str | None
    columns: list[str] | None
    transform: Transform | None
    options: dict[str, Any]  # format options that change the shards (label, delimiter)
    fmt: str | None
    workers: int
    inflight: int
    allow_partial: bool
    order: str
    seed: int
    world_size: int
    progress: ProgressCallback | None
    wait: float
    filesystem: pafs.FileSystem | None = None
    fs_options: Mapping[str, Any] = field(default_factory=dict)

    def list_source(self, source: str | os.PathLike[str]) -> tuple[Source, str]:
        """The listed source and its version id (no data read)."""
        src = open_source(source, fmt=self.fmt, fs_options=self.fs_options, filesystem=self.filesystem)
        version = version_id(src, columns=self.columns, shard_size=self.shard_size, compression=self.compression,
                             transform=self.transform, options=self.options)
        return src, version


def settings(
    *,
    dataset: str,
    format: str | None,
    shard_size: int | str,
    compression: str | None,
    transform: Transform | None,
    columns: Sequence[str] | None,
    workers: int | None,
    allow_partial: bool,
    order: str,
    progress: ProgressCallback | None,
    seed: int,
    world_size: int,
    label: bool,
    wait: float,
    max_inflight: int | str | None,
    filesystem: pafs.FileSystem | None,
    fs_options: Mapping[str, Any],
) -> Settings:
    """Every argument checked (ConfigError naming the first wrong one)."""
    check_dataset_name(dataset)
    size = parse_size(shard_size, name="shard_size")
    compression = validate_compression(compression)
    cols = _columns(columns)
    if progress is not None and not callable(progress):
        raise ConfigError(f"progress={progress!r} is not callable; pass a function taking a Progress")
    if transform is not None and not callable(transform):
        raise ConfigError(f"transform={transform!r} is not callable; pass a function RecordBatch -> RecordBatch")
    if not isinstance(label, bool):
        raise ConfigError(f"label={label!r} must be True or False")
    n_workers = DEFAULT_WORKERS if workers is None else workers
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ConfigError(f"workers={workers!r} must be an integer >= 1 (writer threads)")
    inflight = max(8 * size, MIN_INFLIGHT) if max_inflight is None else parse_size(max_inflight, name="max_inflight")
    load_order([], order=order, seed=seed, world_size=world_size)  # validates order, seed and world_size
    options: dict[str, Any] = {"label": True} if label else {}
    if isinstance(format, str) and format.lower() == "tsv":  # csv, tab-separated, whatever the extensions
        format, options = "csv", {**options, "delimiter": "\t"}
    return Settings(
        dataset=dataset, shard_size=size, compression=compression, columns=cols, transform=transform,
        options=options, fmt=format, workers=n_workers, inflight=inflight, allow_partial=allow_partial, order=order,
        seed=seed, world_size=world_size, progress=progress, wait=wait, filesystem=filesystem,
        fs_options=dict(fs_options),
    )


def open_cache(cache: ShardCache | str | None) -> tuple[ShardCache, bool]:
    """``(the cache, whether the caller owns it and must close it)``."""
    if isinstance(cache, ShardCache):
        return cache, False
    if cache is None or isinstance(cache, str):
        return connect(cache), True
    raise ConfigError(f"cache={cache!r} must be a ShardCache, a redis:// URL, or None for $SHARDCACHE_REDIS_URL")


def _columns(columns: Sequence[str] | None) -> list[str] | None:
    if columns is None:
        return None
    if isinstance(columns, str) or not all(isinstance(c, str) and c for c in columns) or not columns:
        raise ConfigError(f"columns={columns!r} must be a non-empty list of column names, e.g. ['image', 'label']")
    if len(set(columns)) != len(columns):
        raise ConfigError(f"columns={list(columns)!r} names a column twice")
    return list(columns)
