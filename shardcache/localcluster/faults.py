"""Fault injection for the tests: kill, stall, resume and restart one node.

``LocalCluster.kill_node``/``stall_node``/``resume_node``/``restart_node`` are the public
front; these functions act on one node and leave waiting for the cluster to the caller.
"""

from __future__ import annotations

import signal

from .client import NodeClients
from .process import Node, terminate

__all__ = ["kill", "stall", "resume", "respawn"]


def kill(node: Node, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``node``; for SIGKILL/SIGTERM, wait until it has exited."""
    if sig in (signal.SIGKILL, signal.SIGTERM):
        terminate([node], first=sig)
        node.stalled = False
    else:
        node.signal(sig)


def stall(node: Node) -> None:
    """Freeze ``node`` (SIGSTOP): it keeps its sockets but answers nothing."""
    node.signal(signal.SIGSTOP)
    node.stalled = True


def resume(node: Node) -> None:
    """Undo ``stall`` (SIGCONT)."""
    node.signal(signal.SIGCONT)
    node.stalled = False


def respawn(node: Node, clients: NodeClients, *, empty: bool) -> None:
    """Stop ``node`` if it runs and start it again with its nodes.conf, so that it rejoins.

    ``empty=True`` starts without data; ``empty=False`` saves a running node's data first
    and loads it back (a node that was killed has nothing to load).
    """
    if node.alive():
        if not empty and not node.stalled:
            with clients.open(node.port) as r:
                r.save()
        terminate([node])
    node.stalled = False
    if empty:
        # A replica's full sync leaves an RDB behind that would otherwise be loaded.
        (node.dir / "dump.rdb").unlink(missing_ok=True)
    node.spawn()
