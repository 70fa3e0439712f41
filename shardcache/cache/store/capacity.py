"""Memory of the primaries (``INFO memory``), and the CapacityExceeded that names a full node."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.exceptions as rex

from ...errors import AccessDenied, CapacityExceeded, ShardCacheError
from ...units import format_bytes

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Capacity", "NodeMemory", "capacity", "capacity_error", "max_value_bytes"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeMemory:
    """Memory of one primary. ``maxmemory`` 0 means no limit was set."""

    node: str
    used: int
    maxmemory: int
    policy: str
    system: int

    @property
    def free(self) -> int:
        limit = self.maxmemory or self.system
        return max(limit - self.used, 0)


@dataclass(frozen=True)
class Capacity:
    nodes: tuple[NodeMemory, ...]

    @property
    def used(self) -> int:
        return sum(n.used for n in self.nodes)

    @property
    def maxmemory(self) -> int:
        return sum(n.maxmemory for n in self.nodes)

    @property
    def free(self) -> int:
        return sum(n.free for n in self.nodes)

    @property
    def policies(self) -> set[str]:
        return {n.policy for n in self.nodes}


def capacity(session: Session) -> Capacity:
    """Used and max memory of every primary, and the eviction policy."""
    client = session.client

    def run() -> Any:
        if session.is_cluster:
            # One call per primary: with a single primary, redis-py would return its reply unkeyed.
            primaries = client.get_primaries()  # type: ignore[union-attr]
            return {node.name: client.info("memory", target_nodes=node) for node in primaries}
        return {session.url.redacted(): client.info("memory")}

    raw = session.retry_call(run, what="INFO memory")
    nodes = []
    for node, info in sorted(raw.items()):
        nodes.append(
            NodeMemory(
                node=str(node),
                used=int(info.get("used_memory", 0)),
                maxmemory=int(info.get("maxmemory", 0)),
                policy=str(info.get("maxmemory_policy", "unknown")),
                system=int(info.get("total_system_memory", 0)),
            )
        )
    return Capacity(nodes=tuple(nodes))


def max_value_bytes(session: Session) -> int | None:
    """The largest value every primary accepts (``proto-max-bulk-len``, read with CONFIG GET); None
    when CONFIG is refused (an ACL user without ``+config|get``, a managed service) or says nothing."""
    client = session.client

    def run() -> Any:
        if session.is_cluster:
            primaries = client.get_primaries()  # type: ignore[union-attr]
            return [client.config_get("proto-max-bulk-len", target_nodes=node) for node in primaries]
        return [client.config_get("proto-max-bulk-len")]

    try:
        replies = session.retry_call(run, what="CONFIG GET proto-max-bulk-len")
    except (AccessDenied, rex.ResponseError) as exc:
        log.debug("proto-max-bulk-len unknown: %s", exc)
        return None
    values = []
    for reply in replies:
        raw = reply.get("proto-max-bulk-len") if isinstance(reply, dict) else None
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        if isinstance(text, str) and text.isascii() and text.isdigit():
            values.append(int(text))
    return min(values) if values and len(values) == len(replies) else None


def capacity_error(
    session: Session, needed: int | None, *, dataset: str | None = None, node: str | None = None
) -> CapacityExceeded:
    """The error for an OOM reply: how full the cache is, which node refused, and what to do."""
    try:
        cap = capacity(session)
        free, total = cap.free, cap.maxmemory
    except ShardCacheError:
        cap, free, total = None, None, 0
    what = f" while writing {dataset!r}" if dataset else ""
    # Keys spread by hash: one full node stops a load even when the others have room, so name it.
    full = next((n for n in cap.nodes if n.node == node), None) if cap is not None and node else None
    where = (
        f"; node {full.node} uses {format_bytes(full.used)} of its maxmemory {format_bytes(full.maxmemory)}"
        if full is not None and full.maxmemory else ""
    )
    return CapacityExceeded(
        f"Redis is out of memory{what} (OOM command not allowed under maxmemory"
        f"{' ' + format_bytes(total) if total else ''}, {format_bytes(free or 0)} free{where}); "
        "free space with `shardcache rm`, raise maxmemory, or use --allow-partial, then run again: "
        "the prefetch resumes where it stopped",
        needed=needed, available=free, node=node,
    )
