"""RetryPolicy with an injected clock: no real sleeping."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis.exceptions as rex

from shardcache.cache import RetryPolicy
from shardcache.cache.retry import is_transient
from shardcache.errors import AccessDenied, CacheUnavailable, ConfigError


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def policy(clock: FakeClock, **kwargs: float) -> RetryPolicy:
    return RetryPolicy(sleep=clock.sleep, clock=clock, **kwargs)


def failing(times: int, exc: Callable[[], BaseException], value: str = "ok") -> Callable[[], str]:
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise exc()
        return value

    return fn


def test_rides_through_transient_errors() -> None:
    clock = FakeClock()
    retried: list[BaseException] = []
    waited: list[float] = []
    fn = failing(5, lambda: rex.ConnectionError("Error 111 connecting"))
    assert policy(clock).call(fn, on_retry=retried.append, on_wait=waited.append) == "ok"
    assert len(retried) == 5
    assert waited == clock.sleeps
    # Exponential backoff with jitter, capped.
    assert all(0 < s <= 1.0 for s in clock.sleeps)


def test_gives_up_at_the_deadline_naming_node_and_time() -> None:
    clock = FakeClock()
    fn = failing(10**6, lambda: rex.TimeoutError("Timeout reading from socket"))
    with pytest.raises(CacheUnavailable, match=r"node 10.0.0.1:7000 did not answer for 5.0s") as info:
        policy(clock, deadline=5.0).call(fn, what="GET k", node=lambda: "10.0.0.1:7000")
    assert info.value.node == "10.0.0.1:7000"
    assert 5.0 <= info.value.waited < 5.0 + 1e-6  # the last wait is trimmed to the deadline
    assert "shardcache status" in str(info.value)


@pytest.mark.parametrize(
    "reply",
    [
        "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
        "BUSY Valkey is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
        "LOADING Redis is loading the dataset in memory",
        "TRYAGAIN Multiple keys request during rehashing of slot",
        "CLUSTERDOWN The cluster is down",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    ],
)
def test_busy_and_loading_replies_are_retried_like_a_failover(reply: str) -> None:
    # redis-py leaves BUSY as a plain ResponseError: without this, a long script on one primary
    # reaches the training loop raw (issue 16, item 3).
    clock = FakeClock()
    assert policy(clock).call(failing(3, lambda: rex.ResponseError(reply))) == "ok"
    assert len(clock.sleeps) == 3
    with pytest.raises(CacheUnavailable, match="did not answer"):
        policy(FakeClock(), deadline=2.0).call(failing(10**6, lambda: rex.ResponseError(reply)))


def test_busygroup_and_wrongtype_are_not_transient() -> None:
    assert not is_transient(rex.ResponseError("BUSYGROUP Consumer Group name already exists"))
    assert not is_transient(rex.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"))


def test_zero_deadline_tries_once() -> None:
    clock = FakeClock()
    with pytest.raises(CacheUnavailable):
        policy(clock, deadline=0).call(failing(1, lambda: rex.ConnectionError("down")))
    assert clock.sleeps == []


def test_other_errors_pass_through_at_once() -> None:
    clock = FakeClock()
    with pytest.raises(rex.ResponseError, match="WRONGTYPE"):
        policy(clock).call(failing(1, lambda: rex.ResponseError("WRONGTYPE Operation against a key")))
    with pytest.raises(KeyError):
        policy(clock).call(failing(1, lambda: KeyError("x")))
    assert clock.sleeps == []


@pytest.mark.parametrize(
    "exc",
    [
        rex.AuthenticationError("invalid username-password pair"),
        rex.NoPermissionError("this user has no permissions to run the 'get' command"),
        # A Lua script refused by the ACL: Redis 7, then Valkey 9.
        rex.ResponseError("The user executing the script can't run this command or subcommand script: ..."),
        rex.ResponseError("ACL failure in script: User app has no permissions to run the 'zrem' command script: ..."),
    ],
)
def test_access_errors_become_access_denied(exc: BaseException) -> None:
    clock = FakeClock()

    def fn() -> None:
        raise exc

    with pytest.raises(AccessDenied) as info:
        policy(clock).call(fn, what="GET k", node=lambda: "h:1")
    assert info.value.node == "h:1"
    assert clock.sleeps == []


def test_a_failing_topology_refresh_does_not_abort() -> None:
    clock = FakeClock()

    def refresh(_exc: BaseException) -> None:
        raise rex.RedisClusterException("Redis Cluster cannot be connected. Please provide at least one node")

    fn = failing(3, lambda: rex.ClusterDownError("CLUSTERDOWN The cluster is down"))
    assert policy(clock).call(fn, on_retry=refresh) == "ok"


def test_transient_classification() -> None:
    assert is_transient(rex.ConnectionError("x"))
    assert is_transient(rex.ReadOnlyError("READONLY You can't write against a read only replica"))
    assert is_transient(rex.TryAgainError("TRYAGAIN"))
    assert is_transient(rex.RedisClusterException("Redis Cluster cannot be connected. Please provide ..."))
    assert not is_transient(rex.RedisClusterException("Keys in request don't hash to the same slot"))
    assert not is_transient(rex.AuthenticationError("x"))  # a ConnectionError, but retrying cannot help
    assert not is_transient(rex.OutOfMemoryError("OOM"))


def test_durations_may_be_strings() -> None:
    assert RetryPolicy(deadline="30s", initial_backoff="10ms").deadline == 30.0  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [{"deadline": -1}, {"initial_backoff": 0}, {"initial_backoff": 2, "max_backoff": 1}, {"deadline": "soon"},
     {"deadline": True}],
)
def test_arguments_are_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
