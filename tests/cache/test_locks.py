"""The writer lock and the readers' leases, against real servers."""

from __future__ import annotations

import time
from typing import Any

import pytest

from shardcache.cache import DatasetLock, Lease, ShardCache
from shardcache.errors import CacheUnavailable, ConfigError, DatasetLocked

from .conftest import new_manifest, tables


def wait_until(predicate: Any, *, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def test_second_writer_is_refused(cache: ShardCache, name: str) -> None:
    with cache.lock(name) as first:
        with pytest.raises(DatasetLocked, match=first.token) as info:
            cache.lock(name)
        assert info.value.dataset == name
        with pytest.raises(DatasetLocked):
            cache.lock(name, wait=0.1)
    second = cache.lock(name)  # free again once released
    second.release()
    assert cache.client.exists(cache.keys.lock(name)) == 0


def test_waiting_writer_gets_the_lock_when_released(cache: ShardCache, name: str) -> None:
    first = cache.lock(name, ttl=0.3)
    # The holder stops renewing without releasing (a crashed writer): the TTL frees the lock.
    assert first._renewer is not None
    first._renewer.stop()
    with cache.lock(name, wait=10) as second:
        assert second.held
    wait_until(lambda: first.lost)


def test_lock_is_renewed_while_held(cache: ShardCache, name: str) -> None:
    # A TTL with room for a busy CI machine: renewals run every ttl/3.
    with cache.lock(name, ttl=1.0) as lock:
        time.sleep(2.2)  # twice the TTL: only renewal keeps it
        assert cache.client.get(cache.keys.lock(name)) == lock.token.encode()
        assert lock.held
        assert not lock.lost
        lock.check()


def test_lost_lock_is_detected_and_blocks_commit(cache: ShardCache, name: str) -> None:
    parts = tables(1)
    lock = cache.lock(name, ttl=0.3)
    try:
        m = cache.begin(new_manifest(name, parts))
        cache.client.set(cache.keys.lock(name), b"another-writer")
        wait_until(lambda: lock.lost)
        with pytest.raises(DatasetLocked, match="lost"):
            lock.check()
        with pytest.raises(DatasetLocked):
            cache.commit(m, lock=lock)
        # Even without the local check, the commit script compares the token in Redis.
        lock._renewer = None
        with pytest.raises(DatasetLocked, match="taken by another writer"):
            cache.commit(m, lock=lock)
        assert cache.manifest(name).state == "loading"
    finally:
        lock.release()
    # Release never deletes another writer's lock.
    assert cache.client.get(cache.keys.lock(name)) == b"another-writer"
    cache.client.delete(cache.keys.lock(name))


def test_lock_counts_as_lost_when_renewals_keep_failing(cache: ShardCache, name: str) -> None:
    outage = {"on": False}

    def call(method: str, *args: Any, **kwargs: Any) -> Any:
        if outage["on"]:
            raise CacheUnavailable("simulated outage", node="test")
        return cache.call(method, *args, **kwargs)

    lock = DatasetLock(call=call, key=cache.keys.lock(name), dataset=name, ttl=0.3)
    lock.acquire()
    try:
        outage["on"] = True
        wait_until(lambda: lock.lost, timeout=5)
        with pytest.raises(DatasetLocked):
            lock.check()
    finally:
        outage["on"] = False
        lock.release()


def test_acquire_recognises_its_own_token(cache: ShardCache, name: str) -> None:
    # A SET NX whose reply was lost and was retried finds the lock held by... itself.
    lock = DatasetLock(call=cache.call, key=cache.keys.lock(name), dataset=name, ttl=5)
    cache.client.set(lock.key, lock.token, px=5000)
    lock.acquire()
    try:
        assert lock.held
    finally:
        lock.release()
    assert cache.client.exists(lock.key) == 0


def test_release_after_error_does_not_mask_it(cache: ShardCache, name: str) -> None:
    with pytest.raises(KeyError), cache.lock(name):
        raise KeyError("the writer's own error")
    assert cache.client.exists(cache.keys.lock(name)) == 0


def test_short_lease_does_not_cut_a_long_one_short(cache: ShardCache, name: str) -> None:
    key = cache.keys.leases(name)
    with cache.lease(name, "v1", ttl=600) as long_lease:
        with cache.lease(name, "v1", ttl=1):
            pass
        # The key outlives its longest member; a short lease's expiry must not shorten it.
        assert cache.client.pttl(key) > 590_000
        assert cache.leases(name) == [long_lease.member]
    assert cache.leases(name) == []


def test_lease_is_renewed_and_reports_loss(cache: ShardCache, name: str) -> None:
    lease = cache.lease(name, "v1", ttl=1.0)
    try:
        time.sleep(2.2)  # twice the TTL: only renewal keeps it
        assert cache.leases(name) == [lease.member]
        assert not lease.lost
    finally:
        lease.release()


def test_lock_and_lease_arguments(cache: ShardCache, name: str) -> None:
    with pytest.raises(ConfigError, match="version"):
        cache.lease(name, "a|b")
    with pytest.raises(ConfigError, match="ttl"):
        cache.lease(name, "v1", ttl=0)
    with pytest.raises(ConfigError, match="ttl"):
        cache.lock(name, ttl=-1)
    with pytest.raises(ConfigError, match="wait"):
        cache.lock(name, wait=-1)
    lease = cache.lease(name, ttl=5)
    assert isinstance(lease, Lease)
    lease.release()


def test_only_a_holder_of_this_host_and_pid_namespace_is_judged_dead() -> None:
    import os
    import socket
    import subprocess
    import sys

    from shardcache.cache.locks import _holder, dead_local_holder

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(gone.stdout)  # exited: no such process (unless reused, which is vanishingly rare here)
    host = _holder().split(":")[0]
    assert host == f"{socket.gethostname()}/{os.stat('/proc/self/ns/pid').st_ino}"
    assert dead_local_holder(f"{host}:{pid}:0123abcd")
    assert dead_local_holder(f"{host}:{pid}:0123abcd:v1")
    # Same hostname, another PID namespace (a hostNetwork pod on this node): its pids mean nothing here.
    assert not dead_local_holder(f"{socket.gethostname()}/1:{pid}:0123abcd")
    assert not dead_local_holder(f"{socket.gethostname()}:{pid}:0123abcd")  # an older token: waited out
    assert not dead_local_holder(f"{host}:{os.getpid()}:0123abcd")  # this process
    assert not dead_local_holder(f"{host}:1:0123abcd")  # alive
