"""The manifest: what a dataset version holds, and where each shard came from.

A manifest is JSON (never pickle) and is validated field by field when read, since
anyone who can write to Redis can plant bytes. Invalid input raises
:class:`~shardcache.errors.ManifestCorrupted`.

>>> seg = SourceSegment(uri="/data/a.parquet", row_start=0, row_stop=10)
>>> seg.rows
10
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa

from ..errors import ManifestCorrupted
from .keys import MAX_KEY_LENGTH, validate_dataset_name, validate_version

__all__ = ["FileIdentity", "Manifest", "ManifestSize", "ShardInfo", "SourceSegment", "SourceSpec", "State",
           "committed_size"]

FORMAT_VERSION = 1
State = Literal["loading", "complete"]
_STATES = ("loading", "complete")
_COMPRESSIONS = (None, "lz4", "zstd")
# Bounds that keep a planted manifest from making us allocate without limit.
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
MAX_SCHEMA_BYTES = 16 * 1024 * 1024
MAX_SEGMENTS_PER_SHARD = 100_000
# 4096 chunks of the default 8 MiB is a 32 GiB shard: far past any sane shard size, yet it
# caps the keys that one planted record can make a reader or `rm` walk through.
MAX_CHUNKS_PER_SHARD = 4096
MAX_FILES = 10_000_000
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # as to_json writes
_TTL_BYTES = 32  # "shard_ttl": null may become any float's repr once begun


@dataclass(frozen=True)
class SourceSegment:
    """Rows ``[row_start, row_stop)`` of one source file, in the reader's row order."""

    uri: str
    row_start: int
    row_stop: int

    @property
    def rows(self) -> int:
        return self.row_stop - self.row_start


@dataclass(frozen=True)
class FileIdentity:
    """A source file as the prefetch listed it: its URI (as in the segments), size and mtime.

    A file whose size or mtime differs now was rewritten since: rows rebuilt from it are not
    the version's rows. (pyarrow.fs gives no ETag or generation; an object store sets the mtime
    on every write, to the second.)
    """

    uri: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class SourceSpec:
    """How to re-read the source: enough for a loader to rebuild any shard.

    ``options`` holds format options (e.g. ``{"label": True}`` for raw files) and
    ``filesystem`` non-secret filesystem options (e.g. an S3 ``endpoint_override``).
    Credentials never go here.
    """

    uri: str
    format: str
    columns: tuple[str, ...] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    filesystem: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardInfo:
    """One shard of a version.

    ``nbytes``, ``checksum`` and ``chunks`` are set once the shard is written;
    ``cached`` is False for a shard not (yet) in Redis, which a loader reads
    through from ``source``.
    """

    index: int
    key: str
    rows: int
    source: tuple[SourceSegment, ...] = ()
    nbytes: int = 0
    checksum: str = ""
    chunks: int = 0
    cached: bool = False

    def written(self, *, nbytes: int, checksum: str, chunks: int) -> ShardInfo:
        """This shard, recorded as written to Redis."""
        return dataclasses.replace(self, nbytes=nbytes, checksum=checksum, chunks=chunks, cached=True)


@dataclass(frozen=True)
class Manifest:
    """A dataset version: its schema, its shard table and its state."""

    name: str
    version: str
    schema: pa.Schema
    shards: tuple[ShardInfo, ...]
    state: State = "loading"
    compression: str | None = None
    created_at: float = field(default_factory=time.time)
    transform_id: str | None = None
    source: SourceSpec | None = None
    # Every source file's identity at listing time; () in manifests written before it was recorded.
    files: tuple[FileIdentity, ...] = ()
    # Seconds of TTL its shards are written with (0: none), so that a loader writing one back follows
    # the dataset's eviction policy, whatever its own connect() said. None: not recorded yet (a manifest
    # not yet stored, or one written before this field): the writing cache's shard_ttl applies.
    shard_ttl: float | None = None

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @property
    def num_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def nbytes(self) -> int:
        """Bytes of the shards written so far."""
        return sum(s.nbytes for s in self.shards if s.cached)

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    @property
    def cached_shards(self) -> int:
        return sum(1 for s in self.shards if s.cached)

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)

    def with_shard(self, shard: ShardInfo) -> Manifest:
        shards = list(self.shards)
        shards[shard.index] = shard
        return dataclasses.replace(self, shards=tuple(shards))

    # -- serialisation -------------------------------------------------------------

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "state": self.state,
            "schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode("ascii"),
            "num_rows": self.num_rows,
            "compression": self.compression,
            "created_at": self.created_at,
            "transform_id": self.transform_id,
            "source": None if self.source is None else _spec_to_dict(self.source),
            "shard_ttl": self.shard_ttl,
            "shards": [_shard_to_dict(s) for s in self.shards],
        }
        if self.files:  # left out when unknown, so a manifest without it stays byte-identical
            doc["files"] = [[f.uri, f.size, f.mtime_ns] for f in self.files]
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_json(
        cls, data: bytes | str, *, expected_name: str | None = None, expected_version: str | None = None
    ) -> Manifest:
        """Parse and validate; raises ManifestCorrupted naming the first bad field."""
        where = f"manifest of {expected_name!r}" if expected_name else "manifest"
        if not isinstance(data, (bytes, bytearray, str)):
            raise ManifestCorrupted(f"{where} is a {type(data).__name__}, not JSON text", dataset=expected_name)
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestCorrupted(
                f"{where} is {len(data)} bytes, over the {MAX_MANIFEST_BYTES} limit", dataset=expected_name
            )
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:  # RecursionError: planted deeply nested arrays
            raise ManifestCorrupted(
                f"{where} is not valid JSON ({str(exc)[:200]}); re-run the prefetch", dataset=expected_name
            ) from None
        try:
            manifest = _manifest_from_dict(doc)
        except (KeyError, TypeError, ValueError, OSError, pa.ArrowException) as exc:
            raise ManifestCorrupted(
                f"{where} is malformed: {str(exc)[:300]}; remove it with `shardcache rm` and re-run the prefetch",
                dataset=expected_name,
            ) from None
        if expected_name is not None and manifest.name != expected_name:
            raise ManifestCorrupted(
                f"{where} names dataset {manifest.name!r}; the key was tampered with", dataset=expected_name
            )
        if expected_version is not None and manifest.version != expected_version:
            raise ManifestCorrupted(
                f"{where} names version {manifest.version!r} instead of {expected_version!r}",
                dataset=expected_name,
            )
        return manifest


@dataclass(frozen=True)
class ManifestSize:
    """Bytes of a manifest's JSON once committed (an upper bound): ``total``, of which ``fixed`` (the
    header, the file list, one source segment per file) stays whatever the number of shards."""

    total: int
    fixed: int


def committed_size(manifest: Manifest, *, max_shard_bytes: int) -> ManifestSize:
    """How large ``manifest`` (as planned) will be as a ``complete`` manifest, every shard written
    with at most ``max_shard_bytes`` bytes; computed shard by shard, without building the whole JSON.

    A manifest is one Redis value that every loader GETs and parses: the prefetcher checks this
    against the largest value Redis and :meth:`Manifest.from_json` accept before writing anything.
    """
    # num_rows is written as the sum of the shards' rows, which an empty shard table makes 0.
    head = manifest.replace(shards=(), state="complete", shard_ttl=None)
    total = len(head.to_json()) + len(str(manifest.num_rows)) - 1 + _TTL_BYTES
    fixed = total
    # A shard not written yet gains its checksum, its size and its chunk count.
    pending = 16 + len(str(max(max_shard_bytes, 0))) - 1 + len(str(MAX_CHUNKS_PER_SHARD)) - 1
    uris: set[str] = set()
    for i, shard in enumerate(manifest.shards):
        total += len(_ENCODER.encode(_shard_to_dict(shard))) + (1 if i else 0) + (0 if shard.cached else pending)
        uris.update(seg.uri for seg in shard.source)
    fixed += sum(len(_ENCODER.encode(uri)) + 6 for uri in uris)  # ["uri",0,1], and a comma
    return ManifestSize(total=total, fixed=min(fixed, total))


# -- (de)serialisation helpers ---------------------------------------------------------


def _spec_to_dict(spec: SourceSpec) -> dict[str, Any]:
    return {
        "uri": spec.uri,
        "format": spec.format,
        "columns": None if spec.columns is None else list(spec.columns),
        "options": dict(spec.options),
        "filesystem": dict(spec.filesystem),
    }


def _shard_to_dict(s: ShardInfo) -> dict[str, Any]:
    return {
        "index": s.index,
        "key": s.key,
        "rows": s.rows,
        "nbytes": s.nbytes,
        "checksum": s.checksum,
        "chunks": s.chunks,
        "cached": s.cached,
        "source": [[seg.uri, seg.row_start, seg.row_stop] for seg in s.source],
    }


def shard_record(s: ShardInfo) -> bytes:
    """The small JSON record kept per written shard while a version loads."""
    return json.dumps({"nbytes": s.nbytes, "checksum": s.checksum, "chunks": s.chunks}).encode()


def apply_shard_record(s: ShardInfo, raw: bytes | str) -> ShardInfo:
    """``s`` updated from its ``done`` record; an intent record (``{"pending": n}``, written
    before the chunks) leaves it as is. A malformed record raises ManifestCorrupted."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise TypeError("the record is not an object")
        if "checksum" not in doc:
            _chunk_count(doc.get("pending"), nbytes=None)
            return s
        nbytes = _int(doc["nbytes"], "nbytes")
        return s.written(
            nbytes=nbytes,
            checksum=_checksum(doc["checksum"], required=True),
            chunks=_chunk_count(doc["chunks"], nbytes=nbytes),
        )
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise ManifestCorrupted(f"the record of shard {s.index} is malformed: {str(exc)[:200]}") from None


def record_chunks(raw: bytes | str) -> int:
    """How many chunk keys a ``done`` record (written or intent) stands for; 1 if malformed."""
    try:
        doc = json.loads(raw)
        if isinstance(doc, dict):
            return _chunk_count(doc.get("chunks", doc.get("pending")), nbytes=None)
    except (TypeError, ValueError, RecursionError):
        pass
    return 1


def _chunk_count(value: Any, *, nbytes: int | None) -> int:
    count = _int(value, "chunks", minimum=1)
    # Every chunk but an empty payload's only one holds at least one byte.
    if count > MAX_CHUNKS_PER_SHARD or (nbytes is not None and count > max(nbytes, 1)):
        raise ValueError(f"chunks={count} is impossible for {nbytes} bytes (at most {MAX_CHUNKS_PER_SHARD})")
    return count


def _int(value: Any, what: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what}={value!r} is not an integer >= {minimum}")
    return value


def _str(value: Any, what: str, *, max_len: int = 4096) -> str:
    if not isinstance(value, str) or len(value) > max_len:
        raise ValueError(f"{what} is not a string of at most {max_len} characters")
    return value


def _checksum(value: Any, *, required: bool = False) -> str:
    value = _str(value, "checksum", max_len=16)
    if (value or required) and (len(value) != 16 or any(c not in "0123456789abcdef" for c in value)):
        raise ValueError(f"checksum {value!r} is not 16 lowercase hex digits")
    return value


def _manifest_from_dict(doc: Any) -> Manifest:
    if not isinstance(doc, dict):
        raise TypeError("top level is not an object")
    if doc.get("format") != FORMAT_VERSION:
        raise ValueError(f"format {doc.get('format')!r} is not {FORMAT_VERSION}; upgrade shardcache")
    state = doc["state"]
    if state not in _STATES:
        raise ValueError(f"state {state!r} is not one of {_STATES}")
    compression = doc.get("compression")
    if compression not in _COMPRESSIONS:
        raise ValueError(f"compression {compression!r} is not one of {_COMPRESSIONS}")
    schema_b64 = _str(doc["schema"], "schema", max_len=MAX_SCHEMA_BYTES)
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(schema_b64, validate=True)))
    created_at = doc["created_at"]
    if isinstance(created_at, bool) or not isinstance(created_at, (int, float)) or not math.isfinite(created_at):
        raise ValueError("created_at is not a number")
    transform_id = doc.get("transform_id")
    if transform_id is not None:
        _str(transform_id, "transform_id")
    shards_doc = doc["shards"]
    if not isinstance(shards_doc, list):
        raise TypeError("shards is not a list")
    shards = tuple(_shard_from_dict(i, s) for i, s in enumerate(shards_doc))
    num_rows = _int(doc["num_rows"], "num_rows")
    if num_rows != sum(s.rows for s in shards):
        raise ValueError(f"num_rows={num_rows} is not the sum of the shards' rows")
    source = doc.get("source")
    files = _files_from_doc(doc.get("files", []))
    shard_ttl = doc.get("shard_ttl")
    if shard_ttl is not None and (isinstance(shard_ttl, bool) or not isinstance(shard_ttl, (int, float))
                                  or not math.isfinite(shard_ttl) or shard_ttl < 0):
        raise ValueError(f"shard_ttl {shard_ttl!r} is not a number of seconds >= 0")
    return Manifest(
        # ConfigError is a ValueError: a bad name or version reads as a malformed manifest.
        name=validate_dataset_name(doc["name"]),
        version=validate_version(doc["version"]),
        schema=schema,
        shards=shards,
        state=state,
        compression=compression,
        created_at=float(created_at),
        transform_id=transform_id,
        source=None if source is None else _spec_from_dict(source),
        files=files,
        shard_ttl=None if shard_ttl is None else float(shard_ttl),
    )


def _files_from_doc(doc: Any) -> tuple[FileIdentity, ...]:
    if not isinstance(doc, list) or len(doc) > MAX_FILES:
        raise ValueError("files is not a list of [uri, size, mtime_ns]")
    out = []
    for item in doc:
        if not isinstance(item, list) or len(item) != 3:
            raise ValueError("files holds a malformed entry")
        out.append(FileIdentity(uri=_str(item[0], "files[] uri"), size=_int(item[1], "files[] size"),
                                mtime_ns=_int(item[2], "files[] mtime_ns")))
    return tuple(out)


def _spec_from_dict(doc: Any) -> SourceSpec:
    if not isinstance(doc, dict):
        raise TypeError("source is not an object")
    columns = doc.get("columns")
    if columns is not None:
        if not isinstance(columns, list):
            raise TypeError("source.columns is not a list")
        columns = tuple(_str(c, "source.columns[]") for c in columns)
    options, filesystem = doc.get("options", {}), doc.get("filesystem", {})
    if not isinstance(options, dict) or not isinstance(filesystem, dict):
        raise TypeError("source.options and source.filesystem must be objects")
    return SourceSpec(
        uri=_str(doc["uri"], "source.uri"),
        format=_str(doc["format"], "source.format", max_len=32),
        columns=columns,
        options=options,
        filesystem=filesystem,
    )


def _shard_from_dict(position: int, doc: Any) -> ShardInfo:
    if not isinstance(doc, dict):
        raise TypeError(f"shards[{position}] is not an object")
    index = _int(doc["index"], "index")
    if index != position:
        raise ValueError(f"shards[{position}] has index {index}")
    segments_doc = doc.get("source", [])
    if not isinstance(segments_doc, list) or len(segments_doc) > MAX_SEGMENTS_PER_SHARD:
        raise ValueError(f"shards[{position}].source is not a list of segments")
    segments: list[SourceSegment] = []
    for seg in segments_doc:
        if not isinstance(seg, list) or len(seg) != 3:
            raise ValueError(f"shards[{position}].source holds a malformed segment")
        start, stop = _int(seg[1], "row_start"), _int(seg[2], "row_stop")
        if stop < start:
            raise ValueError(f"shards[{position}].source has row_stop < row_start")
        segments.append(SourceSegment(uri=_str(seg[0], "segment uri"), row_start=start, row_stop=stop))
    rows = _int(doc["rows"], "rows")
    if segments and sum(s.rows for s in segments) != rows:
        raise ValueError(f"shards[{position}] rows={rows} differs from its source segments")
    cached = doc.get("cached", False)
    if not isinstance(cached, bool):
        raise TypeError(f"shards[{position}].cached is not a boolean")
    nbytes = _int(doc.get("nbytes", 0), "nbytes")
    if cached:
        chunks = _chunk_count(doc.get("chunks"), nbytes=nbytes)
    else:
        chunks = _int(doc.get("chunks", 0), "chunks")
        if chunks > MAX_CHUNKS_PER_SHARD:
            raise ValueError(f"shards[{position}].chunks={chunks} is over {MAX_CHUNKS_PER_SHARD}")
    return ShardInfo(
        index=index,
        key=_str(doc["key"], "key", max_len=MAX_KEY_LENGTH),
        rows=rows,
        source=tuple(segments),
        nbytes=nbytes,
        checksum=_checksum(doc.get("checksum", ""), required=cached),
        chunks=chunks,
        cached=cached,
    )

