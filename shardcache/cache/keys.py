"""Every Redis key name that shardcache uses, in one place.

Dataset names are percent-encoded so that only ``[A-Za-z0-9._-]`` remain: ``a:b``
becomes ``a%3Ab``, so confusable names (``a:b`` against ``a`` plus ``b``) can never
share a key. Metadata of one dataset shares the hash tag ``{d=NAME}`` (one slot,
so Lua scripts can update it atomically); shard keys carry no hash tag, so shards
spread over every primary.

>>> ks = KeySpace("sc:")
>>> ks.manifest("a:b", "v1")
'sc:{d=a%3Ab}:m:v1'
>>> ks.shard("a:b", "v1", 3)
'sc:s:a%3Ab:v1:3'
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote, unquote

from ..errors import ConfigError

__all__ = ["MAX_PARTS", "KeySpace", "check_dataset_name", "validate_dataset_name", "validate_version"]

MAX_NAME_LENGTH = 200
MAX_PARTS = 4096  # the parts a version may be loaded in (one part lock each)
MAX_KEY_LENGTH = 1024  # the longest shard key a manifest may record
# A shard key (prefix, name, version, index) must stay within MAX_KEY_LENGTH: 600 keeps every ASCII
# name of 200 characters, even one of symbols (3 each encoded), with room for the longest prefix and version.
MAX_ENCODED_NAME_LENGTH = 600
# Control, format (bidi overrides, zero-width), line/paragraph separator and surrogate characters:
# invisible or reordering in a terminal, so `ls` would show one name as another.
_UNSAFE_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs")
_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_VERSION = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def validate_dataset_name(name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"dataset={name!r} must be a non-empty string of at most {MAX_NAME_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ConfigError(f"dataset={name!r} contains control characters; use printable names")
    return name


def check_dataset_name(name: object, *, argument: str = "dataset") -> str:
    """A name for a new dataset, checked at the API edge (prefetch, loaders, the CLI).

    Stricter than :func:`validate_dataset_name`, which still lets older datasets be read and
    removed: no control, format (bidi override, zero-width) or separator characters, and at most
    ``MAX_ENCODED_NAME_LENGTH`` characters once percent-encoded into Redis keys.

    >>> check_dataset_name("imagenet/train-v2")
    'imagenet/train-v2'
    >>> check_dataset_name(chr(0x202E) + "gnp.exe")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    shardcache.errors.ConfigError: dataset='\\u202egnp.exe' contains U+202E (RIGHT-TO-LEFT OVERRIDE), a control...
    """
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
        raise ConfigError(
            f"{argument}={_shown(name)} must be a non-empty string of at most {MAX_NAME_LENGTH} characters"
        )
    for char in name:
        if unicodedata.category(char) in _UNSAFE_CATEGORIES:
            raise ConfigError(
                f"{argument}={_shown(name)} contains U+{ord(char):04X} ({unicodedata.name(char, 'unnamed')}), "
                "a control or invisible character; use printable characters only"
            )
    encoded = len(KeySpace.encode(name))
    if encoded > MAX_ENCODED_NAME_LENGTH:
        raise ConfigError(
            f"{argument}={_shown(name)} takes {encoded} characters in Redis keys, over the "
            f"{MAX_ENCODED_NAME_LENGTH} limit (every character but ASCII letters, digits, '.', '_' and '-' is "
            "percent-encoded: 3 per UTF-8 byte, so 'é' takes 6 and a CJK character 9); use a shorter name"
        )
    return name


def _shown(name: object, limit: int = 60) -> str:
    """``name`` as a literal, cut at ``limit``: ``repr`` escapes every character that is not
    printable (control, format, separators), so a message never prints one raw."""
    if isinstance(name, str) and len(name) > limit:
        return f"{name[:limit]!r}... ({len(name)} characters)"
    return repr(name)


def validate_version(version: object) -> str:
    if not isinstance(version, str) or not _VERSION.match(version):
        raise ConfigError(f"version={version!r} must be 1-64 characters of letters, digits, '.', '_' or '-'")
    return version


class KeySpace:
    """Builds key names under ``prefix`` (default ``sc:``)."""

    def __init__(self, prefix: str = "sc:") -> None:
        if not _PREFIX.match(prefix or ""):
            raise ConfigError(f"prefix={prefix!r} must be 1-64 characters of letters, digits, '_.:-', e.g. 'sc:'")
        self.prefix = prefix

    @staticmethod
    def encode(name: str) -> str:
        """``name`` percent-encoded down to ``[A-Za-z0-9._-]`` (``quote`` keeps ``~``; we do not)."""
        return quote(validate_dataset_name(name), safe="").replace("~", "%7E")

    def _meta(self, name: str) -> str:
        return f"{self.prefix}{{d={self.encode(name)}}}"

    def datasets(self) -> str:
        return f"{self.prefix}datasets"

    def latest(self, name: str) -> str:
        return f"{self._meta(name)}:latest"

    def versions(self, name: str) -> str:
        return f"{self._meta(name)}:versions"

    def manifest(self, name: str, version: str) -> str:
        return f"{self._meta(name)}:m:{validate_version(version)}"

    def done(self, name: str, version: str) -> str:
        return f"{self._meta(name)}:done:{validate_version(version)}"

    def lock(self, name: str) -> str:
        return f"{self._meta(name)}:lock"

    def part_lock(self, name: str, version: str, part: int) -> str:
        """The lock of one part of a parallel prefetch of ``version``."""
        return f"{self._meta(name)}:lock:{validate_version(version)}:part:{int(part)}"

    def leases(self, name: str) -> str:
        return f"{self._meta(name)}:leases"

    def readers(self, name: str) -> str:
        """The HASH of reader heartbeats: lease member -> JSON counters (``shardcache top``)."""
        return f"{self._meta(name)}:readers"

    def shard(self, name: str, version: str, index: int) -> str:
        key = f"{self.prefix}s:{self.encode(name)}:{validate_version(version)}:{int(index)}"
        if len(key) > MAX_KEY_LENGTH:  # a manifest recording it could never be read back
            raise ConfigError(
                f"dataset={_shown(name)} makes shard keys of {len(key)} characters, over {MAX_KEY_LENGTH}; "
                "use a shorter name"
            )
        return key

    def dataset_of(self, key: str) -> str | None:
        """The dataset whose metadata or shard ``key`` is, or None (the dataset list, a foreign key)."""
        rest = key[len(self.prefix):] if key.startswith(self.prefix) else None
        if rest is None:
            return None
        if rest.startswith("{d=") and "}" in rest:
            return unquote(rest[3 : rest.index("}")])
        if rest.startswith("s:") and rest.count(":") >= 3:
            return unquote(rest[2:].split(":", 1)[0])
        return None

    @staticmethod
    def chunk(shard_key: str, chunk: int) -> str:
        """Key of chunk ``chunk`` of a shard; chunk 0 is the shard key itself."""
        return shard_key if chunk == 0 else f"{shard_key}:{chunk}"
