"""A Redis Cluster of local server processes: ``shardcache up/down/status`` and the test fixture."""

from .cluster import (
    DEFAULT_POLICY,
    MAXMEMORY_POLICIES,
    SERVER_BIN_ENV,
    ClusterStatus,
    LocalCluster,
    NodeInfo,
    NodeStatus,
    TLSFiles,
    bundled_server_binary,
    find_server_binary,
    node_args,
    port_free,
)

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
