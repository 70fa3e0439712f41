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

__all__ = ["CacheURL", "parse_url", "resolve_url", "with_credentials"]

# The environment of every client: the address and its credentials.
URL_ENV = "SHARDCACHE_REDIS_URL"
PASSWORD_ENV = "SHARDCACHE_REDIS_PASSWORD"
USERNAME_ENV = "SHARDCACHE_REDIS_USERNAME"

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
    """Parse ``url``; raises ConfigError saying what is wrong, without echoing a password.

    Characters such as ``, / ? # @`` in a password must be percent-encoded.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("the cache URL is empty; pass --redis redis://HOST:PORT or set SHARDCACHE_REDIS_URL")
    text = url.strip()
    # Everything before the last '@' may be a password (even one that holds a ',' by mistake):
    # error messages show no seed that starts inside that span.
    secret_end = text.rfind("@")
    parts: list[tuple[str, str]] = []
    offset = 0
    for k, raw in enumerate(text.split(",")):
        part = raw.strip()
        shown = _shown(part, inside_secret=offset + len(raw) <= secret_end, number=k + 1)
        offset += len(raw) + 1
        if not part:
            raise ConfigError("the cache URL has an empty seed between commas; use redis://h1:7000,h2:7001")
        parts.append((part, shown))
    first, first_shown = parts[0]
    if "://" not in first:
        raise ConfigError("the cache URL must start with redis:// or rediss://, e.g. redis://127.0.0.1:7000")
    head = _split(first, first_shown)
    if head.scheme not in _SCHEMES:
        raise ConfigError(f"the cache URL scheme {head.scheme!r} is not supported; use redis:// or rediss://")
    tls = head.scheme == "rediss"
    username = unquote(head.username) if head.username else None
    password = unquote(head.password) if head.password else None
    db = 0
    path = head.path.strip("/")
    if path:
        if not (path.isascii() and path.isdigit()) or len(path) > 5:
            raise ConfigError(f"the cache URL seed {first_shown} has a path that is not a database number")
        db = int(path)
    seeds = [_seed(head, first_shown)]
    for part, shown in parts[1:]:
        piece = _split(part if "://" in part else f"{head.scheme}://{part}", shown)
        if piece.scheme != head.scheme:
            raise ConfigError("all seeds of a cache URL must use the same scheme (redis:// or rediss://)")
        if piece.username or piece.password:
            raise ConfigError(
                f"the cache URL seed {shown} carries credentials; give them once, on the first seed, "
                "and percent-encode a ',' in a password as %2C"
            )
        if piece.path.strip("/") not in ("", path):
            raise ConfigError(f"the cache URL seed {shown} names another database than the first seed")
        seeds.append(_seed(piece, shown))
    return CacheURL(seeds=tuple(seeds), tls=tls, username=username, password=password, db=db)


def _split(text: str, shown: str) -> SplitResult:
    try:
        piece = urlsplit(text)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise ConfigError(f"the cache URL seed {shown} is malformed; use redis://HOST:PORT") from None
    if piece.query or piece.fragment or "?" in text or "#" in text:
        raise ConfigError(
            f"the cache URL seed {shown} has a query or fragment, which shardcache does not read; "
            "pass options to connect() instead (percent-encode '?' and '#' in a password)"
        )
    return piece


def _seed(piece: SplitResult, shown: str) -> tuple[str, int]:
    if not piece.hostname:
        raise ConfigError(f"the cache URL seed {shown} has no host; use HOST:PORT")
    try:
        port = piece.port
    except ValueError:
        port = 0
    if port is None:
        return piece.hostname, DEFAULT_PORT
    if not 1 <= port <= 65535:
        raise ConfigError(f"the cache URL seed {shown} has an invalid port; use a number 1-65535")
    return piece.hostname, port


def _shown(part: str, *, inside_secret: bool, number: int) -> str:
    """What an error message may show of one seed: never anything that may be a credential."""
    if inside_secret:
        return f"number {number}"
    if "@" not in part:
        return repr(part)
    scheme = part.partition("://")[0] + "://" if "://" in part else ""
    return repr(f"{scheme}***@{part.rsplit('@', 1)[1]}")


def resolve_url(url: str | None, *, env: Mapping[str, str], password: str | None = None) -> CacheURL:
    """The address :func:`~shardcache.cache.connect` uses: ``url``, else ``$SHARDCACHE_REDIS_URL``,
    with the password rules of :func:`with_credentials`.

    This is the last step of the one order of precedence; the steps before it (a Kubernetes
    Service, the local cluster's state directory) are :mod:`shardcache.discovery`'s.
    """
    text = url or env.get(URL_ENV)
    if not text:
        raise ConfigError(
            f"no cache address: pass --redis/url=, set {URL_ENV}, or start one with `shardcache up`"
        )
    return with_credentials(parse_url(text), env=env, password=password)


def with_credentials(parsed: CacheURL, *, env: Mapping[str, str], password: str | None = None) -> CacheURL:
    """The password rules, in one place.

    * the password: the ``password`` argument (a Kubernetes Secret's, for one), else the
      URL's, else ``$SHARDCACHE_REDIS_PASSWORD``;
    * the username: the URL's, else ``$SHARDCACHE_REDIS_USERNAME``;
    * an address recorded in clear text (a KFP step input) holds no password:
      :func:`shardcache.discovery.resolve_address` refuses one (``url_is_public=True``).
    """
    secret = password or parsed.password or env.get(PASSWORD_ENV) or None
    username = parsed.username or env.get(USERNAME_ENV) or None
    return CacheURL(seeds=parsed.seeds, tls=parsed.tls, username=username, password=secret, db=parsed.db)
