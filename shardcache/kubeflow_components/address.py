"""Where the cache is, from a pipeline step's inputs: a URL, or a Kubernetes Service and Secret.

The order of precedence is :mod:`shardcache.discovery.address`'s (``redis_url``, else
``k8s_service`` and ``k8s_secret``, else ``$SHARDCACHE_REDIS_URL``); an empty input means
"not given". KFP records every component input in clear text (the UI, the metadata store
and the executor's log all show them), so a password never travels as an input: it comes
from a Secret, either read through the API (``k8s_secret``) or mounted as the environment
variable ``SHARDCACHE_REDIS_PASSWORD`` (kfp-kubernetes ``use_secret_as_env``).

>>> resolve_cache_address(redis_url="redis://10.0.0.1:6379", env={})
('redis://10.0.0.1:6379', None)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..cache import ShardCache
from ..discovery import address

__all__ = ["open_cache", "resolve_cache_address"]


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
    found = address.resolve_address(
        redis_url=redis_url, k8s_service=k8s_service, k8s_secret=k8s_secret, namespace=namespace,
        env=env, api_client=api_client, url_is_public=True,
    )
    return found.url, found.password


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
    return address.open_cache(
        redis_url=redis_url, k8s_service=k8s_service, k8s_secret=k8s_secret, namespace=namespace,
        env=env, api_client=api_client, url_is_public=True,
    )
