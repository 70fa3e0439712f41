"""Shared by the fault, soak and security suites: sources whose every row has a unique ``id``,
an exactly-once check that names what went wrong, and caches with short deadlines.

Each row's ``payload`` is its ``id`` (8 bytes, little endian) repeated, so a check can tell
not only that every id came once but that it came with its own bytes, whether it was read
from Redis or rebuilt from the source.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shardcache.cache import RetryPolicy, ShardCache, connect

PAYLOAD_BYTES = 64
# About 30 shards of ~80 rows for the default 2400 rows: enough shards that a fault lands
# between reads, small enough that a test stays well under a second of I/O.
SHARD_SIZE = "8KiB"


def unique_name(prefix: str) -> str:
    """A dataset name no other test (or other test session on the shared cluster) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def payload_of(ids: np.ndarray, width: int = PAYLOAD_BYTES) -> np.ndarray:
    """The ``payload`` of each id: its 8 little-endian bytes, repeated to ``width`` bytes."""
    raw = np.ascontiguousarray(ids, dtype="<i8").view(np.uint8).reshape(-1, 8)
    return np.tile(raw, (1, width // 8))


def write_source(
    root: Path, *, rows: int = 2400, files: int = 3, start: int = 0, row_group: int = 100,
    payload_bytes: int = PAYLOAD_BYTES,
) -> Path:
    """Parquet files under ``root`` holding ids ``start .. start+rows-1`` in order, each with a
    ``payload`` of ``payload_bytes`` (a multiple of 8); returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(start, start + rows, files + 1).astype(np.int64)
    for k, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        ids = np.arange(lo, hi, dtype=np.int64)
        payload = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(payload_bytes), len(ids), [None, pa.py_buffer(payload_of(ids, payload_bytes).tobytes())]
        )
        table = pa.table({"id": pa.array(ids), "payload": payload})
        pq.write_table(table, root / f"part-{k:03d}.parquet", row_group_size=row_group)
    return root


def batch_ids(batch: Mapping[str, Any]) -> list[int]:
    """The ids of one loader batch, after checking each row's payload belongs to its id."""
    ids = np.asarray(batch["id"]).astype(np.int64)
    payload = np.asarray(batch["payload"], dtype=np.uint8).reshape(len(ids), -1)
    expected = payload_of(ids, payload.shape[1])
    bad = np.flatnonzero((payload != expected).any(axis=1))
    assert bad.size == 0, f"rows {ids[bad][:5].tolist()} came with another row's payload"
    return ids.tolist()


def epoch_ids(batches: Iterable[Mapping[str, Any]]) -> list[int]:
    """Every id delivered by ``batches`` (one epoch of a loader), in order."""
    out: list[int] = []
    for batch in batches:
        out += batch_ids(batch)
    return out


def iterate_with(batches: Iterable[Mapping[str, Any]], *, at: int, action: Any) -> list[int]:
    """Ids of one epoch, calling ``action()`` once after ``at`` batches have been consumed."""
    out: list[int] = []
    for n, batch in enumerate(batches):
        if n == at:
            action()
        out += batch_ids(batch)
    return out


def exactly_once_problems(ids: Iterable[int], expected: Iterable[int]) -> list[str]:
    """What is wrong with ``ids`` as one delivery of each of ``expected``: [] when nothing."""
    counts = Counter(ids)
    wanted = set(expected)
    duplicated = sorted(i for i, c in counts.items() if c > 1)
    missing = sorted(wanted - counts.keys())
    foreign = sorted(counts.keys() - wanted)
    problems = []
    if missing:
        problems.append(f"{len(missing)} lost (e.g. {missing[:5]})")
    if duplicated:
        problems.append(f"{len(duplicated)} duplicated (e.g. {duplicated[:5]})")
    if foreign:
        problems.append(f"{len(foreign)} not in the dataset (e.g. {foreign[:5]})")
    return problems


def assert_exactly_once(ids: Iterable[int], expected: Iterable[int]) -> None:
    problems = exactly_once_problems(ids, expected)
    assert not problems, "exactly-once broken: " + "; ".join(problems)


def quick_cache(url: str, *, deadline: float = 3.0, socket_timeout: float = 1.0, **kwargs: Any) -> ShardCache:
    """A cache whose waits are short: a dead or stalled node costs about ``deadline + socket_timeout``."""
    return connect(
        url,
        retry=RetryPolicy(deadline=deadline, max_backoff=0.25),
        socket_timeout=socket_timeout,
        connect_timeout=socket_timeout,
        **kwargs,
    )


def table_ids(table: pa.Table) -> list[int]:
    """The ids of an Arrow table of the harness's schema, after checking every payload."""
    table = table.combine_chunks()
    payload = table.column("payload").chunk(0) if table.num_rows else pa.array([], pa.binary(PAYLOAD_BYTES))
    width = payload.type.byte_width
    raw = np.frombuffer(payload.buffers()[1], dtype=np.uint8) if table.num_rows else np.empty(0, np.uint8)
    rows = raw[payload.offset * width : (payload.offset + len(payload)) * width].reshape(-1, width)
    return batch_ids({"id": table.column("id").to_numpy(), "payload": rows})


def cached_ids(cache: ShardCache, manifest: Any) -> list[int]:
    """Every id stored in Redis for ``manifest``, shard by shard in order, each shard verified
    (xxh3 checksum, schema, row count) by the store."""
    out: list[int] = []
    for index in range(manifest.num_shards):
        out += table_ids(cache.get_table(manifest, index))
    return out
