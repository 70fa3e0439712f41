"""docker-compose.yml must describe the cluster that `shardcache up` starts.

There is no Docker engine on our machines, so the compose file cannot be run in CI;
this test reads it and compares it with LocalCluster's topology and with node_args(),
so that it cannot drift unseen.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from shardcache.localcluster import LocalCluster, node_args

yaml = pytest.importorskip("yaml")

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"
# Flags that only make sense inside Docker: listen on the container's interfaces and
# announce the address that clients outside Docker reach.
DOCKER_ONLY = {"--bind", "--cluster-announce-ip", "--cluster-announce-port", "--cluster-announce-bus-port"}
ANNOUNCED_HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    assert isinstance(doc.get("services"), dict)
    return doc


def argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def flags(args: list[str]) -> dict[str, str]:
    """``--flag value`` pairs; every flag of node_args() takes exactly one value."""
    assert len(args) % 2 == 0, args
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert all(k.startswith("--") for k in pairs), pairs
    assert len(pairs) == len(args) // 2, "a flag is given twice"
    return pairs


def nodes(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if argv(svc)[0] == "redis-server"}


def port_of(service: dict[str, Any]) -> int:
    return int(flags(argv(service)[1:])["--port"])


def test_topology_matches_the_local_cluster(compose: dict[str, Any]) -> None:
    local = LocalCluster()  # the defaults of `shardcache up`: 3 primaries, 1 replica each, from port 7000
    found = nodes(compose)
    assert sorted(port_of(s) for s in found.values()) == local.ports
    creator = [argv(s) for s in compose["services"].values() if "--cluster create" in " ".join(argv(s))]
    assert len(creator) == 1, "exactly one one-shot service creates the cluster"
    script = creator[0][-1]
    create = shlex.split(script[script.index("redis-cli --cluster create"):])
    addresses = [a for a in create if a.startswith(f"{ANNOUNCED_HOST}:")]
    assert addresses == [f"{ANNOUNCED_HOST}:{p}" for p in local.ports]
    assert create[create.index("--cluster-replicas") + 1] == str(local.replicas_per_primary)
    assert "--cluster-yes" in create


def test_server_flags_match_node_args(compose: dict[str, Any]) -> None:
    for name, service in nodes(compose).items():
        port = port_of(service)
        got = flags(argv(service)[1:])
        want = flags(node_args(port=port, node_dir="/data"))
        assert {k: v for k, v in got.items() if k not in DOCKER_ONLY} == {
            k: v for k, v in want.items() if k not in DOCKER_ONLY
        }, name
        assert got["--bind"] == "0.0.0.0"  # Docker's port forwarding arrives on the container's interface
        assert got["--cluster-announce-ip"] == ANNOUNCED_HOST
        assert got["--cluster-announce-port"] == str(port)
        assert got["--cluster-announce-bus-port"] == str(port + 10000)


def test_nodes_are_reachable_from_outside_docker(compose: dict[str, Any]) -> None:
    found = nodes(compose)
    ports = sorted(port_of(s) for s in found.values())
    publishers = [s for s in found.values() if "ports" in s]
    assert len(publishers) == 1
    published = set(publishers[0]["ports"])
    for port in ports:
        assert f"{ANNOUNCED_HOST}:{port}:{port}" in published
        assert f"{ANNOUNCED_HOST}:{port + 10000}:{port + 10000}" in published
    # The others share the publisher's network namespace, so 127.0.0.1 is the same place for all.
    owner = next(n for n, s in found.items() if "ports" in s)
    for name, service in found.items():
        if name != owner:
            assert service["network_mode"] == f"service:{owner}"
    creator = next(s for s in compose["services"].values() if s not in found.values())
    assert creator["network_mode"] == f"service:{owner}"
    assert set(creator["depends_on"]) == set(found)
    assert all(v == {"condition": "service_healthy"} for v in creator["depends_on"].values())


def test_images_are_official(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service["image"]
        assert image == "redis:7.2" or image.startswith("valkey/valkey:"), (name, image)


def test_health_checks_ask_each_node(compose: dict[str, Any]) -> None:
    for service in nodes(compose).values():
        assert service["healthcheck"]["test"] == ["CMD", "redis-cli", "-p", str(port_of(service)), "ping"]
