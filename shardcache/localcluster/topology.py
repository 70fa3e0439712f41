"""Forming the cluster (slots, MEET, REPLICATE) and waiting until it is healthy.

Every check here is a *problem* function: it returns ``(port, reason)`` for the first thing
that is not yet right, or None; ``wait`` polls one until it is None or a deadline passes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import redis

from ..errors import CacheUnavailable
from .client import NodeClients
from .ports import host_port
from .process import POLL_S, Node, check_started_alive

__all__ = [
    "SLOTS",
    "NodeLine",
    "parse_info",
    "parse_cluster_nodes",
    "live_nodes",
    "wait",
    "wait_answering",
    "form_cluster",
    "health_problem",
    "refresh_roles",
    "primary_for_slot",
]

logger = logging.getLogger(__name__)

SLOTS = 16384

Problem = Callable[[], tuple[int, str] | None]


@dataclass(frozen=True)
class NodeLine:
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


def parse_info(text: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def parse_cluster_nodes(text: str) -> list[NodeLine]:
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
        lines.append(NodeLine(port=port, flags=frozenset(fields[2].split(",")), slots=tuple(slots)))
    return lines


def live_nodes(nodes: Sequence[Node]) -> list[Node]:
    """The nodes that run and are not stalled."""
    return [n for n in nodes if not n.stalled and n.alive()]


def wait(problem: Problem, deadline: float, what: str, *, host: str) -> None:
    """Poll ``problem`` until it finds none; raise CacheUnavailable naming the last one at ``deadline``."""
    began = time.monotonic()
    while True:
        found = problem()
        if found is None:
            return
        if time.monotonic() >= deadline:
            waited = time.monotonic() - began
            raise CacheUnavailable(
                f"{what} within {waited:.1f}s: {found[1]}", node=host_port(host, found[0]), waited=waited
            )
        time.sleep(POLL_S)


def wait_answering(node: Node, clients: NodeClients, deadline: float) -> None:
    """Wait until ``node`` answers PING; raise its exit error if it exits meanwhile."""
    while True:
        if not node.alive():
            raise node.exited_error()
        try:
            with clients.open(node.port) as r:
                r.ping()
            return
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as e:
            if time.monotonic() >= deadline:
                raise CacheUnavailable(
                    f"the server on port {node.port} did not answer in time ({e}); last lines of its log:\n"
                    f"{node.log_tail()}",
                    node=host_port(clients.host, node.port),
                ) from e
        time.sleep(POLL_S)


def form_cluster(nodes: Sequence[Node], *, masters: int, clients: NodeClients, deadline: float) -> None:
    """Give the first ``masters`` nodes a share of the slots each, MEET all, make the rest replicas."""
    primaries = nodes[:masters]
    for i, node in enumerate(primaries):
        lo, hi = i * SLOTS // masters, (i + 1) * SLOTS // masters - 1
        with clients.open(node.port) as r:
            try:
                r.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
            except redis.ResponseError as e:
                if "unknown subcommand" not in str(e).lower():
                    raise
                r.execute_command("CLUSTER", "ADDSLOTS", *range(lo, hi + 1))  # Redis 6
    ids: dict[int, str] = {}
    with clients.open(nodes[0].port) as first:
        for node in nodes[1:]:
            first.execute_command("CLUSTER", "MEET", clients.host, node.port)
    for node in nodes:
        with clients.open(node.port) as r:
            ids[node.port] = r.execute_command("CLUSTER", "MYID")
    wait(partial(_meet_problem, nodes, clients), deadline, "the nodes did not meet", host=clients.host)
    for k, node in enumerate(nodes[masters:]):
        target = primaries[k % masters]
        replicate = partial(_replicate, node, ids[target.port], nodes, clients)
        wait(replicate, deadline, "replication failed", host=clients.host)


def _meet_problem(nodes: Sequence[Node], clients: NodeClients) -> tuple[int, str] | None:
    check_started_alive(nodes)
    for node in nodes:
        with clients.open(node.port) as r:
            known = parse_info(r.execute_command("CLUSTER", "INFO")).get("cluster_known_nodes")
        if known != str(len(nodes)):
            return node.port, f"node {node.port} knows {known} of {len(nodes)} nodes"
    return None


def _replicate(node: Node, primary_id: str, nodes: Sequence[Node], clients: NodeClients) -> tuple[int, str] | None:
    check_started_alive(nodes)
    try:
        with clients.open(node.port) as r:
            r.execute_command("CLUSTER", "REPLICATE", primary_id)
    except redis.ResponseError as e:  # gossip has not told it the primary's role yet
        return node.port, f"CLUSTER REPLICATE on {node.port}: {e}"
    node.role = "replica"
    return None


def health_problem(
    nodes: Sequence[Node],
    *,
    clients: NodeClients,
    port: int,
    cluster: bool,
    masters: int,
    replicas_per_primary: int,
    topology: bool = False,
) -> tuple[int, str] | None:
    """The first reason the cluster is not healthy, or None; ``topology`` also wants every node
    to see the full set of primaries and replicas (used while starting). ``port`` is named when
    no node runs at all."""
    if topology:
        check_started_alive(nodes)
    live = live_nodes(nodes)
    if not live:
        return port, "no node is running"
    live_ports = {n.port for n in live}
    for node in live:
        try:
            with clients.open(node.port) as r:
                if not cluster:
                    r.ping()
                    continue
                state = parse_info(r.execute_command("CLUSTER", "INFO")).get("cluster_state")
                if state != "ok":
                    return node.port, f"node {node.port} reports cluster_state:{state}"
                view = parse_cluster_nodes(r.execute_command("CLUSTER", "NODES"))
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
                    if (primaries, replicas) != (masters, masters * replicas_per_primary):
                        return node.port, f"node {node.port} sees {primaries} primaries, {replicas} replicas"
        except (redis.RedisError, StopIteration) as e:
            return node.port, f"node {node.port} did not answer: {e!r}"
    return None


def refresh_roles(nodes: Sequence[Node], clients: NodeClients) -> None:
    """Re-read each live node's role (failovers change them)."""
    for node in live_nodes(nodes):
        try:
            with clients.open(node.port) as r:
                node.role = "primary" if r.execute_command("ROLE")[0] == "master" else "replica"
        except redis.RedisError as e:
            logger.debug("node %d did not answer ROLE: %s", node.port, e)


def primary_for_slot(nodes: Sequence[Node], clients: NodeClients, slot: int) -> int | None:
    """Port of the primary that the first answering live node says serves ``slot``."""
    for node in live_nodes(nodes):
        try:
            with clients.open(node.port) as r:
                view = parse_cluster_nodes(r.execute_command("CLUSTER", "NODES"))
        except redis.RedisError:
            continue
        for line in view:
            if line.primary and any(lo <= slot <= hi for lo, hi in line.slots):
                return line.port
    return None
