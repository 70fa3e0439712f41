"""From a source and options to a version id and a shard plan (the manifest to begin with).

:func:`open_source` lists the source (no data read) and :func:`version_id` fingerprints
it, which is all an unchanged, cached dataset costs. :func:`plan_manifest` reads file
metadata (parquet footers; CSV and JSON Lines are decoded to count their rows), reads
about one shard to measure what a row costs after the transform and compression, and
cuts the shards.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from ..cache.codec import encode_table
from ..cache.keys import KeySpace
from ..cache.manifest import FileIdentity, Manifest, ShardInfo, SourceSegment, SourceSpec
from ..errors import ConfigError, SourceError
from ..source.filesystem import FileEntry, list_files, public_options, redact_uri, resolve, split_glob, to_uri
from ..source.formats import Layout, describe_tabular, detect_format
from ..source.rawfiles import describe_files
from ..source.rebuild import build_shard, open_reader
from ..source.transform import Transform, transform_id
from ..source.version import fingerprint
from .plan import PlannedShard, plan_shards, target_bytes

__all__ = ["Planned", "Source", "open_source", "plan_manifest", "version_id"]

log = logging.getLogger(__name__)


@dataclass
class Source:
    """A listed source: where it is, its format and its files."""

    uri: str  # as given, credentials removed
    fs: pafs.FileSystem
    root: str  # directory inside ``fs`` that paths are relative to (the glob's base)
    fmt: str
    files: list[FileEntry]
    fs_public: dict[str, Any] = field(default_factory=dict)

    def uri_of(self, path: str) -> str:
        return to_uri(self.uri, self.root, path)


@dataclass
class Planned:
    manifest: Manifest
    estimates: list[int]  # estimated payload bytes of each shard


def open_source(
    source: str | os.PathLike[str],
    *,
    fmt: str | None,
    fs_options: Mapping[str, Any],
    filesystem: pafs.FileSystem | None = None,
) -> Source:
    text = os.fspath(source)
    public = public_options(fs_options)
    fs, path = resolve(text, options=fs_options, filesystem=filesystem)
    uri = redact_uri(text)
    if not (isinstance(text, str) and "://" in text) and filesystem is None:
        uri = path  # a local path, made absolute, so loaders elsewhere resolve the same files
    files = list_files(fs, path, uri=uri)
    name, files = detect_format(files, fmt, uri=uri)
    return Source(uri=uri, fs=fs, root=split_glob(path)[0], fmt=name, files=files, fs_public=public)


def version_id(
    src: Source,
    *,
    columns: Sequence[str] | None,
    shard_size: int,
    compression: str | None,
    transform: Transform | None,
    options: Mapping[str, Any],
) -> str:
    return fingerprint(
        src.files,
        {
            "format": src.fmt,
            "columns": None if columns is None else list(columns),
            "shard_size": shard_size,
            "compression": compression,
            "transform": transform_id(transform),
            "options": dict(options),
            "filesystem": src.fs_public,
        },
    )


def _layout(src: Source, columns: Sequence[str] | None, options: Mapping[str, Any]) -> Layout:
    if src.fmt == "files":
        if columns is not None:
            raise ConfigError(f"columns={list(columns)!r} does not apply to format='files' (rows are path, bytes)")
        return describe_files(files=src.files, root=src.root, label=bool(options.get("label", False)))
    if options.get("label"):
        raise ConfigError("label=True applies to format='files' only (the label is the parent folder's name)")
    return describe_tabular(fs=src.fs, fmt=src.fmt, files=src.files, root=src.root, columns=columns, options=options)


def plan_manifest(
    src: Source,
    *,
    dataset: str,
    version: str,
    keys: KeySpace,
    columns: Sequence[str] | None,
    shard_size: int,
    compression: str | None,
    transform: Transform | None,
    options: Mapping[str, Any],
) -> Planned:
    """The ``loading`` manifest of a new version, with every shard's rows and source segments."""
    layout = _layout(src, columns, options)
    pieces = [p for p in layout.pieces if p.rows]
    if not pieces:
        raise SourceError(f"source {src.uri} holds no rows ({len(src.files)} file(s), all empty)", uri=src.uri)
    spec = SourceSpec(
        uri=src.uri, format=src.fmt, columns=None if columns is None else tuple(columns),
        options=layout.options, filesystem=src.fs_public,
    )
    target = target_bytes(shard_size)
    schema, ratio = _probe(src, spec, pieces, target=target, transform=transform, compression=compression)
    planned: list[PlannedShard] = plan_shards(
        pieces, target_bytes=target, ratio=ratio, uri_of=src.uri_of, shard_size=shard_size
    )
    shards = tuple(
        ShardInfo(index=i, key=keys.shard(dataset, version, i), rows=s.rows, source=s.segments)
        for i, s in enumerate(planned)
    )
    manifest = Manifest(
        name=dataset, version=version, schema=schema, shards=shards, compression=compression,
        transform_id=transform_id(transform), source=spec,
        files=tuple(FileIdentity(src.uri_of(f.path), f.size, f.mtime_ns) for f in src.files),
    )
    return Planned(manifest=manifest, estimates=[s.nbytes for s in planned])


def _probe(
    src: Source,
    spec: SourceSpec,
    pieces: Sequence[Any],
    *,
    target: int,
    transform: Transform | None,
    compression: str | None,
) -> tuple[pa.Schema, float]:
    """The stored schema, and encoded bytes per estimated byte, from about one shard of rows."""
    first = pieces[0]
    per_row = max(first.nbytes / first.rows, 1.0)
    rows = max(1, min(first.rows, int(target // per_row)))
    estimate = per_row * rows
    reader = open_reader(spec, filesystem=src.fs, batch_rows=rows)
    try:
        segment = SourceSegment(src.uri_of(first.path), first.row_start, first.row_start + rows)
        table = build_shard(reader, [segment], transform=transform, schema=None)
    finally:
        reader.close()
    if transform is not None and table.num_rows == 0:
        raise ConfigError("the transform returned no rows for the first shard; it must return a RecordBatch of rows")
    encoded = len(encode_table(table, compression=compression))
    log.debug("probe: %d rows, estimated %d bytes, encoded %d bytes", rows, estimate, encoded)
    return table.schema, encoded / estimate
