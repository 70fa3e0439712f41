"""Find the cache's Redis nodes and password through the Kubernetes API.

Only the official ``kubernetes`` client is used, and it is imported inside the
functions: it is an optional extra (``shardcache[k8s]``), so importing this module
never needs it. Addresses come from the Service's ``discovery.k8s.io/v1``
EndpointSlices (v1 Endpoints is deprecated); the password from a Secret. No
message, log line or repr ever holds the password.

Example::

    url, password = cache_url_from_k8s(service="shardcache-redis", secret="shardcache-redis-auth")
    cache = shardcache.connect(url, password=password)
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from shardcache.errors import ConfigError, KubernetesError

__all__ = ["CacheEndpoint", "cache_url_from_k8s", "discover_cache", "load_kube_config"]

logger = logging.getLogger(__name__)

# Mounted into every pod that has a service account token; names the pod's own namespace.
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
RBAC_HINT = "see deploy/k8s/rbac.yaml"
# (connect, read) seconds for every API call: the client's default is to wait forever.
REQUEST_TIMEOUT = (5.0, 30.0)
# Port names and appProtocols that mean the Redis port speaks TLS.
TLS_PORT_NAMES = frozenset({"rediss", "redis-tls", "tls"})

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")

# The kubeconfig namespace of each client made by load_kube_config(context=...), so that
# discover_cache() defaults to the namespace of the context the client was made for.
_CLIENT_NAMESPACES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, repr=False)
class CacheEndpoint:
    """The Redis nodes behind a Service, and the credentials to use them."""

    addresses: tuple[tuple[str, int], ...]
    password: str | None = None
    username: str | None = None
    tls: bool = False

    def url(self) -> str:
        """A seed-list URL such as ``redis://10.0.0.1:6379,10.0.0.2:6379``; the username, never the password."""
        scheme = "rediss" if self.tls else "redis"
        user = f"{quote(self.username, safe='')}@" if self.username else ""
        hosts = ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.addresses)
        return f"{scheme}://{user}{hosts}"

    def __repr__(self) -> str:
        password = None if self.password is None else "'<redacted>'"
        return (
            f"CacheEndpoint(addresses={self.addresses!r}, password={password}, "
            f"username={self.username!r}, tls={self.tls!r})"
        )


def load_kube_config(*, context: str | None = None) -> Any:
    """Return a ``kubernetes.client.ApiClient`` for this pod, or else for the kubeconfig.

    The pod's service account (in-cluster config) is tried first; then the kubeconfig
    named by ``KUBECONFIG`` (a ``:``-separated list) or ``~/.kube/config``. A ``context``
    only exists in a kubeconfig, so naming one skips the in-cluster attempt.

    Raises:
        KubernetesError: neither configuration could be loaded.
    """
    if context is not None and (not isinstance(context, str) or not context):
        raise ConfigError(f"context={context!r} is invalid: pass the name of a kubeconfig context, or None")
    kubernetes = _import_kubernetes()
    import yaml  # a dependency of the kubernetes client
    from kubernetes.config.config_exception import ConfigException

    in_cluster_reason = "a context was named"
    if context is None:
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        except ConfigException as exc:
            in_cluster_reason = str(exc)
        else:
            logger.debug("using the in-cluster Kubernetes configuration")
            return kubernetes.client.ApiClient(configuration=configuration)

    config_file = os.environ.get("KUBECONFIG") or "~/.kube/config"
    configuration = kubernetes.client.Configuration()
    try:
        # persist_config=False: reading the cache's address must never rewrite the user's kubeconfig.
        kubernetes.config.load_kube_config(
            config_file=config_file, context=context, client_configuration=configuration, persist_config=False
        )
        contexts, active = kubernetes.config.list_kube_config_contexts(config_file=config_file)
        if context is not None:
            active = next((c for c in contexts if c.get("name") == context), active)
    except (ConfigException, yaml.YAMLError, OSError, ValueError, TypeError) as exc:
        raise KubernetesError(
            f"no Kubernetes configuration: not in a pod ({in_cluster_reason}) and the kubeconfig "
            f"{config_file!r}{'' if context is None else f' (context {context!r})'} cannot be used ({exc}); "
            "run inside a pod with a service account, or set KUBECONFIG to a valid kubeconfig"
        ) from exc
    api_client = kubernetes.client.ApiClient(configuration=configuration)
    namespace = ((active or {}).get("context") or {}).get("namespace")
    if namespace:
        _CLIENT_NAMESPACES[api_client] = namespace
    logger.debug("using kubeconfig %s, context %s", config_file, (active or {}).get("name"))
    return api_client


def discover_cache(
    *,
    service: str,
    secret: str | None = None,
    namespace: str | None = None,
    port_name: str | None = None,
    api_client: Any = None,
    password_key: str = "password",
    username_key: str | None = "username",
) -> CacheEndpoint:
    """Resolve a Service to its ready Redis node addresses and read the password from a Secret.

    Args:
        service: the Service's name, ``namespace/name`` or ``name.namespace``.
        secret: a Secret holding the password (and optionally the username), or None.
        namespace: defaults to the pod's namespace, else the kubeconfig context's, else ``default``.
        port_name: the Service port to use; defaults to its first port (``redis`` by convention).
        api_client: a ``kubernetes.client.ApiClient``; defaults to :func:`load_kube_config`.
        password_key: the Secret key of the password.
        username_key: the Secret key of the ACL username, read only when present; None skips it.

    Raises:
        KubernetesError: the API denies access, an object or key is missing, or no endpoint is ready.
    """
    name, namespace = _split_service(service, namespace)
    if secret is not None and (not isinstance(secret, str) or not _DNS_SUBDOMAIN.match(secret)):
        raise ConfigError(f"secret={secret!r} is invalid: pass the name of a Secret (a DNS subdomain), or None")
    if port_name is not None and (not isinstance(port_name, str) or not port_name):
        raise ConfigError(f"port_name={port_name!r} is invalid: pass the name of a Service port, or None")
    if not isinstance(password_key, str) or not _SECRET_KEY.match(password_key):
        raise ConfigError(f"password_key={password_key!r} is invalid: pass a Secret key such as 'password'")
    if username_key is not None and (not isinstance(username_key, str) or not _SECRET_KEY.match(username_key)):
        raise ConfigError(f"username_key={username_key!r} is invalid: pass a Secret key such as 'username', or None")

    kubernetes = _import_kubernetes()
    own_client = api_client is None
    if own_client:
        api_client = load_kube_config()
    try:
        if namespace is None:
            namespace = _default_namespace(api_client)
        core = kubernetes.client.CoreV1Api(api_client)
        discovery = kubernetes.client.DiscoveryV1Api(api_client)
        with _api_errors("get", "services", name, namespace, kind="Service"):
            svc = core.read_namespaced_service(name, namespace, _request_timeout=REQUEST_TIMEOUT)
        port = _service_port(svc, port_name, name, namespace)
        with _api_errors("list", "endpointslices.discovery.k8s.io", None, namespace, kind="EndpointSlice"):
            slices = discovery.list_namespaced_endpoint_slice(
                namespace, label_selector=f"{SERVICE_NAME_LABEL}={name}", _request_timeout=REQUEST_TIMEOUT
            )
        addresses = _ready_addresses(slices.items or [], name, port.name or "")
        if not addresses:
            raise KubernetesError(
                f'service "{name}" in namespace "{namespace}" has no ready endpoint on port '
                f"{port.name or port.port!r}: check that its pods are running and ready "
                f"(kubectl get pods,endpointslices -n {namespace} -l {SERVICE_NAME_LABEL}={name})",
                kind="Service",
                name=f"{namespace}/{name}",
            )
        password = username = None
        if secret is not None:
            with _api_errors("get", "secrets", secret, namespace, kind="Secret"):
                sec = core.read_namespaced_secret(secret, namespace, _request_timeout=REQUEST_TIMEOUT)
            data = sec.data or {}
            if password_key not in data:
                raise KubernetesError(
                    f'secret "{secret}" in namespace "{namespace}" has no key "{password_key}" '
                    f"(its keys: {', '.join(sorted(data)) or 'none'}): add it, or pass password_key=",
                    kind="Secret",
                    name=f"{namespace}/{secret}",
                )
            password = _decode(data[password_key], password_key, secret, namespace)
            if username_key is not None and username_key in data:
                username = _decode(data[username_key], username_key, secret, namespace)
    finally:
        if own_client:
            api_client.close()

    endpoint = CacheEndpoint(addresses=tuple(addresses), password=password, username=username, tls=_is_tls(port))
    logger.info("service %s/%s resolves to %d ready Redis node(s)", namespace, name, len(addresses))
    return endpoint


def cache_url_from_k8s(
    *, service: str, secret: str | None = None, namespace: str | None = None, api_client: Any = None
) -> tuple[str, str | None]:
    """The cache URL (without the password) and the password, for ``--k8s-service``/``--k8s-secret``.

    Pass both to :func:`shardcache.connect` as ``connect(url, password=password)``; a None
    password (no Secret named) lets ``SHARDCACHE_REDIS_PASSWORD`` apply.

    Raises:
        KubernetesError: as :func:`discover_cache`.
    """
    endpoint = discover_cache(service=service, secret=secret, namespace=namespace, api_client=api_client)
    return endpoint.url(), endpoint.password


def _import_kubernetes() -> Any:
    try:
        import kubernetes
    except ImportError as exc:
        raise KubernetesError("the kubernetes client is not installed: pip install 'shardcache[k8s]'") from exc
    return kubernetes


def _split_service(service: object, namespace: str | None) -> tuple[str, str | None]:
    """Split ``name``, ``ns/name`` (kubectl's form), ``name.ns`` or ``name.ns.svc[.cluster.local]``
    and check the namespace agrees."""
    if not isinstance(service, str) or not service:
        raise ConfigError(f"service={service!r} is invalid: pass a Service name such as 'shardcache-redis'")
    if namespace is not None and (not isinstance(namespace, str) or not _DNS_LABEL.match(namespace)):
        raise ConfigError(
            f"namespace={namespace!r} is invalid: a namespace is lowercase letters, digits and '-', or None"
        )
    if "/" in service:
        ns, _, name = service.partition("/")
        labels = [ns] if "." not in name and "/" not in name else ["", ""]
    else:
        name, _, rest = service.partition(".")
        labels = rest.split(".") if rest else []
    if len(labels) > 1 and labels[1] != "svc":
        raise ConfigError(
            f"service={service!r} is invalid: pass 'name', 'namespace/name' or 'name.namespace' (optionally "
            "followed by '.svc')"
        )
    from_service = labels[0] if labels else None
    for value in (name, from_service):
        if value is not None and not _DNS_LABEL.match(value):
            raise ConfigError(
                f"service={service!r} is invalid: {value!r} is not a Kubernetes name "
                "(lowercase letters, digits and '-')"
            )
    if from_service is not None and namespace is not None and from_service != namespace:
        raise ConfigError(
            f"service={service!r} names namespace {from_service!r} but namespace={namespace!r}: pass one of them"
        )
    return name, from_service if from_service is not None else namespace


def _default_namespace(api_client: Any) -> str:
    """The pod's namespace, else the kubeconfig context's, else ``default``."""
    try:
        text = NAMESPACE_FILE.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    if text:
        return text
    if api_client in _CLIENT_NAMESPACES:
        return _CLIENT_NAMESPACES[api_client]
    try:
        import kubernetes

        _, active = kubernetes.config.list_kube_config_contexts(
            config_file=os.environ.get("KUBECONFIG") or "~/.kube/config"
        )
        namespace = ((active or {}).get("context") or {}).get("namespace")
    except Exception:  # no kubeconfig at all is the common case here, not an error
        namespace = None
    return namespace or "default"


@contextmanager
def _api_errors(verb: str, resource: str, name: str | None, namespace: str, *, kind: str) -> Iterator[None]:
    """Turn API refusals and network failures into a KubernetesError that says what to fix."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    what = f'{resource} "{name}"' if name else resource
    where = f'in namespace "{namespace}"'
    qualified = f"{namespace}/{name}" if name else namespace
    try:
        yield
    except ApiException as exc:
        said = _server_message(exc)
        if exc.status == 403:
            message = (
                f"cannot {verb} {what} {where}: grant the service account '{verb}' on '{resource}' ({RBAC_HINT}){said}"
            )
        elif exc.status == 404 and name:
            message = f'{kind.lower()} "{name}" not found {where}: check the name and the namespace{said}'
        elif exc.status == 404:
            message = f"cannot {verb} {resource} {where}: the API server does not serve them{said}"
        elif exc.status == 401:
            message = (
                f"the Kubernetes API rejected the credentials used to {verb} {what} {where}: "
                f"refresh the kubeconfig or service account token{said}"
            )
        else:
            message = f"cannot {verb} {what} {where}: the API answered {exc.status} {exc.reason}{said}"
        raise KubernetesError(message, kind=kind, name=qualified) from None
    except HTTPError as exc:
        raise KubernetesError(
            f"cannot reach the Kubernetes API to {verb} {what} {where}: {exc}", kind=kind, name=qualified
        ) from None


def _server_message(exc: Any) -> str:
    """The ``message`` of a Kubernetes Status body, as a suffix; bodies never carry Secret data."""
    try:
        message = json.loads(exc.body or "").get("message")
    except (ValueError, AttributeError, TypeError):
        return ""
    return f" (API server: {message})" if isinstance(message, str) and message else ""


def _service_port(svc: Any, port_name: str | None, name: str, namespace: str) -> Any:
    ports = list((svc.spec and svc.spec.ports) or [])
    if not ports:
        raise KubernetesError(
            f'service "{name}" in namespace "{namespace}" has no ports: it cannot front Redis',
            kind="Service",
            name=f"{namespace}/{name}",
        )
    if port_name is None:
        return ports[0]
    for port in ports:
        if port.name == port_name:
            return port
    names = ", ".join(repr(p.name) for p in ports)
    raise KubernetesError(
        f'service "{name}" in namespace "{namespace}" has no port named {port_name!r} (it has {names}): '
        "pass one of those as port_name",
        kind="Service",
        name=f"{namespace}/{name}",
    )


def _ready_addresses(slices: list[Any], service: str, port_name: str) -> list[tuple[str, int]]:
    """Ready ``(address, port)`` pairs over all slices, first seen first, without duplicates."""
    found: dict[tuple[str, int], None] = {}
    for endpoint_slice in slices:
        labels = (endpoint_slice.metadata and endpoint_slice.metadata.labels) or {}
        # The API server filters by label already; checking again costs nothing and keeps
        # a slice of another Service out even when a proxy or fake ignores the selector.
        if labels.get(SERVICE_NAME_LABEL) != service:
            continue
        number = next((p.port for p in endpoint_slice.ports or [] if (p.name or "") == port_name), None)
        if number is None:
            continue
        for endpoint in endpoint_slice.endpoints or []:
            # A missing `ready` means unknown, which Kubernetes says to treat as ready.
            if endpoint.conditions is not None and endpoint.conditions.ready is False:
                continue
            if endpoint.addresses:  # all addresses of one endpoint are fungible: use the first
                found[(endpoint.addresses[0], int(number))] = None
    return list(found)


def _is_tls(port: Any) -> bool:
    return (port.name or "") in TLS_PORT_NAMES or (port.app_protocol or "") in TLS_PORT_NAMES


def _decode(value: str, key: str, secret: str, namespace: str) -> str:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        # Only the key is named: the value is a credential.
        raise KubernetesError(
            f'key "{key}" of secret "{secret}" in namespace "{namespace}" is not base64 of UTF-8 text: '
            "re-create the Secret with stringData",
            kind="Secret",
            name=f"{namespace}/{secret}",
        ) from None
