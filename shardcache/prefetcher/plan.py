"""Cutting a source into shards, and what they will cost in Redis.

Pieces (runs of rows with an estimated size, in source order) are cut into shards
of at most ``target_bytes``, keeping source order; a shard may span files, so it
records one :class:`~shardcache.cache.SourceSegment` per file it touches.

>>> from shardcache.source.formats import Piece
>>> shards = plan_shards([Piece("a", 0, 10, 1000), Piece("b", 0, 10, 1000)], target_bytes=600)
>>> [(s.rows, [(g.uri, g.row_start, g.row_stop) for g in s.segments]) for s in shards]
[(6, [('a', 0, 6)]), (6, [('a', 6, 10), ('b', 0, 2)]), (6, [('b', 2, 8)]), (2, [('b', 8, 10)])]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..cache.manifest import SourceSegment
from ..errors import SourceError
from ..source.formats import Piece
from ..units import format_bytes

__all__ = ["PlannedShard", "plan_shards", "redis_bytes", "target_bytes"]

# Redis stores a value in a jemalloc size class: 4 MiB + 1 byte takes 5 MiB. Shards stay
# this far under shard_size so that the IPC framing does not push them into the next class.
_MARGIN_FRACTION = 32
_MAX_MARGIN = 64 * 1024
_KEY_OVERHEAD = 128  # dict entry, key sds, robj


@dataclass(frozen=True)
class PlannedShard:
    segments: tuple[SourceSegment, ...]
    rows: int
    nbytes: int  # estimated payload bytes


def target_bytes(shard_size: int) -> int:
    """Arrow bytes to aim for so that the encoded shard stays within ``shard_size``."""
    return max(shard_size - min(_MAX_MARGIN, shard_size // _MARGIN_FRACTION), 1)


def plan_shards(
    pieces: Sequence[Piece],
    *,
    target_bytes: int,
    ratio: float = 1.0,
    uri_of: Callable[[str], str] = str,
    shard_size: int | None = None,
) -> list[PlannedShard]:
    """Shards of about ``target_bytes`` (pieces' sizes scaled by ``ratio``), in source order.

    Raises :class:`SourceError` if a row alone is larger than ``shard_size``.
    """
    limit = shard_size or target_bytes
    shards: list[PlannedShard] = []
    segments: list[SourceSegment] = []
    rows = 0
    size = 0.0

    def close() -> None:
        nonlocal segments, rows, size
        if rows:
            shards.append(PlannedShard(tuple(segments), rows, math.ceil(size)))
        segments, rows, size = [], 0, 0.0

    for piece in pieces:
        if piece.rows <= 0:
            continue
        per_row = piece.nbytes * ratio / piece.rows
        if per_row > limit:
            raise SourceError(
                f"rows {piece.row_start}-{piece.row_start + piece.rows} of {uri_of(piece.path)} take "
                f"{format_bytes(per_row)} per row, more than shard_size={format_bytes(limit)}; "
                "raise shard_size (--shard-size)",
                uri=uri_of(piece.path),
            )
        uri = uri_of(piece.path)
        start, left = piece.row_start, piece.rows
        while left:
            room = target_bytes - size
            take = left if per_row == 0 else min(left, int(room // per_row))
            if take == 0:
                if rows == 0:
                    take = 1  # a row between target_bytes and shard_size gets a shard of its own
                else:
                    close()
                    continue
            last = segments[-1] if segments else None
            if last is not None and last.uri == uri and last.row_stop == start:
                segments[-1] = SourceSegment(uri, last.row_start, start + take)
            else:
                segments.append(SourceSegment(uri, start, start + take))
            rows += take
            size += take * per_row
            start += take
            left -= take
            if per_row and size + per_row > target_bytes:
                close()
    close()
    return shards


def redis_bytes(nbytes: int, *, chunk_size: int) -> int:
    """Memory Redis uses to hold a payload of ``nbytes`` split into ``chunk_size`` chunks."""
    total = 0
    full, rest = divmod(nbytes, chunk_size)
    for size in [chunk_size] * full + ([rest] if rest or not full else []):
        total += _size_class(size + 24) + _KEY_OVERHEAD
    return total


def _size_class(n: int) -> int:
    """jemalloc's size class for ``n`` bytes: four classes per doubling above 64 bytes."""
    if n <= 64:
        return 64
    step = 1 << max(n.bit_length() - 3, 4)
    return -(-n // step) * step
