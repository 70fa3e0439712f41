"""Rebuilding a shard from its source: the loader's read-through, and the prefetch's own read path.

Both the prefetch and :func:`read_source_shard` build a shard with
:func:`build_shard`, so the rebuilt rows, schema and encoded bytes (hence the
checksum) are exactly those prefetched. A rebuilt shard is checked before anyone gets
its rows: against the checksum the manifest records, or, while the version loads and
has none yet, its files against the size and mtime the prefetch listed. Rows of a
file rewritten since are never handed out: :class:`SourceError` names the file.

>>> m = cache.manifest("imagenet-train")                     # doctest: +SKIP
>>> table = read_source_shard(m, 17)                         # doctest: +SKIP
>>> cache.put_shard(m, 17, encode_table(table, compression=m.compression))   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from ..cache.codec import checksum, encode_table
from ..cache.manifest import Manifest, SourceSegment, SourceSpec
from ..errors import ConfigError, ShardMissing, SourceError
from .filesystem import path_of, resolve, split_glob
from .formats import DatasetReader, RowReader, conform, schema_from_text
from .identity import changed_error, changed_files
from .rawfiles import FilesReader
from .transform import Transform, apply_transform, transform_id

__all__ = [
    "build_shard", "canonical", "encode_shard", "open_reader", "path_of", "read_source_shard", "rebuild_shard",
    "verify_rebuilt",
]

_FIX = "its rows are not delivered: re-run the prefetch to cache the source as it is now"


def _resolve(
    spec: SourceSpec, *, filesystem: pafs.FileSystem | None, fs_options: Mapping[str, Any] | None
) -> tuple[pafs.FileSystem, str]:
    options = {**dict(spec.filesystem), **dict(fs_options or {})}
    return resolve(spec.uri, options=options, filesystem=filesystem)


def open_reader(
    spec: SourceSpec,
    *,
    filesystem: pafs.FileSystem | None = None,
    fs_options: Mapping[str, Any] | None = None,
    batch_rows: int = 65536,
) -> RowReader:
    """A reader of the source described by ``spec`` (filesystem options from the spec,
    credentials from ``fs_options`` or the environment)."""
    fs, path = _resolve(spec, filesystem=filesystem, fs_options=fs_options)
    root = split_glob(path)[0]
    if spec.format == "files":
        return FilesReader(fs=fs, root=root, label=bool(spec.options.get("label", False)))
    try:
        schema = schema_from_text(spec.options["schema"])
    except (KeyError, TypeError, ValueError, pa.ArrowException):
        raise ConfigError(
            f"the source spec of {spec.uri} records no readable schema; prefetch it again with this version"
        ) from None
    return DatasetReader(fs=fs, fmt=spec.format, schema=schema, options=spec.options, root=root,
                         batch_rows=batch_rows)


def build_shard(
    reader: RowReader,
    segments: Sequence[SourceSegment],
    *,
    transform: Transform | None,
    schema: pa.Schema | None,
    read: Callable[[str, int, int], pa.Table] | None = None,
) -> pa.Table:
    """The rows of ``segments``, in order, transformed, with exactly ``schema`` (when given)."""
    read = read or reader.read
    parts = [read(path_of(s.uri), s.row_start, s.row_stop) for s in segments] or [reader.schema.empty_table()]
    table = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
    table = apply_transform(transform, table)
    if schema is not None:
        try:
            table = conform(table, schema)
        except (pa.ArrowException, ValueError) as exc:
            where = segments[0].uri if segments else "the source"
            raise SourceError(
                f"the transform returned schema {table.schema} for rows of {where}, not the dataset's {schema} "
                f"({exc}); a transform must return the same columns for every batch",
                uri=where,
            ) from None
    return canonical(table)


def canonical(table: pa.Table) -> pa.Table:
    """``table`` as one chunk per column, framed by the IPC writer the same however it was sliced.

    Arrow's IPC writer frames a sliced array differently from a fresh one holding the
    same values (offsets, and padding taken from the bytes after the slice), and a
    shard's rows come from different slices of different batches depending on how it
    was read. Fixed-width, binary and string slices without nulls (image tensors, JPEG
    bytes, text) become zero-copy views of exactly their bytes; anything else, and
    columns of several chunks, is copied once into fresh buffers.
    """
    columns = []
    for column in table.columns:
        chunks = column.chunks
        if len(chunks) == 1:
            columns.append(_rebased(chunks[0]))
        else:
            empty = [pa.array([], type=column.type)] if not chunks else []
            columns.append(pa.concat_arrays([*chunks, *empty]))
    return pa.Table.from_arrays(columns, schema=table.schema)


_OFFSET_TYPES = {pa.binary(): np.int32, pa.string(): np.int32, pa.large_binary(): np.int64, pa.large_string(): np.int64}


def _rebased(array: pa.Array) -> pa.Array:
    kind = array.type
    if len(array) == 0:
        return pa.array([], type=kind)
    if (
        (pa.types.is_primitive(kind) or pa.types.is_fixed_size_binary(kind))
        and not pa.types.is_boolean(kind)
        and array.null_count == 0
    ):
        # A zero-copy view holding exactly the slice's bytes: the writer would otherwise
        # write the parent's bytes around the slice as body or padding.
        size = kind.bit_width // 8
        data = array.buffers()[1].slice(array.offset * size, len(array) * size)
        return pa.Array.from_buffers(kind, len(array), [None, data])
    width = _OFFSET_TYPES.get(kind)
    if width is not None and array.null_count == 0:
        offsets = np.frombuffer(array.buffers()[1], dtype=width)[array.offset : array.offset + len(array) + 1]
        start, stop = int(offsets[0]), int(offsets[-1])
        values = array.buffers()[2]
        return pa.Array.from_buffers(
            kind, len(array), [None, pa.py_buffer(offsets - offsets[0]), values.slice(start, stop - start)]
        )
    return pa.concat_arrays([array, array.slice(0, 0)])


def encode_shard(table: pa.Table, *, compression: str | None) -> pa.Buffer:
    """The bytes of ``encode_table(table, compression=...)``, written into one exactly sized buffer.

    A growing output stream copies a 4 MiB payload several times as it doubles; measuring
    first with a mock stream (which copies nothing) and writing once is cheaper. With
    compression the measuring pass would compress twice, so the plain encoder is used.
    """
    if compression is not None:
        return encode_table(table, compression=compression)
    table = table.combine_chunks()
    rows = max(table.num_rows, 1)
    options = pa.ipc.IpcWriteOptions(compression=None)
    mock = pa.MockOutputStream()
    with pa.ipc.new_stream(mock, table.schema, options=options) as writer:
        writer.write_table(table, max_chunksize=rows)
    out = pa.allocate_buffer(mock.size())
    with pa.ipc.new_stream(pa.FixedSizeBufferWriter(out), table.schema, options=options) as writer:
        writer.write_table(table, max_chunksize=rows)
    return out


def read_source_shard(
    manifest: Manifest,
    index: int,
    *,
    transform: Transform | None = None,
    filesystem: pafs.FileSystem | None = None,
    fs_options: Mapping[str, Any] | None = None,
) -> pa.Table:
    """Shard ``index`` of ``manifest`` rebuilt from its source: the same rows, order and schema.

    Pass the ``transform`` the prefetch used (it is checked by id); ``filesystem`` or
    ``fs_options`` (e.g. S3 credentials) when the environment does not provide them.
    ``encode_table(table, compression=manifest.compression)`` then has the shard's checksum.
    Raises :class:`ShardMissing` when the source is not recorded or the transform does not
    match, :class:`SourceError` when the source cannot be read or changed since the prefetch
    (see :func:`verify_rebuilt`).
    """
    return rebuild_shard(manifest, index, transform=transform, filesystem=filesystem, fs_options=fs_options)[0]


def rebuild_shard(
    manifest: Manifest,
    index: int,
    *,
    transform: Transform | None = None,
    filesystem: pafs.FileSystem | None = None,
    fs_options: Mapping[str, Any] | None = None,
) -> tuple[pa.Table, pa.Buffer]:
    """:func:`read_source_shard`, with the payload it encoded to check the rows (for write-back)."""
    if not isinstance(index, int) or not 0 <= index < manifest.num_shards:
        raise ConfigError(f"index={index!r} is not a shard of {manifest.name!r} (0-{manifest.num_shards - 1})")
    where: dict[str, Any] = {"dataset": manifest.name, "version": manifest.version, "shard": index}
    if manifest.source is None or not manifest.shards[index].source:
        raise ShardMissing(
            f"shard {index} of {manifest.name!r} version {manifest.version} records no source to rebuild it "
            "from; re-run the prefetch",
            **where,
        )
    if manifest.transform_id is not None and transform is None:
        raise ShardMissing(
            f"shard {index} of {manifest.name!r} was prefetched with transform {manifest.transform_id}; pass the "
            "prefetch transform (transform=) to rebuild it from the source",
            **where,
        )
    if transform_id(transform) != manifest.transform_id:
        raise ShardMissing(
            f"transform {transform_id(transform)} is not the prefetch transform {manifest.transform_id} of "
            f"{manifest.name!r}; pass the prefetch transform to rebuild shard {index}",
            **where,
        )
    reader = open_reader(manifest.source, filesystem=filesystem, fs_options=fs_options)
    try:
        table = build_shard(reader, manifest.shards[index].source, transform=transform, schema=manifest.schema)
    finally:
        reader.close()
    payload = encode_shard(table, compression=manifest.compression)
    verify_rebuilt(manifest, index, payload, fs=reader.fs)
    return table, payload


def verify_rebuilt(manifest: Manifest, index: int, payload: pa.Buffer, *, fs: pafs.FileSystem) -> None:
    """Raise :class:`SourceError` unless ``payload``, shard ``index`` rebuilt from its source,
    holds the version's rows.

    With a checksum recorded (the shard was written) the payload must match it. Without one
    (the version still loads, or the shard was never cached), the shard's files must have
    the size and mtime the prefetch listed; they are checked after the read, so a file
    rewritten while it was read is caught too. Manifests written before file identities
    were recorded can only be checked by checksum.
    """
    shard = manifest.shards[index]
    uris = [s.uri for s in shard.source]
    where: dict[str, Any] = {"dataset": manifest.name, "version": manifest.version, "shard": index}
    if shard.checksum and payload.size == shard.nbytes and checksum(payload) == shard.checksum:
        return
    changes = changed_files(fs, manifest, uris)
    if changes:
        raise changed_error(changes, **where, fix=_FIX)
    if shard.checksum:
        why = "the source changed since the prefetch"
        if manifest.transform_id is not None:
            why += f" (or transform {manifest.transform_id} does not give the same rows every time)"
        files = ", ".join(dict.fromkeys(uris))
        raise SourceError(
            f"shard {index} of {manifest.name!r} version {manifest.version} rebuilt from {files} does not match "
            f"the checksum the prefetch recorded: {why}; {_FIX}",
            uri=uris[0] if uris else manifest.source.uri if manifest.source else None, **where,
        )
