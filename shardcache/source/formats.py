"""Source formats: detecting them, describing a source's rows, and reading row ranges back.

Each format turns a sorted file list into a :class:`Layout`: the schema of the rows
as read (``columns`` applied) and *pieces*, runs of rows with an estimated size, from
which the shard plan is cut. A :class:`RowReader` then reads ``[start, stop)`` of one
file in that same row order. The prefetch and the loader's read-through both read
through these readers, so a rebuilt shard is byte-identical to the prefetched one.

==========  ==========================================  ==========================
format      extensions                                   pieces
==========  ==========================================  ==========================
parquet     .parquet .pq .parq (and hive directories)    one per row group
arrow       .arrow .feather .ipc                         one per record batch
csv         .csv .tsv (.tsv is tab-separated)            one per decoded block
jsonl       .jsonl .ndjson .json                         one per decoded block
files       anything else: one row per file              one per file
==========  ==========================================  ==========================
"""

from __future__ import annotations

import base64
import logging
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from ..errors import ConfigError, SourceError
from .filesystem import FileEntry

__all__ = [
    "FORMATS",
    "DatasetReader",
    "Layout",
    "Piece",
    "RowReader",
    "conform",
    "describe_tabular",
    "detect_format",
    "plain_schema",
    "schema_from_text",
    "schema_to_text",
]

log = logging.getLogger(__name__)

FORMATS = ("parquet", "arrow", "csv", "jsonl", "files")
_ALIASES = {"feather": "arrow", "ipc": "arrow", "json": "jsonl", "ndjson": "jsonl", "raw": "files", "pq": "parquet"}
EXTENSIONS = {
    "parquet": (".parquet", ".pq", ".parq"),
    "arrow": (".arrow", ".feather", ".ipc"),
    "csv": (".csv", ".tsv"),
    "jsonl": (".jsonl", ".ndjson", ".json"),
}


@dataclass(frozen=True)
class Piece:
    """``rows`` rows of file ``path`` from ``row_start``, about ``nbytes`` bytes as Arrow data."""

    path: str
    row_start: int
    rows: int
    nbytes: int


@dataclass(frozen=True)
class Layout:
    """What a source holds: the schema as read, pieces in source order, format options to record."""

    schema: pa.Schema
    pieces: list[Piece]
    options: dict[str, Any]


class RowReader(Protocol):
    """Reads rows ``[start, stop)`` of one file of ``fs``; cheap when called in source order."""

    schema: pa.Schema
    fs: pafs.FileSystem

    def read(self, path: str, start: int, stop: int) -> pa.Table: ...

    def close(self) -> None: ...


def normalize_format(fmt: str) -> str:
    name = _ALIASES.get(fmt.lower(), fmt.lower()) if isinstance(fmt, str) else fmt
    if name not in FORMATS:
        raise ConfigError(
            f"format={fmt!r} is not supported; use one of {', '.join(FORMATS)}, tsv (or leave it out)"
        )
    return name


def _ext(path: str) -> str:
    return posixpath.splitext(path.lower())[1]


def detect_format(files: Sequence[FileEntry], fmt: str | None, *, uri: str) -> tuple[str, list[FileEntry]]:
    """The format of ``files`` (``fmt`` if given) and the files that belong to it.

    Files of another tabular format are left out (logged); raw files are every file.
    """
    if fmt is not None:
        name = normalize_format(fmt)
    else:
        found = {f for f, exts in EXTENSIONS.items() for e in {_ext(x.path) for x in files} if e in exts}
        if len(found) > 1:
            raise ConfigError(
                f"source {uri} mixes formats ({', '.join(sorted(found))}); pass format= (--format) "
                "or point the source at one kind of file"
            )
        name = found.pop() if found else "files"
    if name == "files":
        return name, list(files)
    exts = EXTENSIONS[name]
    kept = [f for f in files if _ext(f.path) in exts]
    if not kept:
        kept = [f for f in files if not any(_ext(f.path) in e for e in EXTENSIONS.values())]
    if len(kept) < len(files):
        log.info("ignoring %d file(s) of %s that are not %s", len(files) - len(kept), uri, name)
    if not kept:
        raise SourceError(f"source {uri} holds no {name} files; check the path or pass format=", uri=uri)
    return name, kept


def schema_to_text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def schema_from_text(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text, validate=True)))


def plain_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` without metadata and with dictionary columns decoded.

    Dictionaries differ between row groups and batches; decoding them makes a shard's
    bytes depend only on its rows, so a rebuilt shard matches its checksum.
    """
    fields = [
        pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type, f.nullable)
        for f in schema
    ]
    return pa.schema(fields)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema`` (dictionaries decoded, metadata dropped)."""
    table = table.replace_schema_metadata(None)
    if table.schema.equals(schema, check_metadata=False):
        return table
    return table.cast(schema)


# -- tabular formats through pyarrow.dataset ------------------------------------------------


def _file_format(name: str, options: Mapping[str, Any]) -> ds.FileFormat:
    if name == "parquet":
        return ds.ParquetFileFormat()
    if name == "arrow":
        return ds.IpcFileFormat()
    if name == "csv":
        delimiter = options.get("delimiter", ",")
        return ds.CsvFileFormat(parse_options=pacsv.ParseOptions(delimiter=delimiter))
    return ds.JsonFileFormat()


def _source_error(path: str, exc: BaseException, what: str = "read") -> SourceError:
    text = " ".join(str(exc).split())[:400]
    return SourceError(f"cannot {what} {path}: {text}", uri=path)


class _Cursor:
    """A position in one file's batch stream, so reads in source order never re-read."""

    def __init__(self, path: str, batches: Iterator[pa.RecordBatch], position: int) -> None:
        self.path = path
        self.batches = batches
        self.position = position  # row index of the first row of ``pending``/the next batch
        self.pending: pa.RecordBatch | None = None

    def take(self, start: int, stop: int) -> list[pa.RecordBatch]:
        out: list[pa.RecordBatch] = []
        while self.position < stop:
            batch = self.pending if self.pending is not None else next(self.batches, None)
            self.pending = None
            if batch is None:
                break
            end = self.position + batch.num_rows
            lo, hi = max(start - self.position, 0), min(stop, end) - self.position
            if hi > lo:
                out.append(batch.slice(lo, hi - lo))
            if end > stop:  # keep the rest for the next read
                self.pending = batch.slice(stop - self.position)
                self.position = stop
                break
            self.position = end
        return out


class DatasetReader:
    """Reads parquet, IPC, CSV and JSON Lines files through ``pyarrow.dataset``.

    Parquet seeks to the row group holding ``start``; the others stream from the top
    of the file, so random access costs a re-read there (reads in order do not).
    """

    def __init__(
        self,
        *,
        fs: pafs.FileSystem,
        fmt: str,
        schema: pa.Schema,
        options: Mapping[str, Any],
        root: str,
        batch_rows: int = 65536,
    ) -> None:
        self.fs = fs
        self.fmt = fmt
        self.read_schema = schema
        self.schema = plain_schema(schema)
        self.options = dict(options)
        self.root = root
        self.batch_rows = max(1, int(batch_rows))
        self._format = _file_format(fmt, options)
        partition_fields = [schema.field(n) for n in self.options.get("partitions", [])]
        self._partitioning = ds.partitioning(pa.schema(partition_fields), flavor="hive") if partition_fields else None
        self._cursor: _Cursor | None = None
        self._fragments: dict[str, ds.Fragment] = {}

    def fragment(self, path: str) -> ds.Fragment:
        frag = self._fragments.get(path)
        if frag is None:
            dataset = ds.dataset(
                [path], filesystem=self.fs, format=self._format, schema=self.read_schema,
                partitioning=self._partitioning, partition_base_dir=self.root if self._partitioning else None,
            )
            frag = next(iter(dataset.get_fragments()))
            if len(self._fragments) > 64:
                self._fragments.clear()
            self._fragments[path] = frag
        return frag

    def _open(self, path: str, start: int) -> _Cursor:
        frag = self.fragment(path)
        position = 0
        if self.fmt == "parquet" and start > 0:
            groups = frag.row_groups
            first = 0
            for rg in groups:
                if position + rg.num_rows > start:
                    break
                position += rg.num_rows
                first += 1
            frag = frag.subset(row_group_ids=list(range(first, len(groups))))
        batches = frag.to_batches(
            schema=self.read_schema, columns=self.read_schema.names, batch_size=self.batch_rows,
            batch_readahead=2, use_threads=True,
        )
        return _Cursor(path, batches, position)

    def batches(self, path: str, start: int, stop: int) -> list[pa.RecordBatch]:
        try:
            cursor = self._cursor
            if cursor is None or cursor.path != path or cursor.position > start:
                cursor = self._cursor = self._open(path, start)
            return cursor.take(start, stop)
        except (OSError, pa.ArrowException) as exc:
            self._cursor = None
            raise _source_error(path, exc) from None

    def read(self, path: str, start: int, stop: int) -> pa.Table:
        batches = self.batches(path, start, stop)
        got = sum(b.num_rows for b in batches)
        if got != stop - start:
            raise SourceError(
                f"{path} has fewer rows than when it was listed (rows {start}-{stop} asked, {got} read); "
                "the source changed: run the prefetch again",
                uri=path,
            )
        table = pa.Table.from_batches(batches, schema=self.read_schema) if batches else self.read_schema.empty_table()
        return conform(table, self.schema)

    def close(self) -> None:
        self._cursor = None
        self._fragments.clear()


def describe_tabular(
    *,
    fs: pafs.FileSystem,
    fmt: str,
    files: Sequence[FileEntry],
    root: str,
    columns: Sequence[str] | None,
    options: Mapping[str, Any],
) -> Layout:
    """Schema and pieces of a parquet/IPC/CSV/JSON source; checks every file's schema."""
    opts = dict(options)
    paths = [f.path for f in files]
    if fmt == "csv" and "delimiter" not in opts and all(p.lower().endswith(".tsv") for p in paths):
        opts["delimiter"] = "\t"
    hive = fmt == "parquet" and any("=" in part for f in files for part in posixpath.dirname(
        posixpath.relpath(f.path, root)).split("/"))
    try:
        dataset = ds.dataset(
            paths, filesystem=fs, format=_file_format(fmt, opts),
            partitioning="hive" if hive else None, partition_base_dir=root if hive else None,
        )
        full = dataset.schema
    except (OSError, pa.ArrowException) as exc:
        raise _source_error(paths[0], exc, "open") from None
    partitions = []
    if hive:
        names = {f.name for f in pa.schema(dataset.partitioning.schema)} if dataset.partitioning else set()
        partitions = [n for n in full.names if n in names]
    if columns is not None:
        missing = [c for c in columns if c not in full.names]
        if missing:
            raise ConfigError(f"columns={list(columns)!r}: {missing} not in the source; it has {full.names}")
        schema = pa.schema([full.field(c) for c in columns])
        partitions = [p for p in partitions if p in columns]
    else:
        schema = full
    schema = schema.remove_metadata()
    opts["partitions"] = partitions
    opts["schema"] = schema_to_text(schema)
    reader = DatasetReader(fs=fs, fmt=fmt, schema=schema, options=opts, root=root)
    pieces: list[Piece] = []
    first: tuple[str, pa.Schema] | None = None
    file_fields = [n for n in schema.names if n not in partitions]
    for entry in files:
        path = entry.path
        frag = reader.fragment(path)
        try:
            physical = frag.physical_schema
        except (OSError, pa.ArrowException) as exc:
            raise _source_error(path, exc, "read the schema of") from None
        mine = _projection(physical, file_fields, fmt)
        if first is None:
            first = (path, mine)
        elif not _same(first[1], mine, fmt):
            raise SourceError(
                f"schema mismatch between source files: {first[0]} has {_fields(first[1])} but {path} has "
                f"{_fields(mine)}; make them agree, or select common columns with columns=",
                uri=path,
            )
        pieces += _pieces(reader, frag, entry, fmt)
    return Layout(schema=schema, pieces=pieces, options=opts)


def _projection(physical: pa.Schema, names: Sequence[str], fmt: str) -> pa.Schema:
    if fmt == "jsonl":  # JSON objects may omit keys; the dataset schema fills them with nulls
        return pa.schema([])
    if fmt == "csv":  # the header, whole: a renamed column would otherwise read as nulls
        return physical
    fields = [physical.field(n) for n in names if n in physical.names]
    missing = [n for n in names if n not in physical.names]
    return pa.schema(fields + [pa.field(n, pa.null()) for n in missing])


def _same(a: pa.Schema, b: pa.Schema, fmt: str) -> bool:
    if fmt == "csv":  # types are inferred per file from the first block; the names must agree
        return a.names == b.names
    return pa.schema([f.remove_metadata() for f in a]).equals(pa.schema([f.remove_metadata() for f in b]))


def _fields(schema: pa.Schema) -> str:
    return "(" + ", ".join(f"{f.name}: {f.type}" if str(f.type) != "null" else f"no {f.name}" for f in schema) + ")"


def _pieces(reader: DatasetReader, frag: ds.Fragment, entry: FileEntry, fmt: str) -> list[Piece]:
    path = entry.path
    try:
        if fmt == "parquet":
            return _parquet_pieces(reader, frag, path)
        if fmt == "arrow":
            # One piece per file: the footer gives the rows, the file size the bytes; the
            # planner's probe corrects the estimate, and nothing is read twice.
            rows = frag.count_rows()
            return [Piece(path, 0, rows, entry.size)] if rows else []
        # CSV and JSON have no row index: count by decoding, which also finds bad rows now.
        out, row = [], 0
        for batch in reader._open(path, 0).batches:
            if batch.num_rows:
                out.append(Piece(path, row, batch.num_rows, batch.nbytes))
                row += batch.num_rows
        return out
    except SourceError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise _source_error(path, exc) from None


def _parquet_pieces(reader: DatasetReader, frag: ds.Fragment, path: str) -> list[Piece]:
    meta = frag.metadata
    wanted = set(reader.read_schema.names)
    fixed = sum(8 for f in reader.read_schema if f.name in reader.options["partitions"])
    out, row = [], 0
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        if rg.num_rows == 0:
            continue
        size = sum(
            rg.column(j).total_uncompressed_size for j in range(rg.num_columns)
            if rg.column(j).path_in_schema.split(".")[0] in wanted
        )
        out.append(Piece(path, row, rg.num_rows, size + fixed * rg.num_rows))
        row += rg.num_rows
    return out
