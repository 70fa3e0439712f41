"""Shard payloads: Arrow IPC streams, xxh3-64 checksums and chunking.

A payload is exactly an Arrow IPC stream, optionally with Arrow's own LZ4 or ZSTD
buffer compression, so any Arrow client can read a shard straight from Redis. The
checksum lives in the manifest, not in a header.

>>> import pyarrow as pa
>>> t = pa.table({"x": [1, 2, 3]})
>>> payload = encode_table(t)
>>> decode_payload(payload, schema=t.schema).equals(t)
True
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Union

import pyarrow as pa
import xxhash

from ..errors import ConfigError, ShardCorrupted

__all__ = ["checksum", "decode_payload", "encode_table", "split_chunks", "validate_compression"]

COMPRESSIONS = ("lz4", "zstd")
Bytes = Union[bytes, bytearray, memoryview, pa.Buffer]  # noqa: UP007  (a runtime alias on 3.10)


def validate_compression(compression: str | None) -> str | None:
    if compression in (None, "", "none"):
        return None
    if compression not in COMPRESSIONS:
        raise ConfigError(f"compression={compression!r} is not supported; use 'lz4', 'zstd' or None")
    return compression


def encode_table(table: pa.Table | pa.RecordBatch, *, compression: str | None = None) -> pa.Buffer:
    """Serialise ``table`` as one Arrow IPC stream (one record batch)."""
    options = pa.ipc.IpcWriteOptions(compression=validate_compression(compression))
    if isinstance(table, pa.Table):
        table = table.combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        if isinstance(table, pa.Table):
            writer.write_table(table, max_chunksize=max(table.num_rows, 1))
        else:
            writer.write_batch(table)
    return sink.getvalue()


def checksum(payload: Bytes) -> str:
    """xxh3-64 of ``payload`` as 16 lowercase hex digits."""
    return xxhash.xxh3_64_hexdigest(memoryview(payload))


def split_chunks(payload: pa.Buffer | bytes, *, chunk_size: int) -> Iterator[memoryview]:
    """Slices of at most ``chunk_size`` bytes, without copying."""
    view = memoryview(payload)
    if len(view) == 0:
        yield view
        return
    for start in range(0, len(view), chunk_size):
        yield view[start : start + chunk_size]


def decode_payload(
    payload: Bytes,
    *,
    schema: pa.Schema | None = None,
    dataset: str | None = None,
    version: str | None = None,
    shard: int | None = None,
    max_rows: int | None = None,
) -> pa.Table:
    """Read an IPC stream payload, zero-copy; anything malformed raises ShardCorrupted.

    ``schema`` and ``max_rows`` come from the manifest: a payload whose schema or row
    count differs is rejected, so planted bytes cannot pass as a shard.
    """
    where = f"shard {shard} of {dataset!r} version {version}" if dataset else "shard payload"
    try:
        buf = payload if isinstance(payload, pa.Buffer) else pa.py_buffer(payload)
        table = pa.ipc.open_stream(buf).read_all()
        if schema is not None and not table.schema.equals(schema, check_metadata=False):
            raise ShardCorrupted(
                f"{where} has schema {table.schema} instead of the manifest's; re-run the prefetch",
                dataset=dataset,
                version=version,
                shard=shard,
            )
        if max_rows is not None and table.num_rows != max_rows:
            raise ShardCorrupted(
                f"{where} holds {table.num_rows} rows, the manifest says {max_rows}",
                dataset=dataset,
                version=version,
                shard=shard,
            )
        table.validate(full=False)
    except ShardCorrupted:
        raise
    except (pa.ArrowException, ValueError, OSError, TypeError) as exc:
        raise ShardCorrupted(
            f"{where} is not a valid Arrow IPC stream ({str(exc)[:200]}); it will be read through "
            "from the source, or re-run the prefetch",
            dataset=dataset,
            version=version,
            shard=shard,
        ) from None
    return table
