"""Discovery through a fake Kubernetes API server (kmock), spoken to over real HTTP(S)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from shardcache.discovery import kube
from shardcache.errors import ConfigError, KubernetesError
from shardcache.kubeflow_components import address

from .fake_api import ENDPOINT_SLICES, SECRETS, SERVICES, ApiServer

NS = "ml"
PASSWORD = "s3cret-" + uuid.uuid4().hex


@pytest.fixture
def no_pod(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Not in a pod: no service host, no namespace file, no kubeconfig."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    monkeypatch.setattr(kube, "NAMESPACE_FILE", tmp_path / "absent-namespace")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent-kubeconfig"))


def test_service_with_slices_and_secret(api_server: ApiServer) -> None:
    api_server.add_service("shardcache-redis", NS, nodes=[("10.0.0.1", 6379), ("10.0.0.2", 6379)],
                           not_ready=[("10.0.0.9", 6379)])
    api_server.add_service("other", NS, nodes=[("10.9.9.9", 6379)])
    api_server.add_secret("shardcache-redis-auth", NS, {"password": PASSWORD, "username": "trainer"})

    endpoint = kube.discover_cache(service="shardcache-redis", secret="shardcache-redis-auth", namespace=NS,
                                   api_client=api_server.client())

    assert endpoint.addresses == (("10.0.0.1", 6379), ("10.0.0.2", 6379))
    assert (endpoint.password, endpoint.username, endpoint.tls) == (PASSWORD, "trainer", False)
    assert endpoint.url() == "redis://trainer@10.0.0.1:6379,10.0.0.2:6379"
    assert PASSWORD not in repr(endpoint)
    # The slices were asked for by the Service's label, not listed wholesale.
    listed = api_server.requests(ENDPOINT_SLICES)
    assert "kubernetes.io/service-name=shardcache-redis" in str(listed[-1].params)


def test_cache_url_from_k8s_keeps_the_password_out_of_the_url(api_server: ApiServer) -> None:
    api_server.add_service("shardcache-redis", NS, nodes=[("10.0.0.1", 7000)])
    api_server.add_secret("auth", NS, {"password": PASSWORD})

    url, password = kube.cache_url_from_k8s(service=f"shardcache-redis.{NS}", secret="auth",
                                            api_client=api_server.client())

    assert (url, password) == ("redis://10.0.0.1:7000", PASSWORD)


@pytest.mark.parametrize("service", [f"{NS}/shardcache-redis", f"shardcache-redis.{NS}", f"shardcache-redis.{NS}.svc"])
def test_the_namespace_can_come_with_the_service_name(api_server: ApiServer, service: str) -> None:
    """kubectl's NAMESPACE/NAME and DNS's NAME.NAMESPACE both name the Service (issue 16, item 8)."""
    api_server.add_service("shardcache-redis", NS, nodes=[("10.0.0.1", 7000)])
    url, _ = kube.cache_url_from_k8s(service=service, api_client=api_server.client())
    assert url == "redis://10.0.0.1:7000"


@pytest.mark.parametrize("service", ["/redis", "ml/", "ml/redis.ml", "a/b/c", "ML/redis"])
def test_malformed_namespace_slash_name_is_refused(api_server: ApiServer, service: str) -> None:
    with pytest.raises(ConfigError, match="service="):
        kube.discover_cache(service=service, api_client=api_server.client())
    assert api_server.requests(SERVICES) == []


def test_without_a_secret_the_password_is_left_to_the_environment(api_server: ApiServer) -> None:
    api_server.add_service("shardcache-redis", NS, nodes=[("10.0.0.1", 6379)])

    url, password = kube.cache_url_from_k8s(service="shardcache-redis", namespace=NS, api_client=api_server.client())

    assert (url, password) == ("redis://10.0.0.1:6379", None)
    assert api_server.requests(SECRETS) == []


def test_missing_service_names_it(api_server: ApiServer) -> None:
    with pytest.raises(KubernetesError, match='service "nope" not found in namespace "ml"') as info:
        kube.discover_cache(service="nope", namespace=NS, api_client=api_server.client())
    assert (info.value.kind, info.value.name) == ("Service", "ml/nope")


def test_missing_secret_names_it(api_server: ApiServer) -> None:
    api_server.add_service("shardcache-redis", NS, nodes=[("10.0.0.1", 6379)])
    with pytest.raises(KubernetesError, match='secret "absent" not found in namespace "ml"') as info:
        kube.discover_cache(service="shardcache-redis", secret="absent", namespace=NS,
                            api_client=api_server.client())
    assert (info.value.kind, info.value.name) == ("Secret", "ml/absent")


def test_secret_without_the_key_lists_keys_but_no_values(api_server: ApiServer) -> None:
    api_server.add_service("shardcache-redis", NS, nodes=[("10.0.0.1", 6379)])
    api_server.add_secret("auth", NS, {"redis-password": PASSWORD})
    with pytest.raises(KubernetesError, match='has no key "password" \\(its keys: redis-password\\)') as info:
        kube.discover_cache(service="shardcache-redis", secret="auth", namespace=NS, api_client=api_server.client())
    assert PASSWORD not in str(info.value)


def test_service_without_ready_endpoints(api_server: ApiServer) -> None:
    api_server.add_service("shardcache-redis", NS, not_ready=[("10.0.0.1", 6379)])
    with pytest.raises(KubernetesError, match="has no ready endpoint") as info:
        kube.discover_cache(service="shardcache-redis", namespace=NS, api_client=api_server.client())
    assert "kubectl get pods,endpointslices -n ml" in str(info.value)


@pytest.mark.parametrize(
    ("resource", "needed"),
    [
        (SERVICES, 'cannot get services "shardcache-redis" in namespace "ml": '
                   "grant the service account 'get' on 'services'"),
        (ENDPOINT_SLICES, 'cannot list endpointslices.discovery.k8s.io in namespace "ml": '
                          "grant the service account 'list' on 'endpointslices.discovery.k8s.io'"),
        (SECRETS, 'cannot get secrets "auth" in namespace "ml": grant the service account \'get\' on \'secrets\''),
    ],
)
def test_rbac_denial_names_the_object_and_the_permission(api_server: ApiServer, resource: str, needed: str) -> None:
    api_server.add_service("shardcache-redis", NS, nodes=[("10.0.0.1", 6379)])
    api_server.add_secret("auth", NS, {"password": PASSWORD})
    api_server.forbid(resource)

    with pytest.raises(KubernetesError) as info:
        kube.discover_cache(service="shardcache-redis", secret="auth", namespace=NS, api_client=api_server.client())

    message = str(info.value)
    assert message.startswith(needed)
    assert kube.RBAC_HINT in message
    assert "is forbidden: User" in message  # the API server's own words follow
    assert PASSWORD not in message


def test_invalid_names_are_refused_before_any_request(api_server: ApiServer) -> None:
    with pytest.raises(ConfigError, match="service="):
        kube.discover_cache(service="Not_A_Name", api_client=api_server.client())
    with pytest.raises(ConfigError, match="names namespace 'a' but namespace='b'"):
        kube.discover_cache(service="redis.a", namespace="b", api_client=api_server.client())
    with pytest.raises(ConfigError, match="names namespace 'a' but namespace='b'"):
        kube.discover_cache(service="a/redis", namespace="b", api_client=api_server.client())
    with pytest.raises(ConfigError, match="secret="):
        kube.discover_cache(service="redis", secret="bad/name", api_client=api_server.client())
    assert api_server.requests(SERVICES) == []


# -- which configuration is used -----------------------------------------------------------


@pytest.fixture
def pod(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tls_api_server: tuple[ApiServer, Path]) -> ApiServer:
    """Look like a pod in namespace ``ml``: service host and port, token, CA and namespace files."""
    from kubernetes.config import incluster_config

    server, ca_file = tls_api_server
    token = tmp_path / "token"
    token.write_text("pod-token")
    namespace = tmp_path / "namespace"
    namespace.write_text(NS)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", server.host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca_file))
    monkeypatch.setattr(kube, "NAMESPACE_FILE", namespace)
    return server


def test_in_cluster_config_comes_first(pod: ApiServer, api_server: ApiServer, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    pod.add_service("shardcache-redis", NS, nodes=[("10.0.0.1", 6379)])
    # A valid kubeconfig pointing elsewhere must not be used inside a pod.
    monkeypatch.setenv("KUBECONFIG", str(api_server.kubeconfig(tmp_path / "kubeconfig", namespace=NS)))

    endpoint = kube.discover_cache(service="shardcache-redis")  # namespace: the pod's

    assert endpoint.addresses == (("10.0.0.1", 6379),)
    request = pod.requests(SERVICES)[-1]
    assert request.headers.get("Authorization", "").lower() == "bearer pod-token"
    assert api_server.requests(SERVICES) == []


def test_kubeconfig_is_the_fallback(no_pod: None, api_server: ApiServer, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    api_server.add_service("shardcache-redis", NS, nodes=[("10.0.0.3", 6379)])
    monkeypatch.setenv("KUBECONFIG", str(api_server.kubeconfig(tmp_path / "kubeconfig", namespace=NS)))

    url, _ = kube.cache_url_from_k8s(service="shardcache-redis")  # namespace: the context's

    assert url == "redis://10.0.0.3:6379"
    assert api_server.requests(SERVICES)[-1].headers.get("Authorization", "").lower() == "bearer kubeconfig-token"


def test_neither_configuration_says_how_to_fix_it(no_pod: None) -> None:
    with pytest.raises(KubernetesError, match=r"no Kubernetes configuration: not in a pod .*set KUBECONFIG"):
        kube.discover_cache(service="shardcache-redis")


def test_a_named_context_skips_the_pod(pod: ApiServer, api_server: ApiServer, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    api_server.add_service("shardcache-redis", "staging", nodes=[("10.0.0.4", 6379)])
    monkeypatch.setenv("KUBECONFIG", str(api_server.kubeconfig(tmp_path / "kc", namespace="staging",
                                                               context="laptop")))
    monkeypatch.setattr(kube, "NAMESPACE_FILE", tmp_path / "absent")

    client = kube.load_kube_config(context="laptop")
    try:
        endpoint = kube.discover_cache(service="shardcache-redis", api_client=client)
    finally:
        client.close()

    assert endpoint.addresses == (("10.0.0.4", 6379),)
    assert pod.requests(SERVICES) == []


# -- the components' inputs --------------------------------------------------------------------


def test_component_inputs_resolve_through_the_api(api_server: ApiServer) -> None:
    api_server.add_service("shardcache-redis", NS, nodes=[("10.0.0.1", 6379)])
    api_server.add_secret("auth", NS, {"password": PASSWORD})

    resolved = address.resolve_cache_address(k8s_service="shardcache-redis", k8s_secret="auth", namespace=NS,
                                             env={}, api_client=api_server.client())

    assert resolved == ("redis://10.0.0.1:6379", PASSWORD)


def test_discovered_address_connects(api_server: ApiServer, redis_url: str) -> None:
    from shardcache.cache import parse_url

    api_server.add_service("shardcache-redis", NS, nodes=list(parse_url(redis_url).seeds))
    with address.open_cache(k8s_service="shardcache-redis", namespace=NS, env={},
                            api_client=api_server.client()) as cache:
        assert cache.ping()


def test_component_inputs_precedence_and_refusals() -> None:
    assert address.resolve_cache_address(env={"SHARDCACHE_REDIS_URL": "redis://h:1"}) == ("redis://h:1", None)
    assert address.resolve_cache_address(redis_url="redis://a:1", env={"SHARDCACHE_REDIS_URL": "redis://h:1"}) == (
        "redis://a:1", None)
    with pytest.raises(ConfigError, match="carries a password") as info:
        address.resolve_cache_address(redis_url=f"redis://:{PASSWORD}@h:1", env={})
    assert PASSWORD not in str(info.value)
    with pytest.raises(ConfigError, match="pass one of them"):
        address.resolve_cache_address(redis_url="redis://h:1", k8s_service="shardcache-redis", env={})
    with pytest.raises(ConfigError, match="k8s_secret='auth' needs k8s_service"):
        address.resolve_cache_address(redis_url="redis://h:1", k8s_secret="auth", env={})
    with pytest.raises(ConfigError, match="no cache address"):
        address.resolve_cache_address(env={})
