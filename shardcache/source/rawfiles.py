"""The ``files`` format: a tree of raw files (JPEGs, WAVs...), one row per file.

Each row is ``{path, bytes}``, ``path`` relative to the source root, plus ``label``
(the parent directory's name, e.g. ``train/cat/1.jpg`` -> ``cat``) when asked for.

>>> files_schema(label=True).names
['path', 'bytes', 'label']
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.fs as pafs

from ..errors import SourceError
from .filesystem import FileEntry
from .formats import Layout, Piece

__all__ = ["FilesReader", "describe_files", "files_schema"]

_ROW_OVERHEAD = 16  # offsets of the path and bytes columns


def files_schema(*, label: bool) -> pa.Schema:
    fields = [pa.field("path", pa.string(), nullable=False), pa.field("bytes", pa.binary(), nullable=False)]
    if label:
        fields.append(pa.field("label", pa.string()))
    return pa.schema(fields)


def _relative(path: str, root: str) -> str:
    rel = posixpath.relpath(path, root) if root else path
    return posixpath.basename(path) if rel in (".", "") else rel


def describe_files(*, files: Sequence[FileEntry], root: str, label: bool) -> Layout:
    pieces = [
        Piece(f.path, 0, 1, f.size + len(_relative(f.path, root).encode()) + _ROW_OVERHEAD) for f in files
    ]
    return Layout(schema=files_schema(label=label), pieces=pieces, options={"label": bool(label)})


class FilesReader:
    """Reads one raw file as one row."""

    def __init__(self, *, fs: pafs.FileSystem, root: str, label: bool) -> None:
        self.fs = fs
        self.root = root
        self.label = label
        self.schema = files_schema(label=label)

    def read(self, path: str, start: int, stop: int) -> pa.Table:
        if (start, stop) == (0, 0):
            return self.schema.empty_table()
        if (start, stop) != (0, 1):
            raise SourceError(f"{path} is one raw file, one row; rows {start}-{stop} do not exist", uri=path)
        try:
            with self.fs.open_input_file(path) as f:
                data = f.read()
        except (OSError, pa.ArrowException) as exc:
            raise SourceError(f"cannot read {path}: {' '.join(str(exc).split())[:300]}", uri=path) from None
        rel = _relative(path, self.root)
        columns: list[pa.Array] = [pa.array([rel], pa.string()), pa.array([data], pa.binary())]
        if self.label:
            parent = posixpath.basename(posixpath.dirname(rel))
            columns.append(pa.array([parent or None], pa.string()))
        return pa.Table.from_arrays(columns, schema=self.schema)

    def close(self) -> None:
        pass
