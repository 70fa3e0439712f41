"""connect(): URL forms, seed lists, the environment, cluster detection, a server that is down."""

from __future__ import annotations

import multiprocessing as mp
import socket
import time
from collections.abc import Callable

import pytest

from shardcache.cache import RetryPolicy, ShardCache, connect, parse_url
from shardcache.cache import connection as connection_module
from shardcache.errors import CacheUnavailable, ConfigError
from shardcache.localcluster import LocalCluster

from .conftest import TEST_RETRY


def dead_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_detects_cluster_or_standalone(redis_url: str, standalone_url: str) -> None:
    with connect(standalone_url, env={}) as standalone:
        assert standalone.is_cluster is False
        assert standalone.ping()
    with connect(redis_url, env={}) as cluster:
        assert cluster.is_cluster is True
        assert len(cluster.capacity().nodes) >= 3


def _ping_as_a_cluster(cache: ShardCache) -> None:
    assert cache.is_cluster
    assert cache.ping()


def test_a_forked_child_reconnects_without_probing(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with connect(redis_url, env={}) as cache:
        assert cache.is_cluster

        def probe(*args: object) -> None:
            raise AssertionError("the child probed the server again")

        monkeypatch.setattr(connection_module, "_probe", probe)
        child = mp.get_context("fork").Process(target=_ping_as_a_cluster, args=(cache,))
        child.start()
        child.join(timeout=60)
        assert child.exitcode == 0, "the child knew the cluster from its parent, and its client works"


def test_url_from_the_environment(url: str) -> None:
    with connect(env={"SHARDCACHE_REDIS_URL": url}) as cache:
        assert cache.ping()
    with pytest.raises(ConfigError, match="SHARDCACHE_REDIS_URL"):
        connect(env={})


def test_seed_list_skips_dead_seeds(url: str) -> None:
    live = parse_url(url).seeds
    dead = f"127.0.0.1:{dead_port()}"
    seeds = ",".join([dead, *(f"{h}:{p}" for h, p in live)])
    with connect(f"redis://{seeds}", env={}, retry=TEST_RETRY) as cache:
        assert cache.ping()
    with_schemes = ",".join(f"redis://{h}:{p}" for h, p in live)
    with connect(with_schemes, env={}) as cache:
        assert cache.ping()


@pytest.mark.parametrize("text", ["redis://h:port", "redis://", "tcp://h:1", "redis://h:1?x=y"])
def test_malformed_url_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        connect(text, env={})


def test_unknown_option_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="unknown connection option"):
        connect(url, env={}, socket_timout=1)
    with pytest.raises(ConfigError, match="ssl_cert_reqs"):
        connect(url, env={}, ssl_cert_reqs="maybe")


def test_database_number_on_a_cluster_is_refused(redis_url: str) -> None:
    host, port = parse_url(redis_url).seeds[0]
    with pytest.raises(ConfigError, match="only database 0"):
        connect(f"redis://{host}:{port}/1", env={})


def test_server_down_gives_cache_unavailable_in_bounded_time() -> None:
    port = dead_port()
    began = time.monotonic()
    with pytest.raises(CacheUnavailable, match=f"127.0.0.1:{port}") as info:
        connect(f"redis://127.0.0.1:{port}", retry=RetryPolicy(deadline=0.5), env={})
    elapsed = time.monotonic() - began
    assert info.value.waited >= 0.5
    assert elapsed < 30  # bounded: a hang would run into pytest's timeout instead of failing here
    assert "shardcache status" in str(info.value)


@pytest.mark.parametrize("where", ["refused", "unknown-host", "several-seeds"])
def test_no_seed_answering_at_connect_fails_within_seconds_naming_the_seeds(where: str) -> None:
    # The 20 s retry deadline is for a cluster that answered before (a failover); a cache that does
    # not answer when a job starts is reported at once, with every seed tried (issue 16, item 7).
    seeds = {
        "refused": [f"127.0.0.1:{dead_port()}"],
        "unknown-host": ["no-such-host.invalid:7000"],
        "several-seeds": [f"127.0.0.1:{dead_port()}", f"127.0.0.1:{dead_port()}"],
    }[where]
    began = time.monotonic()
    with pytest.raises(CacheUnavailable) as info:
        connect("redis://" + ",".join(seeds), env={})  # the default 20 s deadline
    elapsed = time.monotonic() - began
    assert elapsed < 3.0, f"took {elapsed:.1f}s"
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert all(seed in message for seed in seeds), message
    assert "shardcache status" in message
    assert "node" not in message  # a seed list is not a node
    assert info.value.node == ", ".join(seeds)


def test_server_lost_after_connect(cluster_factory: Callable[..., LocalCluster]) -> None:
    server = cluster_factory(masters=1, replicas=0, cluster=False)
    cache = connect(server.url, retry=RetryPolicy(deadline=0.5), env={})
    assert cache.ping()
    server.stop()
    with pytest.raises(CacheUnavailable) as info:
        cache.datasets()
    assert info.value.waited >= 0.5
    assert cache.stats.snapshot()["retries"] >= 1
    cache.close()
