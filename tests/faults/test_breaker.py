"""NodeBreaker: after one call to a node used up its retry deadline, calls to that node fail at
once for a cooldown, then one probes; other nodes are never blocked."""

from __future__ import annotations

import pytest

from shardcache.cache.breaker import NodeBreaker
from shardcache.errors import CacheUnavailable

NODE = "10.0.0.5:7000"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_tripped_node_fails_fast_until_the_cooldown_then_one_caller_probes() -> None:
    clock = Clock()
    breaker = NodeBreaker(cooldown=10.0, clock=clock)
    breaker.check(NODE, what="GET k")  # closed: let through
    breaker.trip(NODE)
    with pytest.raises(CacheUnavailable, match=r"GET k: Redis node 10\.0\.0\.5:7000 .* another 10\.0s") as caught:
        breaker.check(NODE, what="GET k")
    assert caught.value.node == NODE
    breaker.check("10.0.0.6:7001", what="GET k")  # another node (e.g. the promoted replica)
    breaker.check(None, what="GET k")  # unknown node: nothing to judge by

    clock.now += 10.0
    breaker.check(NODE, what="GET k")  # the probe goes through...
    with pytest.raises(CacheUnavailable):
        breaker.check(NODE, what="GET k")  # ...while the others keep failing fast
    breaker.reset(NODE)  # the probe succeeded
    breaker.check(NODE, what="GET k")


def test_a_failed_probe_opens_the_breaker_again() -> None:
    clock = Clock()
    breaker = NodeBreaker(cooldown=5.0, clock=clock)
    breaker.trip(NODE)
    clock.now += 6.0
    breaker.check(NODE, what="GET k")
    breaker.trip(NODE)  # the probe used up its deadline too
    clock.now += 4.0
    with pytest.raises(CacheUnavailable):
        breaker.check(NODE, what="GET k")
