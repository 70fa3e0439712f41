"""Parsing cache URLs: seed lists, TLS and credentials, with the password kept out of sight.

Accepted forms::

    redis://host:6379
    rediss://host:6380                        TLS
    redis://user:password@host:6379
    redis://host1:7000,host2:7001,host3:7002  seed nodes of a cluster
    redis://h1:7000,redis://h2:7001           the same, each with a scheme

>>> cfg = parse_url("redis://:s3cret@h1:7000,h2:7001")
>>> cfg.seeds
(('h1', 7000), ('h2', 7001))
>>> "s3cret" in repr(cfg)
False
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import SplitResult, unquote, urlsplit

from ..errors import ConfigError

__all__ = ["CacheURL", "parse_url", "resolve_url"]

DEFAULT_PORT = 6379
_SCHEMES = ("redis", "rediss")


@dataclass(frozen=True)
class CacheURL:
    """A parsed cache address. ``repr`` and :meth:`redacted` never show the password."""

    seeds: tuple[tuple[str, int], ...]
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0

    def redacted(self) -> str:
        """The URL with the password replaced by ``***``."""
        scheme = "rediss" if self.tls else "redis"
        auth = ""
        if self.username or self.password:
            auth = f"{self.username or ''}{':***' if self.password else ''}@"
        hosts = ",".join(f"{_host(h)}:{p}" for h, p in self.seeds)
        return f"{scheme}://{auth}{hosts}"

    def __str__(self) -> str:
        return self.redacted()


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_url(url: str) -> CacheURL:
    """Parse ``url``; raises ConfigError saying what is wrong, without echoing a password."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("the cache URL is empty; pass --redis redis://HOST:PORT or set SHARDCACHE_REDIS_URL")
    parts = [p.strip() for p in url.strip().split(",")]
    if any(not p for p in parts):
        raise ConfigError("the cache URL has an empty seed between commas; use redis://h1:7000,h2:7001")
    first = parts[0]
    if "://" not in first:
        raise ConfigError(
            "the cache URL must start with redis:// or rediss://, e.g. redis://127.0.0.1:7000"
        )
    head = urlsplit(first)
    if head.scheme not in _SCHEMES:
        raise ConfigError(f"the cache URL scheme {head.scheme!r} is not supported; use redis:// or rediss://")
    tls = head.scheme == "rediss"
    username = unquote(head.username) if head.username else None
    password = unquote(head.password) if head.password else None
    db = 0
    path = head.path.strip("/")
    if path:
        if not path.isdigit():
            raise ConfigError(f"the cache URL path {path!r} is not a database number")
        db = int(path)
    seeds = [_seed(head.hostname, head, _redacted_text(first))]
    for part in parts[1:]:
        text = part if "://" in part else f"{head.scheme}://{part}"
        piece = urlsplit(text)
        if piece.scheme != head.scheme:
            raise ConfigError("all seeds of a cache URL must use the same scheme (redis:// or rediss://)")
        seeds.append(_seed(piece.hostname, piece, _redacted_text(part)))
    return CacheURL(seeds=tuple(seeds), tls=tls, username=username, password=password, db=db)


def _seed(hostname: str | None, piece: SplitResult, shown: str) -> tuple[str, int]:
    if not hostname:
        raise ConfigError(f"the cache URL seed {shown!r} has no host; use HOST:PORT")
    try:
        port = piece.port or DEFAULT_PORT
    except ValueError:
        raise ConfigError(f"the cache URL seed {shown!r} has an invalid port; use a number 1-65535") from None
    return hostname, port


def _redacted_text(text: str) -> str:
    if "@" not in text:
        return text
    scheme, _, rest = text.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def resolve_url(url: str | None, *, env: Mapping[str, str], password: str | None = None) -> CacheURL:
    """Argument > ``SHARDCACHE_REDIS_URL``; password argument > URL > ``SHARDCACHE_REDIS_PASSWORD``."""
    text = url or env.get("SHARDCACHE_REDIS_URL")
    if not text:
        raise ConfigError(
            "no cache address: pass --redis/url=, set SHARDCACHE_REDIS_URL, or start one with `shardcache up`"
        )
    parsed = parse_url(text)
    secret = password or parsed.password or env.get("SHARDCACHE_REDIS_PASSWORD") or None
    username = parsed.username or env.get("SHARDCACHE_REDIS_USERNAME") or None
    return CacheURL(seeds=parsed.seeds, tls=parsed.tls, username=username, password=secret, db=parsed.db)
