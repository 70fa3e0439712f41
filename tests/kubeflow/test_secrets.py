"""The cache's password reaches the steps only through Secrets, and appears in none of KFP's outputs or logs."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kube.fake_api import ApiServer

from shardcache.cache import parse_url
from shardcache.localcluster import LocalCluster

from .conftest import SHARD_SIZE

pytestmark = pytest.mark.slow

PASSWORD = "pw" + uuid.uuid4().hex
NS = "ml"


@pytest.fixture
def api_server() -> Iterator[ApiServer]:
    server = ApiServer()
    yield server
    server.close()


def test_password_from_secrets_never_reaches_kfp_outputs(
    kfp_local: Path,
    preinstalled: Any,
    cluster_factory: Callable[..., LocalCluster],
    api_server: ApiServer,
    train_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    server = cluster_factory(masters=1, replicas=0, cluster=False, password=PASSWORD)
    seeds = parse_url(server.url).seeds
    api_server.add_service("shardcache-redis", NS, nodes=list(seeds))
    api_server.add_secret("shardcache-redis-auth", NS, {"password": PASSWORD})
    # The steps are subprocesses: they find the API server through the environment, as a laptop would.
    monkeypatch.setenv("KUBECONFIG", str(api_server.kubeconfig(tmp_path / "kubeconfig", namespace=NS)))
    for name in ("KUBERNETES_SERVICE_HOST", "SHARDCACHE_REDIS_URL", "SHARDCACHE_REDIS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    dataset = f"secret-{uuid.uuid4().hex[:8]}"

    # 1. Found through the Service's EndpointSlices, the password read from the Secret by the API.
    prefetch = preinstalled.prefetch_op(source=str(train_data), dataset=dataset, k8s_service="shardcache-redis",
                                        k8s_secret="shardcache-redis-auth", shard_size=SHARD_SIZE)
    version = prefetch.outputs["Output"]

    # 2. A plain URL, the password mounted from the Secret as SHARDCACHE_REDIS_PASSWORD (use_secret_as_env).
    monkeypatch.setenv("SHARDCACHE_REDIS_PASSWORD", PASSWORD)
    host, port = seeds[0]
    status = preinstalled.cache_status_op(dataset=dataset, redis_url=f"redis://{host}:{port}")
    assert (status.outputs["version"], status.outputs["intact"]) == (version, True)

    leaks = [str(p) for root in (kfp_local, tmp_path / "kfp-workspace") if root.exists()
             for p in root.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]
    assert leaks == []
    out, err = capfd.readouterr()
    assert "shardcache-redis-auth" in out + err  # the logs were captured: the step's inputs are there
    assert PASSWORD not in out + err
