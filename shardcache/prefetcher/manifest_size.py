"""Whether a planned version's manifest fits in one Redis value, checked before any shard is written.

A manifest is one value (JSON: every shard's key, rows and source rows, and every source file's
identity), written when a version begins and again, a little larger, when it commits; every loader
GETs and parses it when it starts. Redis refuses a value over ``proto-max-bulk-len`` (512 MB by
default) and readers refuse a manifest over :data:`MAX_MANIFEST_BYTES`, so one over either would
fail a prefetch at the start or the end, or every loader afterwards. Measured: tabular sources take
about 200-280 bytes per shard (mostly the shard's key and its file's URI) plus 65-80 per source file;
raw files (``format="files"``, a row per file) about 140 per file whatever the shard size. With 4 MiB
shards, 256 MiB holds about 1 M shards: 4 to 5 TB.
"""

from __future__ import annotations

import logging
import math

from ..cache.manifest import MAX_MANIFEST_BYTES as _READ_LIMIT
from ..cache.manifest import ManifestSize, committed_size
from ..cache.store import ShardCache
from ..errors import ConfigError
from ..units import format_bytes
from .job import Planned
from .plan import target_bytes

__all__ = ["DEFAULT_MAX_BULK_LEN", "MAX_MANIFEST_BYTES", "check_manifest_size"]

log = logging.getLogger(__name__)

# The most a manifest may take: what Manifest.from_json reads (a loader would refuse a larger one).
# Tests lower it rather than build a 256 MiB manifest.
MAX_MANIFEST_BYTES = _READ_LIMIT
# Redis's default proto-max-bulk-len, assumed when CONFIG GET is refused.
DEFAULT_MAX_BULK_LEN = 512 * 1024 * 1024
# The lowest proto-max-bulk-len Redis accepts: a manifest within it fits any server, unasked.
_MIN_MAX_BULK_LEN = 1024 * 1024
# Rows do not fill every shard to its target: suggest this much more than the arithmetic says.
_SLACK = 1.1
# A larger suggestion is no fix: a loader holds a whole shard in memory.
_MAX_SUGGESTED = 1024**3


def check_manifest_size(store: ShardCache, planned: Planned, *, shard_size: int) -> ManifestSize:
    """The committed size of the ``planned`` manifest; raises ConfigError naming the dataset, its shards,
    the size, the limit and the fix (the smallest ``shard_size`` that fits) when it is too large.

    The limit is the smaller of :data:`MAX_MANIFEST_BYTES` and the servers' ``proto-max-bulk-len``
    (CONFIG GET, asked only for a manifest over 1 MiB; Redis's default 512 MB when refused).
    """
    manifest = planned.manifest
    # One more digit than shard_size: a shard's recorded size may exceed its estimate.
    size = committed_size(manifest, max_shard_bytes=10 * shard_size)
    limit, why = MAX_MANIFEST_BYTES, "shardcache's"
    if size.total > min(limit, _MIN_MAX_BULK_LEN):
        server = store.max_value_bytes()
        if server is None:
            log.debug("CONFIG GET proto-max-bulk-len refused: assuming Redis's default %d", DEFAULT_MAX_BULK_LEN)
        bulk = DEFAULT_MAX_BULK_LEN if server is None else server
        if bulk < limit:
            limit, why = bulk, "Redis's proto-max-bulk-len" + ("" if server is not None else ", its default")
    if size.total <= limit:
        return size
    raise ConfigError(_message(planned, size, shard_size=shard_size, limit=limit, why=why))


def _message(planned: Planned, size: ManifestSize, *, shard_size: int, limit: int, why: str) -> str:
    manifest = planned.manifest
    n, files = manifest.num_shards, len(manifest.files)
    head = (
        f"dataset {manifest.name!r} needs a manifest of about {format_bytes(size.total)} ({n} shards of at most "
        f"{format_bytes(shard_size)}, {files} source file{'' if files == 1 else 's'}): over the "
        f"{format_bytes(limit)} limit ({why}) of the one Redis value that every loader reads at start; "
        "nothing was written"
    )
    data = sum(planned.estimates)
    suggested = _smallest_fitting(size, shards=n, data=data, row=data / max(manifest.num_rows, 1), limit=limit)
    if suggested is None:
        return (
            f"{head}. Its source files alone take {format_bytes(size.fixed)} of it whatever the shard size: split "
            "the source into several datasets (a glob each), or pack the files into fewer, larger ones (e.g. Parquet)"
        )
    fewer = max(1, math.ceil(data / target_bytes(suggested)))
    text = f"{suggested // 1024**2}MiB" if suggested % 1024**2 == 0 else f"{suggested // 1024}KiB"
    return f"{head}; raise shard_size (--shard-size) to {text} or more (about {fewer} shards), or split the " \
           "source into several datasets"


def _smallest_fitting(size: ManifestSize, *, shards: int, data: float, row: float, limit: int) -> int | None:
    """The smallest round ``shard_size`` whose manifest fits within ``limit`` (``data``: the shards' estimated
    bytes, ``row``: a row's); None if none sane does."""
    per_shard = (size.total - size.fixed) / shards  # a shard's record, and the segment it adds
    most = (limit - size.fixed) / per_shard / _SLACK  # shards that fit
    if most < 1:
        return None
    wanted = data / most + row  # a shard's target, less the row that does not fit at its end
    unit = 1024 * 1024 if wanted >= 1024 * 1024 else 1024
    suggested = math.ceil(min(wanted + 64 * 1024, wanted * 32 / 31) / unit) * unit
    while target_bytes(suggested) < wanted:
        suggested += unit
    return suggested if suggested <= _MAX_SUGGESTED else None
