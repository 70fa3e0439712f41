"""Where the cache is: the one order of precedence, for the CLI, the KFP components and library code.

The first of these that is given wins:

1. an explicit URL: ``redis_url`` (the CLI's ``--redis`` on the command line, a step's ``redis_url``);
2. a Kubernetes Service, ``k8s_service`` (and the Secret ``k8s_secret`` holding the password),
   read through the Kubernetes API (:mod:`shardcache.discovery.kube`);
3. ``$SHARDCACHE_REDIS_URL``;
4. the local cluster that ``shardcache up`` recorded in ``state_dir`` (the CLI's ``--dir``), when one is named.

An explicit URL and a Service together are a mistake, not a choice: ConfigError. The password
rules are :func:`shardcache.cache.urls.with_credentials`'s, applied when connecting: a Secret's
password, else the URL's, else ``$SHARDCACHE_REDIS_PASSWORD``. Where the URL is recorded in clear
text (``url_is_public=True``: KFP shows a step's inputs in its UI, metadata store and logs), a URL
with a password is refused. ``$SHARDCACHE_TLS_CA`` names the CA of a ``rediss://`` cache, also
when connecting (:func:`shardcache.cache.connect`).

>>> resolve_address(redis_url="redis://10.0.0.1:6379", env={})
CacheAddress(url='redis://10.0.0.1:6379', origin='url')
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache import ShardCache, connect, parse_url
from ..cache.urls import PASSWORD_ENV, URL_ENV
from ..errors import ConfigError
from ..localcluster import LocalCluster
from ..localcluster.state import STATE_FILE
from .kube import cache_url_from_k8s

__all__ = ["CacheAddress", "open_cache", "resolve_address"]


@dataclass(frozen=True)
class CacheAddress:
    """A resolved address: the URL, the password found beside it (None: the URL's or the
    environment's, see :func:`~shardcache.cache.urls.with_credentials`), and which step of the order gave it."""

    url: str
    password: str | None = field(default=None, repr=False)
    origin: str = "url"  # "url", "k8s", "env" or "state_dir"


def resolve_address(
    *,
    redis_url: str | None = None,
    k8s_service: str | None = None,
    k8s_secret: str | None = None,
    namespace: str | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    api_client: Any = None,
    url_is_public: bool = False,
) -> CacheAddress:
    """Resolve the cache's address in the order of this module's docstring; None or '' means not given.

    Raises:
        ConfigError: no address, an explicit URL and a Service both, a Secret without a Service,
            or (with ``url_is_public``) a password inside ``redis_url``.
        KubernetesError: discovery failed (the message names the object and the permission).
    """
    env = os.environ if env is None else env
    for name, value in (("redis_url", redis_url), ("k8s_service", k8s_service),
                        ("k8s_secret", k8s_secret), ("namespace", namespace)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name}={value!r} must be a string ('' when not used)")
    if redis_url and k8s_service:
        raise ConfigError(
            f"both redis_url={parse_url(redis_url).redacted()!r} and k8s_service={k8s_service!r} are set: "
            "pass one of them (no URL means Kubernetes discovery)"
        )
    if k8s_secret and not k8s_service:
        raise ConfigError(
            f"k8s_secret={k8s_secret!r} needs k8s_service (--k8s-service): the Secret is read next to the "
            f"Service; with a URL, give the password as {PASSWORD_ENV} instead"
        )
    if redis_url:
        if url_is_public:
            _refuse_password(redis_url)
        return CacheAddress(url=redis_url, origin="url")
    if k8s_service:
        url, password = cache_url_from_k8s(
            service=k8s_service, secret=k8s_secret or None, namespace=namespace or None, api_client=api_client
        )
        return CacheAddress(url=url, password=password, origin="k8s")
    if env.get(URL_ENV):
        return CacheAddress(url=env[URL_ENV], origin="env")
    if state_dir is not None and (Path(state_dir) / STATE_FILE).exists():
        return CacheAddress(url=LocalCluster.from_state(state_dir).url, origin="state_dir")
    local = "" if state_dir is None else ", or start a local cluster with `shardcache up`"
    raise ConfigError(
        "no cache address: pass redis_url= (--redis), e.g. redis://HOST:PORT, or k8s_service= (--k8s-service) "
        f"to find it through the Kubernetes API, set {URL_ENV}{local}"
    )


def open_cache(
    *,
    redis_url: str | None = None,
    k8s_service: str | None = None,
    k8s_secret: str | None = None,
    namespace: str | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    api_client: Any = None,
    url_is_public: bool = False,
) -> ShardCache:
    """Connect to the cache that :func:`resolve_address` finds."""
    env = os.environ if env is None else env
    address = resolve_address(
        redis_url=redis_url, k8s_service=k8s_service, k8s_secret=k8s_secret, namespace=namespace,
        state_dir=state_dir, env=env, api_client=api_client, url_is_public=url_is_public,
    )
    return connect(address.url, password=address.password, env=env)


def _refuse_password(url: str) -> None:
    parsed = parse_url(url)
    if parsed.password:
        raise ConfigError(
            f"redis_url {parsed.redacted()} carries a password, and KFP stores inputs in clear text: "
            f"drop it from the URL and give it through a Secret (use_secret_as_env -> {PASSWORD_ENV}, "
            "or k8s_service + k8s_secret)"
        )
