"""Shared fixtures: real Redis servers started for the tests.

- ``redis_url`` (session): a 3+3 Redis Cluster, or ``$SHARDCACHE_TEST_REDIS_URL`` when set.
- ``standalone_url`` (session): one standalone server.
- ``cluster_factory`` (function): dedicated clusters that a test may kill, stall and restart.
- ``free_ports`` (session): the ``free_port_block`` helper, for tests in any folder.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shardcache.errors import CacheUnavailable, ConfigError
from shardcache.localcluster import LocalCluster, port_free

# Every port a test listens on, bus ports (port + 10000) included, lies below the kernel's ephemeral
# range (net.ipv4.ip_local_port_range, 32768 up by default): a port checked free cannot be taken by an
# outbound connection before its server binds it. Single ports without a bus: 23000-29999.
SESSION_PORTS = (20000, 20999)  # bus 30000-30999
FACTORY_PORTS = (21000, 22767)  # bus 31000-32767
BUS_PORT_OFFSET = 10000
START_TIMEOUT_S = 60.0  # two cores shared with other test sessions


def free_port_block(n: int, lo: int, hi: int, *, bus: bool = True, host: str = "127.0.0.1") -> int:
    """First port of ``n`` consecutive free ports within ``[lo, hi]``, their bus ports free too.

    Blocks are tried in random order so that concurrent test sessions rarely pick the same one.
    """
    bases = list(range(lo, hi - n + 2, n))
    random.shuffle(bases)
    for base in bases:
        ports = range(base, base + n)
        wanted = [*ports, *(p + BUS_PORT_OFFSET for p in ports)] if bus else list(ports)
        if all(port_free(p, host=host) for p in wanted):
            return base
    raise RuntimeError(f"no {n} free consecutive ports in {lo}-{hi}")


def start_on_free_ports(
    port_range: tuple[int, int], make: Callable[[int], LocalCluster], *, n: int, bus: bool, attempts: int = 5
) -> LocalCluster:
    """Start ``make(base)`` (``n`` nodes) on a free block, trying another if another process grabs it first."""
    for attempt in range(attempts):
        base = free_port_block(n, *port_range, bus=bus)
        cluster = make(base)
        try:
            cluster.start(timeout=START_TIMEOUT_S)
        except (ConfigError, CacheUnavailable) as e:
            if "in use" not in str(e) or attempt == attempts - 1:
                raise
            continue
        return cluster
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def free_ports() -> Callable[..., int]:
    """``free_port_block(n, lo, hi, *, bus=True)`` for tests that pick ports themselves."""
    return free_port_block


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a 3 primary + 3 replica cluster shared by the whole session."""
    url = os.environ.get("SHARDCACHE_TEST_REDIS_URL")
    if url:
        yield url
        return
    root = tmp_path_factory.mktemp("session-cluster")
    cluster = start_on_free_ports(
        SESSION_PORTS,
        lambda base: LocalCluster(masters=3, replicas=1, port=base, dir=root, maxmemory="2gb"),
        n=6,
        bus=True,
    )
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def standalone_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of one standalone server shared by the whole session."""
    root = tmp_path_factory.mktemp("session-standalone")
    server = start_on_free_ports(
        SESSION_PORTS,
        lambda base: LocalCluster(masters=1, replicas=0, cluster=False, port=base, dir=root, maxmemory="1gb"),
        n=1,
        bus=False,
    )
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """``make(*, port_range=FACTORY_PORTS, **LocalCluster kwargs)`` starts a dedicated cluster;
    all are stopped at teardown. With ``port=`` given, that port is used as is."""
    started: list[LocalCluster] = []

    def make(*, port_range: tuple[int, int] = FACTORY_PORTS, **kwargs: Any) -> LocalCluster:
        kwargs.setdefault("dir", tmp_path / f"cluster-{len(started)}")
        if "port" in kwargs:
            cluster = LocalCluster(**kwargs)
            started.append(cluster)
            cluster.start(timeout=START_TIMEOUT_S)
            return cluster

        def build(base: int) -> LocalCluster:
            cluster = LocalCluster(port=base, **kwargs)
            started.append(cluster)
            return cluster

        shape = LocalCluster(port=port_range[0], **kwargs)
        return start_on_free_ports(port_range, build, n=len(shape.ports), bus=shape.cluster)

    yield make
    for cluster in started:
        cluster.stop()
