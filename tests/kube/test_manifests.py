"""deploy/k8s renders, validates against the Kubernetes schemas offline, and hangs together."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from shardcache.discovery import kube
from shardcache.localcluster import find_server_binary

kubernetes_validate = pytest.importorskip("kubernetes_validate")

BASE = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
CLUSTER_SCOPED = {"Namespace"}
# The oldest and newest Kubernetes whose schemas kubernetes-validate ships.
K8S_VERSIONS = (kubernetes_validate.utils.all_versions()[0], kubernetes_validate.utils.latest_version())

Obj = dict[str, Any]


def render(base: Path) -> list[Obj]:
    """What `kubectl kustomize` prints for this base: its resources, with the namespace set.

    Only the fields the base uses are implemented; any other field fails, so that the
    rendering here stays exact.
    """
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    extra = set(kustomization) - {"apiVersion", "kind", "namespace", "resources"}
    assert not extra, f"render() does not implement kustomization fields {extra}"
    namespace = kustomization.get("namespace")
    objects = []
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((base / resource).read_text()):
            if doc is None:
                continue
            if namespace and doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
            objects.append(doc)
    return objects


def key(obj: Obj) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str, str], Obj]:
    rendered = render(BASE)
    by_key = {key(o): o for o in rendered}
    assert len(by_key) == len(rendered), "two objects share a kind, namespace and name"
    return by_key


def one(objects: dict[tuple[str, str, str], Obj], kind: str, name: str) -> Obj:
    return objects[kind, "" if kind in CLUSTER_SCOPED else "shardcache", name]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates_against_the_schemas(objects: dict[tuple[str, str, str], Obj], version: str) -> None:
    for obj in objects.values():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{key(obj)} is invalid for Kubernetes {version}: {exc.message} at {list(exc.path)}")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_renders_the_same(objects: dict[tuple[str, str, str], Obj]) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(BASE)], capture_output=True, text=True, timeout=60, check=True)
    from_kubectl = {key(o): o for o in yaml.safe_load_all(out.stdout) if o}
    assert from_kubectl == objects


def test_contents(objects: dict[tuple[str, str, str], Obj]) -> None:
    kinds = sorted(k for k, _, _ in objects)
    assert kinds == sorted([
        "Namespace", "Secret", "ConfigMap", "Service", "Service", "StatefulSet", "PodDisruptionBudget", "Job",
        "ServiceAccount", "Role", "RoleBinding",
    ])


def test_statefulset_is_six_spread_nodes_with_limits(objects: dict[tuple[str, str, str], Obj]) -> None:
    sts = one(objects, "StatefulSet", "shardcache-redis")
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    assert spec["replicas"] == 6
    assert spec["serviceName"] == "shardcache-redis-headless"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= labels.items()
    config_maps = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    assert config_maps == {"shardcache-redis-config"}


def test_every_container_has_requests_and_limits(objects: dict[tuple[str, str, str], Obj]) -> None:
    for kind, name in (("StatefulSet", "shardcache-redis"), ("Job", "shardcache-redis-bootstrap")):
        for container in one(objects, kind, name)["spec"]["template"]["spec"]["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), (name, container["name"])
            assert {"cpu", "memory"} <= resources["limits"].keys(), (name, container["name"])


def test_services_and_pdb_select_the_pods(objects: dict[tuple[str, str, str], Obj]) -> None:
    pod_labels = one(objects, "StatefulSet", "shardcache-redis")["spec"]["template"]["metadata"]["labels"]
    headless = one(objects, "Service", "shardcache-redis-headless")["spec"]
    client = one(objects, "Service", "shardcache-redis")["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"] is True
    for spec in (headless, client):
        assert spec["selector"].items() <= pod_labels.items()
    # Discovery takes the first port of the client Service: it must be the Redis port.
    assert client["ports"][0] == {"name": "redis", "port": 6379, "targetPort": "redis"}
    pdb = one(objects, "PodDisruptionBudget", "shardcache-redis")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()


def test_bootstrap_job_creates_three_primaries_with_a_replica_each(objects: dict[tuple[str, str, str], Obj]) -> None:
    container = one(objects, "Job", "shardcache-redis-bootstrap")["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0]
    assert "redis-cli --cluster create $nodes --cluster-replicas 1 --cluster-yes" in script
    assert "for i in 0 1 2 3 4 5" in script


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell")
def test_shell_scripts_parse(objects: dict[tuple[str, str, str], Obj]) -> None:
    for kind, name in (("StatefulSet", "shardcache-redis"), ("Job", "shardcache-redis-bootstrap")):
        script = one(objects, kind, name)["spec"]["template"]["spec"]["containers"][0]["args"][0]
        subprocess.run(["sh", "-n", "-c", script], check=True, timeout=10)


def test_password_secret_is_wired_everywhere(objects: dict[tuple[str, str, str], Obj]) -> None:
    secret = one(objects, "Secret", "shardcache-redis-auth")
    assert set(secret["stringData"]) == {"password"}
    for kind, name in (("StatefulSet", "shardcache-redis"), ("Job", "shardcache-redis-bootstrap")):
        env = one(objects, kind, name)["spec"]["template"]["spec"]["containers"][0]["env"]
        refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "secretKeyRef" in e.get("valueFrom", {})}
        assert refs == {"shardcache-redis-auth"}


def test_rbac_is_exactly_what_discovery_needs(objects: dict[tuple[str, str, str], Obj]) -> None:
    rules = one(objects, "Role", "shardcache-discovery")["rules"]
    assert rules == [
        {"apiGroups": [""], "resources": ["services"], "resourceNames": ["shardcache-redis"], "verbs": ["get"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["shardcache-redis-auth"], "verbs": ["get"]},
    ]
    binding = one(objects, "RoleBinding", "shardcache-discovery")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "shardcache-discovery"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "shardcache-client", "namespace": "shardcache"}]
    assert one(objects, "ServiceAccount", "shardcache-client")["metadata"]["name"] == "shardcache-client"
    # The errors of kube.py point at this file.
    assert kube.RBAC_HINT == "see deploy/k8s/rbac.yaml"
    assert (BASE / "rbac.yaml").exists()


def test_redis_conf_and_auth_include_are_accepted_by_redis(
    objects: dict[tuple[str, str, str], Obj], tmp_path: Path, free_ports: Callable[..., int]
) -> None:
    """Start a real server on the ConfigMap's redis.conf plus the password include the pods write."""
    conf = tmp_path / "redis.conf"
    # The pods' /data is a volume; redis applies `dir` while reading, so point it here.
    conf.write_text(one(objects, "ConfigMap", "shardcache-redis-config")["data"]["redis.conf"]
                    .replace(" /data", f" {tmp_path}"))
    script = one(objects, "StatefulSet", "shardcache-redis")["spec"]["template"]["spec"]["containers"][0]["args"][0]
    printf = next(line.strip() for line in script.splitlines() if line.strip().startswith("printf "))
    auth = tmp_path / "auth.conf"
    password = "Pw-for-the-test.0"
    subprocess.run(["sh", "-c", printf.replace("/run/redis/auth.conf", str(auth))], check=True, timeout=10,
                   env={"REDIS_PASSWORD": password, "PATH": "/usr/bin:/bin"})
    port = free_ports(1, 21000, 22767)
    proc = subprocess.Popen(
        [find_server_binary(), str(conf), "--include", str(auth), "--port", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, "redis-server refused the configuration"
                assert time.monotonic() < deadline, "redis-server did not start within 20 s"
                time.sleep(0.05)
        client = redis.Redis(port=port, password=password)
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "volatile-lru"}
        assert int(client.config_get("maxmemory")["maxmemory"]) == 3 * 1024**3
        assert client.config_get("masterauth")["masterauth"] == password
        assert client.info("cluster")["cluster_enabled"] == 1
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, retry=Retry(NoBackoff(), 0)).ping()  # redis-py retries auth errors otherwise
    finally:
        proc.terminate()
        proc.wait(10)
