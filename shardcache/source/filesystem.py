"""Where a dataset lives: resolving a URI to a ``pyarrow.fs`` filesystem and listing its files.

Local paths, globs, ``file://``, ``s3://`` (also S3-compatible stores through
``endpoint_override``), ``gs://`` and ``hdfs://`` go through ``pyarrow.fs``; any other
scheme falls back to fsspec, wrapped so the rest of the code sees one interface.

>>> fs, root = resolve("/data/train")                    # doctest: +SKIP
>>> [f.path for f in list_files(fs, root, uri="/data/train")]   # doctest: +SKIP
['/data/train/part-0.parquet', '/data/train/part-1.parquet']

Only non-secret filesystem options (endpoint, scheme, region, timeouts) are kept and
recorded in the manifest; credentials come from the environment (``AWS_ACCESS_KEY_ID``...)
or from options that are used and never stored.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

from ..errors import ConfigError, SourceError

__all__ = [
    "FileEntry", "list_files", "normalize_options", "path_of", "public_options", "redact_uri", "resolve",
    "split_glob", "to_uri",
]

_GLOB_CHARS = set("*?[")
# Options safe to store in a manifest; anything else (keys, tokens) is used but never recorded.
_PUBLIC_OPTIONS = ("endpoint_override", "scheme", "region", "connect_timeout", "request_timeout", "retry_attempts")
_SECRET_OPTIONS = ("access_key", "secret_key", "session_token", "anonymous")
_PYARROW_SCHEMES = ("", "file", "s3", "gs", "gcs", "hdfs", "viewfs")
_HIDDEN_PREFIXES = (".", "_")  # _SUCCESS, _metadata, .crc files written by Spark and friends


@dataclass(frozen=True)
class FileEntry:
    """One source file: its path inside the filesystem, size and modification time."""

    path: str
    size: int
    mtime_ns: int


def redact_uri(uri: str) -> str:
    """``uri`` without user and password, e.g. ``s3://KEY:SECRET@bucket/x`` -> ``s3://bucket/x``."""
    parts = urlsplit(uri)
    if parts.scheme and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return uri


def normalize_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``endpoint_override="http://host:port"`` becomes ``endpoint_override="host:port", scheme="http"``."""
    out = dict(options)
    endpoint = out.get("endpoint_override")
    if isinstance(endpoint, str) and "://" in endpoint:
        scheme, _, rest = endpoint.partition("://")
        if out.get("scheme") not in (None, scheme):
            raise ConfigError(f"endpoint_override={endpoint!r} disagrees with scheme={out['scheme']!r}")
        out.update(endpoint_override=rest.rstrip("/"), scheme=scheme)
    return out


def public_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The filesystem options that may be written to a manifest."""
    options = normalize_options(options)
    unknown = set(options) - set(_PUBLIC_OPTIONS) - set(_SECRET_OPTIONS)
    if unknown:
        raise ConfigError(
            f"unknown filesystem option(s) {sorted(unknown)}; supported: "
            f"{', '.join(_PUBLIC_OPTIONS + _SECRET_OPTIONS)}"
        )
    return {k: options[k] for k in _PUBLIC_OPTIONS if options.get(k) is not None}


def _scheme(uri: str) -> str:
    if len(uri) > 1 and uri[1] == ":" and uri[0].isalpha():  # a Windows drive letter
        return ""
    return urlsplit(uri).scheme.lower()


def _s3(uri: str, options: Mapping[str, Any]) -> tuple[pafs.FileSystem, str]:
    parts = urlsplit(uri)
    kwargs: dict[str, Any] = {}
    for key in ("endpoint_override", "scheme", "region", "connect_timeout", "request_timeout", "anonymous"):
        if options.get(key) is not None:
            kwargs[key] = options[key]
    if options.get("access_key"):
        kwargs.update(access_key=options["access_key"], secret_key=options.get("secret_key"))
        if options.get("session_token"):
            kwargs["session_token"] = options["session_token"]
    if options.get("retry_attempts") is not None:
        kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=int(options["retry_attempts"]))
    if "endpoint_override" in kwargs and "region" not in kwargs:
        kwargs["region"] = "us-east-1"  # S3-compatible stores ignore it; skips a region lookup
    try:
        fs = pafs.S3FileSystem(**kwargs)
    except (TypeError, ValueError, pa.ArrowException) as exc:
        raise ConfigError(f"invalid S3 options for {redact_uri(uri)}: {exc}") from None
    host = parts.netloc.rsplit("@", 1)[-1]
    return fs, f"{host}{parts.path}".rstrip("/")


def resolve(
    uri: str | os.PathLike[str],
    *,
    options: Mapping[str, Any] | None = None,
    filesystem: pafs.FileSystem | None = None,
) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``uri`` and the path of ``uri`` inside it (glob characters kept)."""
    options = normalize_options(options or {})
    text = os.fspath(uri)
    if not isinstance(text, str) or not text:
        raise ConfigError(f"source={uri!r} must be a non-empty path or URI, e.g. 's3://bucket/train/'")
    if filesystem is not None:
        parts = urlsplit(text)
        path = f"{parts.netloc}{parts.path}" if _scheme(text) else text
        return filesystem, path.rstrip("/") or "/"
    scheme = _scheme(text)
    if scheme == "":
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))
    if scheme == "file":
        return pafs.LocalFileSystem(), urlsplit(text).path
    if scheme == "s3":
        return _s3(text, options)
    if scheme in _PYARROW_SCHEMES:
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (pa.ArrowException, ValueError) as exc:
            raise SourceError(f"cannot open {redact_uri(text)}: {exc}", uri=redact_uri(text)) from None
        return fs, path
    return _fsspec(text, scheme)


def _fsspec(uri: str, scheme: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow has no filesystem for ``scheme``: wrap fsspec's, if it has one."""
    try:
        import fsspec
    except ImportError:
        raise ConfigError(
            f"source {redact_uri(uri)!r}: pyarrow has no filesystem for {scheme}://; install fsspec and its "
            f"{scheme} plugin"
        ) from None
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"source {redact_uri(uri)!r}: no filesystem for {scheme}:// ({exc})") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), str(path)


def to_uri(uri: str, root: str, path: str) -> str:
    """The URI of ``path`` (a path in the filesystem of ``uri``, whose own path is ``root``)."""
    scheme = _scheme(uri)
    if scheme in ("", "file"):
        return path
    parts = urlsplit(uri)
    host = parts.netloc.rsplit("@", 1)[-1]
    if scheme in ("s3", "gs", "gcs"):
        return f"{scheme}://{path}"  # pyarrow's path is bucket/key
    if scheme in _PYARROW_SCHEMES:  # hdfs://host:port/path
        return f"{scheme}://{host}{path}"
    return f"{scheme}://{path.lstrip('/')}"  # fsspec paths carry what the URI's host held


def path_of(uri: str) -> str:
    """The path inside its filesystem of a segment URI recorded in a manifest."""
    scheme = _scheme(uri)
    if scheme in ("", "file"):
        return urlsplit(uri).path if scheme else uri
    parts = urlsplit(uri)
    if scheme in ("s3", "gs", "gcs"):
        return f"{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"
    if scheme in ("hdfs", "viewfs"):
        return parts.path
    import fsspec

    return str(fsspec.core.url_to_fs(uri)[1])


def split_glob(path: str) -> tuple[str, str | None]:
    """``(base directory, pattern)``; pattern is None when ``path`` has no glob characters."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if _GLOB_CHARS & set(part):
            base = "/".join(parts[:i]) or ("/" if path.startswith("/") else "")
            return base, path
    return path, None


def _hidden(rel: str) -> bool:
    return any(part.startswith(_HIDDEN_PREFIXES) for part in rel.split("/"))


def list_files(fs: pafs.FileSystem, path: str, *, uri: str) -> list[FileEntry]:
    """Every data file under ``path`` (a file, a directory or a glob), sorted by path.

    Hidden files and directories (``.name``, ``_name``) are skipped. Raises
    :class:`SourceError` naming ``uri`` when nothing is there.
    """
    shown = redact_uri(uri)
    base, pattern = split_glob(path)
    try:
        info = fs.get_file_info(base)
        if pattern is None and info.type == pafs.FileType.File:
            return [FileEntry(path=info.path, size=int(info.size or 0), mtime_ns=int(info.mtime_ns or 0))]
        if info.type == pafs.FileType.NotFound:
            raise SourceError(f"source {shown} does not exist; check the path or URI", uri=shown)
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except SourceError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"cannot list source {shown}: {_short(exc)}", uri=shown) from None
    entries = []
    for item in infos:
        if item.type != pafs.FileType.File:
            continue
        rel = posixpath.relpath(item.path, base) if base else item.path
        if _hidden(rel) or (pattern is not None and not fnmatch.fnmatchcase(item.path, pattern)):
            continue
        entries.append(FileEntry(path=item.path, size=int(item.size or 0), mtime_ns=int(item.mtime_ns or 0)))
    if not entries:
        raise SourceError(f"source {shown} holds no data files; check the path, glob or format", uri=shown)
    return sorted(entries, key=lambda e: e.path)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."
