"""A dataset version's id: a fingerprint of what the source holds and how it is prefetched.

The id changes when a file is added, removed, resized or touched (its mtime, which
object stores set on every write), or when an option that changes the shards does
(format, columns, shard size, compression, transform). Listing the source is enough
to compute it; no data is read.

>>> from shardcache.source.filesystem import FileEntry
>>> v = fingerprint([FileEntry("/d/a.parquet", 10, 1)], {"format": "parquet"})
>>> len(v), v == fingerprint([FileEntry("/d/a.parquet", 10, 1)], {"format": "parquet"})
(16, True)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import xxhash

from .filesystem import FileEntry

__all__ = ["fingerprint"]

_SCHEME = "shardcache-prefetch-1"  # bump when the shard layout of the same options changes


def fingerprint(files: Sequence[FileEntry], options: Mapping[str, Any]) -> str:
    """16 hex digits of xxh3-64 over the file list and the options."""
    h = xxhash.xxh3_64()
    h.update(_SCHEME.encode())
    h.update(json.dumps(options, sort_keys=True, default=str, separators=(",", ":")).encode())
    for f in files:
        h.update(f"\n{f.path}\0{f.size}\0{f.mtime_ns}".encode())
    return h.hexdigest()
