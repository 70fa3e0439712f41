"""The one exception tree of shardcache.

Every error raised on purpose by shardcache derives from :class:`ShardCacheError`,
carries the objects it concerns as attributes, and says in its message what to
do next. Passwords never appear in a message::

    ShardCacheError
    ├── ConfigError (also ValueError)       bad argument, URL, size or state dict
    ├── CacheUnavailable (also ConnectionError)
    │   └── AccessDenied                     wrong password, or an ACL rule missing
    ├── DatasetNotFound (also KeyError)      no such dataset or version
    ├── ShardMissing                         a shard is not in the cache
    ├── ShardCorrupted                       checksum or decoding failed
    │   └── ManifestCorrupted                a manifest, or another metadata key, is unusable
    │                                        (malformed, or of the wrong Redis type)
    ├── CapacityExceeded                     the data does not fit in Redis
    ├── DatasetLocked                        another writer holds the dataset
    ├── DatasetInUse                         a live lease protects the dataset
    ├── SourceError                          the source data cannot be read
    ├── PrefetchFailed                       some shards failed; carries the report
    └── KubernetesError                      discovery through the Kubernetes API failed
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "CacheUnavailable",
    "CapacityExceeded",
    "ConfigError",
    "DatasetInUse",
    "DatasetLocked",
    "DatasetNotFound",
    "KubernetesError",
    "ManifestCorrupted",
    "PrefetchFailed",
    "ShardCacheError",
    "ShardCorrupted",
    "ShardMissing",
    "SourceError",
]


class ShardCacheError(Exception):
    """Root of every error that shardcache raises on purpose.

    Errors pickle with their attributes (keyword-only in the constructors), so one raised in a
    worker process reaches the parent whole.
    """

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild, (type(self), self.args, dict(self.__dict__))


def _rebuild(cls: type[ShardCacheError], args: tuple[object, ...], state: dict[str, object]) -> ShardCacheError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class ConfigError(ShardCacheError, ValueError):
    """An argument, URL, size, environment variable or state dict is invalid."""


class CacheUnavailable(ShardCacheError, ConnectionError):
    """Redis could not be reached before the retry deadline.

    Attributes:
        node: ``host:port`` of the node last tried, or the redacted URL.
        waited: seconds spent retrying before giving up.
    """

    def __init__(self, message: str, *, node: str | None = None, waited: float = 0.0) -> None:
        super().__init__(message)
        self.node = node
        self.waited = waited


class AccessDenied(CacheUnavailable):
    """Redis refused the credentials, or an ACL rule forbids a command or key."""


class DatasetNotFound(ShardCacheError, KeyError):
    """The dataset, or the requested version of it, is not in the cache."""

    def __init__(self, message: str, *, dataset: str, version: str | None = None) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.version = version

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class ShardMissing(ShardCacheError):
    """A shard is not in the cache (evicted, lost with a node, or never loaded).

    Attributes:
        dataset, version, shard: the shard concerned (None once torch's DataLoader has re-raised the
            error from a worker of a map-style dataset: it keeps the type and the message only).
    """

    def __init__(
        self, message: str, *, dataset: str | None = None, version: str | None = None, shard: int | None = None
    ) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.version = version
        self.shard = shard


class ShardCorrupted(ShardCacheError):
    """Bytes read from Redis failed their checksum or could not be decoded.

    Attributes:
        key: the Redis key at fault, when one is known.
    """

    def __init__(
        self,
        message: str,
        *,
        dataset: str | None = None,
        version: str | None = None,
        shard: int | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.version = version
        self.shard = shard
        self.key = key


class ManifestCorrupted(ShardCorrupted):
    """A manifest read from Redis is not valid JSON of the expected shape, or a metadata key
    (``latest``, ``versions``, the dataset list, a lease set) holds a value of the wrong type."""


class CapacityExceeded(ShardCacheError):
    """The data needs more memory than the cache has free.

    Attributes:
        needed: bytes the operation needs.
        available: bytes free across the cluster (``None`` when unknown).
        node: ``host:port`` of the node that answered ``OOM``, when one did.
    """

    def __init__(
        self, message: str, *, needed: int | None = None, available: int | None = None, node: str | None = None
    ) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available
        self.node = node


class DatasetLocked(ShardCacheError):
    """Another writer holds the dataset's lock."""

    def __init__(self, message: str, *, dataset: str) -> None:
        super().__init__(message)
        self.dataset = dataset


class DatasetInUse(ShardCacheError):
    """A live lease protects the dataset from removal."""

    def __init__(self, message: str, *, dataset: str, leases: list[str] | None = None) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.leases = leases or []


class SourceError(ShardCacheError):
    """The source data is missing, empty, unreadable or inconsistent, or changed since it was listed.

    Attributes:
        uri: the file or location at fault.
        dataset, version, shard: the dataset version and shard concerned, when there is one (a
            shard rebuilt from a file that changed since the prefetch).
    """

    def __init__(
        self,
        message: str,
        *,
        uri: str | None = None,
        dataset: str | None = None,
        version: str | None = None,
        shard: int | None = None,
    ) -> None:
        super().__init__(message)
        self.uri = uri
        self.dataset = dataset
        self.version = version
        self.shard = shard


class PrefetchFailed(ShardCacheError):
    """Some shards could not be loaded; the version was left ``loading`` (resumable).

    Attributes:
        report: the :class:`~shardcache.prefetcher.PrefetchReport`, with each failed
            shard's source file and reason.
    """

    def __init__(self, message: str, *, report: object) -> None:
        super().__init__(message)
        self.report = report


class KubernetesError(ShardCacheError):
    """The Kubernetes API refused or lacks an object shardcache needs.

    Attributes:
        kind: the object's kind, e.g. ``Service``.
        name: ``namespace/name`` of the object.
    """

    def __init__(self, message: str, *, kind: str | None = None, name: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name
