"""What a cluster's nodes report: ``LocalCluster.nodes`` and ``LocalCluster.status()``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from .client import NodeClients
from .process import Node
from .topology import parse_info

__all__ = ["NodeInfo", "NodeStatus", "ClusterStatus", "node_status"]

logger = logging.getLogger(__name__)


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


def node_status(node: Node, clients: NodeClients, *, cluster: bool) -> NodeStatus:
    """Ask one node for its role, used memory and (in a cluster) cluster state; a stalled node is not asked."""
    alive = node.alive()
    used: int | None = None
    state: str | None = None
    if alive and not node.stalled:
        try:
            with clients.open(node.port) as r:
                info = r.info()
                used = int(info["used_memory"])
                node.role = "primary" if info["role"] == "master" else "replica"
                if cluster:
                    state = parse_info(r.execute_command("CLUSTER", "INFO")).get("cluster_state")
        except redis.RedisError as e:
            logger.debug("node %d did not answer: %s", node.port, e)
    return NodeStatus(node.port, node.pid, alive, node.role, used, state)
