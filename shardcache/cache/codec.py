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

import struct
from collections.abc import Iterator
from typing import Union

import pyarrow as pa
import xxhash

from ..errors import ConfigError, ShardCorrupted

__all__ = ["checksum", "decode_payload", "encode_table", "split_chunks", "validate_compression"]

COMPRESSIONS = ("lz4", "zstd")
# No shard decodes to more than this unless the caller says so: shards are meant to be MiBs.
DEFAULT_MAX_DECODED_BYTES = 1 << 30
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
    check_utf8: bool = False,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> pa.Table:
    """Read an IPC stream payload, zero-copy; anything malformed raises ShardCorrupted.

    ``schema`` and ``max_rows`` come from the manifest: a payload whose schema or row
    count differs is rejected, so planted bytes cannot pass as a shard. Every offset
    and length is validated, so a table that decodes is safe to read; the UTF-8 of
    string columns is checked only with ``check_utf8=True`` (it runs at about 1.6 GB/s).
    Compressed buffers may declare at most ``max_decoded_bytes`` in all, so a planted
    payload cannot make the reader allocate without bound.
    """
    where = f"shard {shard} of {dataset!r} version {version}" if dataset else "shard payload"

    def corrupted(reason: str) -> ShardCorrupted:
        return ShardCorrupted(
            f"{where} {reason}; it will be read through from the source, or re-run the prefetch",
            dataset=dataset, version=version, shard=shard,
        )

    try:
        buf = payload if isinstance(payload, pa.Buffer) else pa.py_buffer(payload)
        declared = _declared_decompressed_bytes(buf)
        if declared > max_decoded_bytes:
            raise corrupted(
                f"declares {declared} bytes once decompressed, over max_decoded_bytes={max_decoded_bytes}"
            )
        table = pa.ipc.open_stream(buf).read_all()
        if schema is not None and not table.schema.equals(schema, check_metadata=False):
            raise corrupted(f"has schema {table.schema} instead of the manifest's")
        if max_rows is not None and table.num_rows != max_rows:
            raise corrupted(f"holds {table.num_rows} rows, the manifest says {max_rows}")
        _validate(table, check_utf8=check_utf8)
    except ShardCorrupted:
        raise
    except (pa.ArrowException, ValueError, OSError, TypeError, EOFError, IndexError, struct.error) as exc:
        raise corrupted(f"is not a valid Arrow IPC stream ({str(exc)[:200]})") from None
    return table


def _validate(table: pa.Table, *, check_utf8: bool) -> None:
    """Full validation (offsets, lengths, child arrays); UTF-8 is checked only if asked, by viewing
    string columns as binary (zero-copy) before validating."""
    if not check_utf8:
        fields = [f.with_type(_without_utf8(f.type)) for f in table.schema]
        if any(f.type != g.type for f, g in zip(fields, table.schema, strict=True)):
            columns = [
                pa.chunked_array([chunk.view(f.type) for chunk in column.chunks], f.type)
                for column, f in zip(table.columns, fields, strict=True)
            ]
            table = pa.Table.from_arrays(columns, schema=pa.schema(fields))
    table.validate(full=True)


def _without_utf8(t: pa.DataType) -> pa.DataType:
    """``t`` with every string type replaced by the binary type of the same layout."""
    if pa.types.is_string(t):
        return pa.binary()
    if pa.types.is_large_string(t):
        return pa.large_binary()
    if pa.types.is_string_view(t):
        return pa.binary_view()
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_without_utf8(t.value_type)))
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(_without_utf8(t.value_type)))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(_without_utf8(t.value_type)), t.list_size)
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(_without_utf8(t.field(i).type)) for i in range(t.num_fields)])
    return t  # other nested types are validated as they are, UTF-8 included


# -- how much a compressed payload says it will decompress to ---------------------------------
#
# Arrow allocates each compressed buffer's declared length (its first 8 bytes) before
# decompressing it. We read those lengths first, walking the message's flatbuffer just far
# enough to find the buffers (format: arrow/format/Message.fbs).

_RECORD_BATCH, _DICTIONARY_BATCH = 3, 2


def _declared_decompressed_bytes(buf: pa.Buffer) -> int:
    view = memoryview(buf)
    total, pos = 0, 0
    while pos + 8 <= len(view):
        size = struct.unpack_from("<i", view, pos)[0]
        if size == -1:  # continuation marker, then the metadata size
            size = struct.unpack_from("<i", view, pos + 4)[0]
            pos += 8
        else:  # the pre-1.0 framing without the marker
            pos += 4
        if size == 0:
            break  # end of stream
        if not 0 < size <= len(view) - pos:
            raise ValueError(f"a message's metadata size {size} runs past the payload")
        fb = view[pos : pos + size]
        pos += size
        body_pos = _field_pos(fb, _u32(fb, 0), 3)
        body_len = 0 if body_pos is None else int(struct.unpack_from("<q", fb, body_pos)[0])
        if not 0 <= body_len <= len(view) - pos:
            raise ValueError(f"a message's body length {body_len} runs past the payload")
        body = view[pos : pos + body_len]
        pos += body_len
        batch = _batch_table(fb)
        if batch is None or _field_pos(fb, batch, 3) is None:  # not a batch, or not compressed
            continue
        for offset, length in _buffers(fb, batch):
            if length >= 8:
                if not 0 <= offset <= len(body) - 8:
                    raise ValueError(f"a buffer at {offset} lies outside the message body")
                declared = int.from_bytes(body[offset : offset + 8], "little", signed=True)
                total += max(declared, 0)  # -1: stored uncompressed
    return total


def _u32(fb: memoryview, pos: int) -> int:
    return int(struct.unpack_from("<I", fb, pos)[0])


def _field_pos(fb: memoryview, table: int, field: int) -> int | None:
    vtable = table - struct.unpack_from("<i", fb, table)[0]
    vt_size = struct.unpack_from("<H", fb, vtable)[0]
    slot = 4 + 2 * field
    if slot + 2 > vt_size:
        return None
    off = struct.unpack_from("<H", fb, vtable + slot)[0]
    return table + off if off else None


def _deref(fb: memoryview, pos: int) -> int:
    return pos + _u32(fb, pos)


def _batch_table(fb: memoryview) -> int | None:
    message = _u32(fb, 0)
    kind_pos, header_pos = _field_pos(fb, message, 1), _field_pos(fb, message, 2)
    if kind_pos is None or header_pos is None:
        return None
    kind = fb[kind_pos]
    if kind == _RECORD_BATCH:
        return _deref(fb, header_pos)
    if kind == _DICTIONARY_BATCH:
        data = _field_pos(fb, _deref(fb, header_pos), 1)
        return None if data is None else _deref(fb, data)
    return None


def _buffers(fb: memoryview, batch: int) -> Iterator[tuple[int, int]]:
    pos = _field_pos(fb, batch, 2)
    if pos is None:
        return
    vector = _deref(fb, pos)
    count = _u32(fb, vector)
    if vector + 4 + 16 * count > len(fb):
        raise ValueError("the buffer list runs past the message metadata")
    for i in range(count):
        offset, length = struct.unpack_from("<qq", fb, vector + 4 + 16 * i)
        yield offset, length
