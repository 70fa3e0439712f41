"""Where the cache is, from a pipeline step's inputs: a URL, or a Kubernetes Service and Secret.

KFP records every component input in clear text (the UI, the metadata store and the
executor's log all show them), so a password never travels as an input: it comes from
a Secret, either read through the API (``k8s_secret``) or mounted as the environment
variable ``SHARDCACHE_REDIS_PASSWORD`` (kfp-kubernetes ``use_secret_as_env``).

Order of precedence:

1. ``redis_url``, with the password from the environment;
2. ``k8s_service`` (and ``k8s_secret``), resolved through the Kubernetes API;
3. ``SHARDCACHE_REDIS_URL`` from the environment.

>>> resolve_cache_address(redis_url="redis://10.0.0.1:6379", env={})
('redis://10.0.0.1:6379', None)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..cache import ShardCache, connect, parse_url
from ..errors import ConfigError

__all__ = ["open_cache", "resolve_cache_address"]

URL_ENV = "SHARDCACHE_REDIS_URL"
PASSWORD_ENV = "SHARDCACHE_REDIS_PASSWORD"


def resolve_cache_address(
    *,
    redis_url: str = "",
    k8s_service: str = "",
    k8s_secret: str = "",
    namespace: str = "",
    env: Mapping[str, str] | None = None,
    api_client: Any = None,
) -> tuple[str, str | None]:
    """Return ``(url, password)``; the URL never holds a password, and None means "from the environment".

    Raises:
        ConfigError: no address, two addresses, or a password inside ``redis_url``.
        KubernetesError: discovery failed (the message names the object and the permission).
    """
    env = os.environ if env is None else env
    for name, value in (("redis_url", redis_url), ("k8s_service", k8s_service),
                        ("k8s_secret", k8s_secret), ("namespace", namespace)):
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r} must be a string ('' when not used)")
    if redis_url and k8s_service:
        raise ConfigError(
            f"both redis_url and k8s_service={k8s_service!r} are set: pass one of them "
            "(an empty redis_url means Kubernetes discovery)"
        )
    if k8s_secret and not k8s_service:
        raise ConfigError(
            f"k8s_secret={k8s_secret!r} needs k8s_service: the Secret is read next to the Service; "
            f"with redis_url, mount the password as {PASSWORD_ENV} instead"
        )
    if redis_url:
        parsed = parse_url(redis_url)
        if parsed.password:
            raise ConfigError(
                f"redis_url {parsed.redacted()} carries a password, and KFP stores inputs in clear text: "
                f"drop it from the URL and give it through a Secret (use_secret_as_env -> {PASSWORD_ENV}, "
                "or k8s_service + k8s_secret)"
            )
        return redis_url, None
    if k8s_service:
        from .kube import cache_url_from_k8s

        url, password = cache_url_from_k8s(
            service=k8s_service, secret=k8s_secret or None, namespace=namespace or None, api_client=api_client
        )
        return url, password
    if env.get(URL_ENV):
        return env[URL_ENV], None
    raise ConfigError(
        f"no cache address: pass redis_url (e.g. redis://shardcache-redis:6379), or k8s_service "
        f"(and k8s_secret) to find it through the Kubernetes API, or set {URL_ENV}"
    )


def open_cache(
    *,
    redis_url: str = "",
    k8s_service: str = "",
    k8s_secret: str = "",
    namespace: str = "",
    env: Mapping[str, str] | None = None,
    api_client: Any = None,
) -> ShardCache:
    """Connect to the cache named by a step's inputs (see :func:`resolve_cache_address`)."""
    env = os.environ if env is None else env
    url, password = resolve_cache_address(
        redis_url=redis_url, k8s_service=k8s_service, k8s_secret=k8s_secret, namespace=namespace,
        env=env, api_client=api_client,
    )
    return connect(url, password=password, env=env)
