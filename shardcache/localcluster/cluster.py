"""LocalCluster: a Redis Cluster of local server processes, for ``shardcache up`` and the tests.

Each node is a ``redis-server`` (or ``valkey-server``) child process in its own session,
logging to ``DIR/PORT/node.log``. ``DIR/cluster.json`` records what was started, so that
another process can find, inspect and stop exactly those servers (``from_state``).

Example:
    with LocalCluster(masters=3, replicas=1, port=7000, dir="/tmp/sc") as cluster:
        print(cluster.url)  # redis://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from redis.crc import key_slot

from ..errors import CacheUnavailable, ConfigError
from ..units import parse_size
from . import faults
from .binary import find_server_binary
from .client import NodeClients
from .config import (
    DEFAULT_HOST,
    DEFAULT_MAXMEMORY,
    DEFAULT_NODE_TIMEOUT_MS,
    DEFAULT_POLICY,
    MAXMEMORY_POLICIES,
    TLSFiles,
    node_args,
    write_secrets_conf,
)
from .ports import BUS_PORT_OFFSET, check_ports_free, host_port
from .process import Node, terminate
from .state import STATE_FILE, garbled, read_state, write_state
from .status import ClusterStatus, NodeInfo, node_status
from .topology import (
    form_cluster,
    health_problem,
    primary_for_slot,
    refresh_roles,
    wait,
    wait_answering,
)

__all__ = ["LocalCluster"]

logger = logging.getLogger(__name__)


class LocalCluster:
    """A Redis Cluster (or, with ``cluster=False``, one standalone server) on this machine.

    Ports ``port .. port + masters*(1+replicas) - 1`` are used, the first ``masters`` of them
    by primaries; each cluster node also listens on its bus port, ``port + 10000``.
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 1,
        port: int = 7000,
        host: str = DEFAULT_HOST,
        maxmemory: int | str = DEFAULT_MAXMEMORY,
        maxmemory_policy: str = DEFAULT_POLICY,
        dir: str | os.PathLike[str] = ".shardcache",
        server_bin: str | None = None,
        password: str | None = None,
        tls: TLSFiles | None = None,
        cluster: bool = True,
        node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS,
    ) -> None:
        _check_int("masters", masters, minimum=1)
        _check_int("replicas", replicas, minimum=0)
        _check_int("port", port, minimum=1)
        _check_int("node_timeout_ms", node_timeout_ms, minimum=100)
        if not cluster and (masters, replicas) != (1, 0):
            raise ConfigError(
                f"cluster=False runs one standalone server, but masters={masters}, replicas={replicas}; "
                "pass masters=1, replicas=0"
            )
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"host={host!r} is not an IP address; give one such as '127.0.0.1'") from None
        if address.is_unspecified:
            raise ConfigError(f"host={host!r} cannot be announced to other nodes; give a concrete address")
        if maxmemory_policy not in MAXMEMORY_POLICIES:
            raise ConfigError(f"maxmemory_policy={maxmemory_policy!r} is unknown; use one of {MAXMEMORY_POLICIES}")
        if password is not None and (not isinstance(password, str) or not password):
            raise ConfigError("password must be a non-empty string or None")
        count = masters * (1 + replicas) if cluster else 1
        last = port + count - 1
        if cluster and last + BUS_PORT_OFFSET > 65535:
            raise ConfigError(
                f"port={port} with {count} nodes needs cluster bus port {last + BUS_PORT_OFFSET}, above 65535; "
                f"pick port <= {65535 - BUS_PORT_OFFSET - count + 1}"
            )
        if last > 65535:
            raise ConfigError(f"port={port} with {count} nodes needs port {last}, above 65535; pick a lower port")
        self.masters = masters
        self.replicas_per_primary = replicas
        self.port = port
        self.host = host
        self.maxmemory = parse_size(maxmemory, name="maxmemory")
        self.maxmemory_policy = maxmemory_policy
        self.dir = Path(dir).absolute()
        self.server_bin = server_bin
        self.tls = tls
        self.cluster = cluster
        self.node_timeout_ms = node_timeout_ms
        self._password = password
        self._clients = NodeClients(host=host, password=password, tls=tls)
        self._nodes: list[Node] = []

    # -- description ------------------------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        """Every node's port, primaries first."""
        count = self.masters * (1 + self.replicas_per_primary) if self.cluster else 1
        return list(range(self.port, self.port + count))

    @property
    def url(self) -> str:
        """Seed URL listing the primaries, with the password when there is one."""
        return self._url(None if self._password is None else quote(self._password, safe=""))

    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE

    def _url(self, secret: str | None) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = "" if secret is None else f":{secret}@"
        seeds = ",".join(host_port(self.host, p) for p in self.ports[: self.masters])
        return f"{scheme}://{auth}{seeds}"

    def __repr__(self) -> str:
        redacted = self._url(None if self._password is None else "***")
        return (
            f"LocalCluster(url={redacted!r}, masters={self.masters}, replicas={self.replicas_per_primary}, "
            f"cluster={self.cluster}, dir={str(self.dir)!r}, running={bool(self._nodes)})"
        )

    __str__ = __repr__

    @property
    def nodes(self) -> list[NodeInfo]:
        """The nodes this object manages, with roles as last observed."""
        return [NodeInfo(n.port, n.pid, n.role) for n in self._nodes]

    def primaries(self) -> list[NodeInfo]:
        """Nodes that are primaries now (roles are re-read from live nodes)."""
        refresh_roles(self._nodes, self._clients)
        return [n for n in self.nodes if n.role == "primary"]

    def replicas(self) -> list[NodeInfo]:
        """Nodes that are replicas now (roles are re-read from live nodes)."""
        refresh_roles(self._nodes, self._clients)
        return [n for n in self.nodes if n.role == "replica"]

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, *, timeout: float = 30.0) -> str:
        """Start the servers, form the cluster, wait until it serves every slot; return ``url``."""
        if self._nodes:
            raise ConfigError(f"{self!r} is already started; call stop() first")
        began = time.monotonic()
        deadline = began + timeout
        binary = find_server_binary(server_bin=self.server_bin)
        if self.tls is not None:
            self.tls.check()
        self._refuse_running_state()
        check_ports_free(self.ports, host=self.host, cluster=self.cluster)
        self.dir.mkdir(parents=True, exist_ok=True)
        # The state file may hold the password: keep the folder out of version control.
        (self.dir / ".gitignore").write_text("*\n")
        try:
            for i, port in enumerate(self.ports):
                node_dir = self.dir / str(port)
                node_dir.mkdir(exist_ok=True)
                for stale in ("nodes.conf", "dump.rdb"):
                    (node_dir / stale).unlink(missing_ok=True)
                args = [binary, *write_secrets_conf(node_dir, self._password), *self._node_args(port)]
                node = Node(port=port, role="primary" if i < self.masters else "replica", args=args, dir=node_dir)
                self._nodes.append(node)
                node.spawn()
            self._write_state()
            for node in self._nodes:
                wait_answering(node, self._clients, deadline)
            if self.cluster:
                form_cluster(self._nodes, masters=self.masters, clients=self._clients, deadline=deadline)
            self._wait(lambda: self._health_problem(topology=True), deadline, "the cluster did not become ready")
            self._write_state()  # roles may have changed while forming
        except BaseException:
            self.stop()
            raise
        logger.info("started %s in %.1fs", self, time.monotonic() - began)
        return self.url

    def stop(self) -> None:
        """Stop exactly the servers this cluster started (SIGTERM, then SIGKILL); remove the state file."""
        nodes = [n for n in self._nodes if n.pid]
        terminate(nodes)
        if self._nodes:  # an object that never started must not delete another one's state
            self.state_file.unlink(missing_ok=True)
        self._nodes = []
        if nodes:
            logger.info("stopped %s", self)

    def __enter__(self) -> LocalCluster:
        if not self._nodes:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @classmethod
    def from_state(cls, dir: str | os.PathLike[str]) -> LocalCluster:
        """Attach to the cluster whose state file is in ``dir`` (started by another process)."""
        recorded = read_state(dir)
        try:
            cluster = cls(**recorded.options)
        except (KeyError, TypeError) as e:
            raise garbled(recorded.path, e) from e
        cluster._nodes = recorded.nodes
        return cluster

    # -- health -----------------------------------------------------------------------------

    def status(self) -> ClusterStatus:
        """Per node: pid, whether it runs, its role, used memory and cluster state."""
        nodes = tuple(node_status(n, self._clients, cluster=self.cluster) for n in self._nodes)
        return ClusterStatus(cluster=self.cluster, nodes=nodes)

    def wait_healthy(self, *, timeout: float = 30) -> None:
        """Wait until every live node reports ``cluster_state:ok``, each slot's owner is live, and
        live replicas report ``master_link_status:up``; raise CacheUnavailable after ``timeout``."""
        self._wait(self._health_problem, time.monotonic() + timeout, "the cluster is not healthy")

    def primary_for_key(self, key: bytes | str) -> int:
        """Port of the primary that live nodes say serves ``key``'s slot."""
        if not self.cluster:
            return self.port
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        port = primary_for_slot(self._nodes, self._clients, slot)
        if port is None:
            raise CacheUnavailable(
                f"no live node of {self!r} knows a primary for slot {slot}", node=host_port(self.host, self.port)
            )
        return port

    # -- fault injection --------------------------------------------------------------------

    def kill_node(self, port: int, *, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the node on ``port``; for SIGKILL/SIGTERM, wait until it has exited."""
        faults.kill(self._node(port), sig)

    def stall_node(self, port: int) -> None:
        """Freeze the node (SIGSTOP): it keeps its sockets but answers nothing."""
        faults.stall(self._node(port))

    def resume_node(self, port: int) -> None:
        """Undo ``stall_node`` (SIGCONT)."""
        faults.resume(self._node(port))

    def restart_node(self, port: int, *, empty: bool = True, timeout: float = 30) -> None:
        """Restart the node on ``port`` with its nodes.conf, so it rejoins; wait until healthy.

        ``empty=True`` starts without data; ``empty=False`` saves a running node's data first
        and loads it back (a node that was killed has nothing to load).
        """
        node = self._node(port)
        deadline = time.monotonic() + timeout
        faults.respawn(node, self._clients, empty=empty)
        self._write_state()
        wait_answering(node, self._clients, deadline)
        self._wait(self._health_problem, deadline, f"node {port} did not rejoin")

    # -- internals --------------------------------------------------------------------------

    def _node_args(self, port: int) -> list[str]:
        return node_args(
            port=port,
            node_dir=self.dir / str(port),
            host=self.host,
            maxmemory=self.maxmemory,
            maxmemory_policy=self.maxmemory_policy,
            cluster=self.cluster,
            node_timeout_ms=self.node_timeout_ms,
            tls=self.tls,
        )

    def _node(self, port: int) -> Node:
        for node in self._nodes:
            if node.port == port:
                return node
        raise ConfigError(f"port={port} is not a node of {self!r}; use one of {[n.port for n in self._nodes]}")

    def _refuse_running_state(self) -> None:
        if not self.state_file.exists():
            return
        try:
            previous = LocalCluster.from_state(self.dir)
        except ConfigError as e:
            raise ConfigError(f"{e}; or use another dir") from e
        running = [n.port for n in previous._nodes if n.alive()]
        if running:
            raise ConfigError(
                f"a cluster recorded in {self.state_file} still runs on ports {running}; stop it with "
                f"`shardcache down --dir {self.dir}` or use another dir"
            )
        logger.info("replacing stale state file %s", self.state_file)

    def _health_problem(self, *, topology: bool = False) -> tuple[int, str] | None:
        return health_problem(
            self._nodes,
            clients=self._clients,
            port=self.port,
            cluster=self.cluster,
            masters=self.masters,
            replicas_per_primary=self.replicas_per_primary,
            topology=topology,
        )

    def _wait(self, problem: Callable[[], tuple[int, str] | None], deadline: float, what: str) -> None:
        wait(problem, deadline, what, host=self.host)

    def _write_state(self) -> None:
        options = {
            "host": self.host,
            "port": self.port,
            "masters": self.masters,
            "replicas": self.replicas_per_primary,
            "cluster": self.cluster,
            "maxmemory": self.maxmemory,
            "maxmemory_policy": self.maxmemory_policy,
            "node_timeout_ms": self.node_timeout_ms,
            "server_bin": self._nodes[0].args[0] if self._nodes else self.server_bin,
            "password": self._password,
            "tls": self.tls,
        }
        write_state(self.dir, options=options, nodes=self._nodes)


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")
