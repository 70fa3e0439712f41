"""Whether a source file is still the one the prefetch listed: its size and mtime, compared.

A version id stands for the bytes of the files as they were listed. A file rewritten in
place since (same name, same row count, other rows) must not feed that version: the
prefetch checks each file when it first reads it and every file again before it commits,
and the loader's read-through checks the files of a shard it rebuilds. pyarrow.fs gives no
ETag or generation, so the identity is ``(size, mtime)``; object stores set the mtime on
every write (to the second), local filesystems to the nanosecond.

>>> import pyarrow.fs as pafs
>>> what_changed(pafs.LocalFileSystem(), "/nonexistent/a.parquet", size=1, mtime_ns=0)
'is gone'
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.fs as pafs

from ..cache.manifest import FileIdentity, Manifest
from ..errors import SourceError
from .filesystem import path_of

__all__ = ["changed_files", "what_changed"]


def _when(mtime_ns: int) -> str:
    stamp = datetime.datetime.fromtimestamp(mtime_ns / 1e9, tz=datetime.timezone.utc)
    return stamp.isoformat(timespec="microseconds").replace("+00:00", "Z")


def what_changed(fs: pafs.FileSystem, path: str, *, size: int, mtime_ns: int) -> str | None:
    """How file ``path`` differs from ``size`` and ``mtime_ns`` (None when it does not)."""
    try:
        info = fs.get_file_info(path)
    except (OSError, pa.ArrowException) as exc:
        return f"cannot be checked ({' '.join(str(exc).split())[:200]})"
    if info.type != pafs.FileType.File:
        return "is gone"
    now_size, now_mtime = int(info.size or 0), int(info.mtime_ns or 0)
    changes = []
    if now_size != size:
        changes.append(f"size {size} -> {now_size} bytes")
    if now_mtime != mtime_ns:
        changes.append(f"mtime {_when(mtime_ns)} -> {_when(now_mtime)}")
    return f"was rewritten ({', '.join(changes)})" if changes else None


def changed_files(fs: pafs.FileSystem, manifest: Manifest, uris: Iterable[str]) -> list[tuple[str, str]]:
    """``(uri, how)`` for each of ``uris`` that differs from what ``manifest`` recorded of it.

    Files the manifest has no record of (manifests written before identities were recorded)
    are not checked.
    """
    recorded: dict[str, FileIdentity] = {f.uri: f for f in manifest.files}
    out = []
    for uri in dict.fromkeys(uris):
        known = recorded.get(uri)
        if known is None:
            continue
        how = what_changed(fs, path_of(uri), size=known.size, mtime_ns=known.mtime_ns)
        if how is not None:
            out.append((uri, how))
    return out


def changed_error(
    changes: list[tuple[str, str]], *, dataset: str, version: str, shard: int | None, fix: str
) -> SourceError:
    """The error for files that changed since they were listed, naming the first ones."""
    uri, _ = changes[0]
    listed = "; ".join(f"{u} {how}" for u, how in changes[:3])
    more = f" (and {len(changes) - 3} more file(s))" if len(changes) > 3 else ""
    where = f"shard {shard} of " if shard is not None else ""
    return SourceError(
        f"{where}{dataset!r} version {version}: the source changed since the prefetch listed it: {listed}{more}; "
        f"{fix}",
        uri=uri, dataset=dataset, version=version, shard=shard,
    )
