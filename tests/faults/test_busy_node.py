"""A primary running a long Lua script past ``busy-reply-threshold`` (issue 16, item 3).

While the script runs, the node answers every other command with ``-BUSY``. That is not a
broken node but one that will answer again, like a node failing over: every Redis call of the
cache retries until its deadline (here 10 s, the script runs ~2 s). So the loader (``latest``
lookup, lease EVAL, shard GETs, write-back EXISTS) and the prefetcher carry on; no shard is
read through and none is counted as corrupted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from shardcache.cache import ShardCache
from shardcache.dataloader import CachedDataLoader
from shardcache.localcluster import LocalCluster
from shardcache.prefetcher import prefetch

from .harness import SHARD_SIZE, assert_exactly_once, cached_ids, epoch_ids, unique_name

pytestmark = pytest.mark.faults

ROWS = range(2400)
BUSY_S = 2.0  # how long the script holds the node: well under the caches' 10 s deadline
# Never writes, so SCRIPT KILL may stop it.
_SPIN = "local i = 0 while true do i = i + 1 end"


@contextmanager
def busy(port: int, *, seconds: float = BUSY_S) -> Iterator[None]:
    """The node at ``port`` runs a busy script from a thread; it is killed ``seconds`` after it
    started answering BUSY, or when the block ends, whichever comes first."""
    admin = redis.Redis(port=port, socket_timeout=5)
    admin.config_set("busy-reply-threshold", 50)  # Redis 7 and Valkey; alias of lua-time-limit
    outcome: list[BaseException] = []

    def spin() -> None:
        runner = redis.Redis(port=port)  # no socket timeout: the reply comes when the script is killed
        try:
            runner.eval(_SPIN, 0)
        except redis.ResponseError as exc:  # "Script killed by user with SCRIPT KILL..."
            outcome.append(exc)
        finally:
            runner.close()

    thread = threading.Thread(target=spin, name="busy-script", daemon=True)
    thread.start()
    limit = time.monotonic() + 5
    while True:  # wait until the node really answers BUSY
        try:
            admin.ping()
        except redis.ResponseError as exc:
            if "BUSY" not in str(exc):
                raise
            break
        assert time.monotonic() < limit, "the script never made the node busy"
        time.sleep(0.01)
    killer = threading.Timer(seconds, lambda: _kill(port))
    killer.start()
    try:
        yield
    finally:
        killer.cancel()
        _kill(port)
        thread.join(10)
        admin.close()
    assert outcome, "the script ended by itself"
    assert "kill" in str(outcome[0]).lower(), outcome


def _kill(port: int) -> None:
    with redis.Redis(port=port, socket_timeout=5) as admin:
        try:
            admin.script_kill()
        except redis.ResponseError:  # NOTBUSY: already killed
            pass


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [0, 1])
def test_busy_script_on_a_primary_is_ridden_through_by_loader_and_prefetcher(
    replicas: int, make_cluster: Callable[..., LocalCluster], caches: Callable[..., ShardCache], source: Path,
) -> None:
    cluster = make_cluster(masters=3, replicas=replicas)
    cache = caches(cluster.url, deadline=10.0)
    name = unique_name("busy")
    manifest = prefetch(source, dataset=name, cache=cache, shard_size=SHARD_SIZE)
    # The primary that holds the manifest, `latest` and the lease: every reader needs it first.
    meta = cluster.primary_for_key(cache.keys.latest(name))
    assert any(cluster.primary_for_key(s.key) == meta for s in manifest.shards)

    # A loader opened while the node is busy: the `latest` lookup, the manifest GET and the lease
    # EVAL wait for it, then the epoch reads its shards.
    with busy(meta):
        loader = CachedDataLoader(name, cache=cache, batch_size=50, seed=3, num_workers=0)
        ids = epoch_ids(loader)
    assert_exactly_once(ids, ROWS)
    stats = loader.stats()
    assert (stats.read_throughs, stats.corrupted, stats.misses) == (0, 0, 0), stats
    assert cache.stats.retries > 0, "the node was never found busy"

    # Shard GETs alone, while the node is busy (the manifest is already held).
    retries = cache.stats.retries
    with busy(meta):
        assert_exactly_once(cached_ids(cache, manifest), ROWS)
    assert cache.stats.retries > retries
    assert cache.stats.corrupted == 0

    # A prefetch of another dataset whose metadata lives on the busy node.
    other = next(n for n in (unique_name("busy-p") for _ in range(200))
                 if cluster.primary_for_key(cache.keys.latest(n)) == meta)
    with busy(meta):
        written = prefetch(source, dataset=other, cache=cache, shard_size=SHARD_SIZE)
    assert written.complete
    assert_exactly_once(cached_ids(cache, cache.manifest(other)), ROWS)
