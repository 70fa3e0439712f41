"""The loader's argument checks: the shared ones (:mod:`shardcache.checks`), and the prefetch transform's."""

from typing import Any

from ..cache import Manifest, ShardCache, connect
from ..checks import check_bool, check_callable, check_int, check_seconds, check_size
from ..errors import ConfigError

__all__ = [
    "check_bool", "check_cache", "check_callable", "check_int", "check_prefetch_transform", "check_seconds",
    "check_size",
]


def check_prefetch_transform(transform: Any, manifest: Manifest) -> None:
    """ConfigError unless ``transform`` is the one ``manifest``'s version was prefetched with (read-through
    rebuilds shards with it)."""
    from ..source.transform import transform_id

    given = transform_id(transform)
    if given != manifest.transform_id:
        raise ConfigError(
            f"prefetch_transform={given!r} is not the transform {manifest.transform_id!r} that {manifest.name!r} "
            f"version {manifest.version} was prefetched with; pass that one (read-through rebuilds shards with it)"
        )


def check_cache(cache: object) -> ShardCache:
    """``cache=`` of a dataset: a :class:`~shardcache.ShardCache` as it is, a URL (or None: the environment's)
    connected."""
    if isinstance(cache, ShardCache):
        return cache
    if cache is None or isinstance(cache, str):
        return connect(cache)
    raise ConfigError(f"cache={cache!r} is invalid: pass a ShardCache or a redis:// URL")
