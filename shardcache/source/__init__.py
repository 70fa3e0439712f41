"""Reading a dataset's source: files, formats, and shards rebuilt from their source rows.

Shared by the prefetcher (which lists and reads a source into the cache) and the loader (whose
read-through rebuilds a shard missing from the cache), so both read the same rows the same way.

>>> from shardcache.source import read_source_shard       # doctest: +SKIP
>>> table = read_source_shard(cache.manifest("imagenet-train"), 17)   # doctest: +SKIP

Modules: ``filesystem`` (a URI to a ``pyarrow.fs`` filesystem, listing, option redaction),
``formats`` (format detection, layouts, row-range readers), ``rawfiles`` (the ``files`` format),
``rebuild`` (a shard from its source rows, checked), ``transform`` (transform ids, applying one),
``version`` (the version fingerprint), ``identity`` (whether a listed file is still the same).

The names load on first use: the readers import ``pyarrow.dataset``, which a loader that never
reads through need not pay for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .rebuild import read_source_shard, rebuild_shard
    from .transform import Transform, transform_id
    from .version import fingerprint

__all__ = ["Transform", "fingerprint", "read_source_shard", "rebuild_shard", "transform_id"]

_MODULES = {
    "Transform": "transform",
    "fingerprint": "version",
    "read_source_shard": "rebuild",
    "rebuild_shard": "rebuild",
    "transform_id": "transform",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'shardcache.source' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
