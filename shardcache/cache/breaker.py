"""Fail fast on a Redis node that has just used up a whole retry deadline (a circuit breaker).

Without it every shard on a dead or stalled node costs a full retry deadline (20 s by
default) before the loader reads it through from the source: a node holding 300 shards
would stall a training job for well over an hour. Once one call to a node gives up,
calls routed to the same node fail at once with :class:`CacheUnavailable` for
``cooldown`` seconds. After that one call may try again (the others keep failing fast
while it does); its success closes the breaker, its failure opens it for another
``cooldown``. A failover moves the slots to another node, which the breaker does not block.

>>> breaker = NodeBreaker(cooldown=10.0, clock=lambda: 0.0)
>>> breaker.trip("10.0.0.5:7000")
>>> breaker.check("10.0.0.6:7001", what="GET k")   # another node: let through
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..errors import CacheUnavailable

__all__ = ["NodeBreaker"]


class NodeBreaker:
    """Per node (``host:port``): the time until which calls to it fail at once."""

    def __init__(self, *, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown = cooldown
        self._clock = clock
        self._open: dict[str, float] = {}
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked child, a new lock: the parent's may have been held by one of its threads."""
        self._lock = threading.Lock()

    @property
    def tripped(self) -> bool:
        """Whether any node's breaker is open (lets a hot path skip the per-node lookup)."""
        return bool(self._open)

    def check(self, node: str | None, *, what: str) -> None:
        """Raise CacheUnavailable if ``node`` is open; let one caller through once the cooldown passed."""
        if node is None or node not in self._open:  # unlocked fast path: the usual case
            return
        with self._lock:
            until = self._open.get(node)
            if until is None:
                return
            now = self._clock()
            if now >= until:
                self._open[node] = now + self.cooldown  # this caller probes; the others keep failing fast
                return
        raise CacheUnavailable(
            f"{what}: Redis node {node} did not answer within the retry deadline moments ago; not waiting "
            f"for it again for another {until - now:.1f}s (readers rebuild its shards from the source "
            "meanwhile); check the node with `shardcache status`",
            node=node,
        )

    def trip(self, node: str | None) -> None:
        """``node`` used up a retry deadline: fail calls to it for ``cooldown`` seconds."""
        if node is not None:
            with self._lock:
                self._open[node] = self._clock() + self.cooldown

    def reset(self, node: str | None) -> None:
        """A call to ``node`` succeeded: close its breaker."""
        if node is not None and node in self._open:
            with self._lock:
                self._open.pop(node, None)
