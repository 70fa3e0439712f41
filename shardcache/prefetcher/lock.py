"""The dataset's writer lock for a prefetch, taken over at once from a dead prefetcher on this host."""

from __future__ import annotations

import logging

from ..cache.locks import DatasetLock, dead_local_holder, delete_if_held
from ..cache.store import ShardCache
from ..errors import DatasetLocked

__all__ = ["LOCK_TTL", "take_lock", "take_part_lock"]

log = logging.getLogger(__name__)

LOCK_TTL = 15.0  # seconds a killed prefetcher on another host blocks the next one


def take_part_lock(store: ShardCache, dataset: str, version: str, part: int, *, wait: float) -> DatasetLock:
    """The lock of one part of a parallel prefetch; like :func:`take_lock`, a dead local holder's is taken over."""
    try:
        return store.part_lock(dataset, version, part, wait=0.0, ttl=LOCK_TTL)
    except DatasetLocked:
        if not _take_over(store, store.keys.part_lock(dataset, version, part), f"part {part} of {dataset!r}") and \
                wait <= 0:
            raise
    return store.part_lock(dataset, version, part, wait=wait, ttl=LOCK_TTL)


def _take_over(store: ShardCache, key: str, what: str) -> bool:
    """Remove the lock at ``key`` if its holder was a process of this host that is gone; whether it did."""
    holder = store.call("GET", key)
    text = holder.decode(errors="replace") if isinstance(holder, bytes) else str(holder or "")
    if not dead_local_holder(text):
        return False
    log.warning("%s: the lock of dead prefetcher %s is taken over", what, text)
    delete_if_held(store.call, key, text)
    return True


def take_lock(store: ShardCache, dataset: str, *, version: str, wait: float) -> DatasetLock:
    """The writer lock, taken to write ``version`` (its token names it: `rm` and `info` see which
    version the prefetch writes); a lock left by a dead process on this host is taken over at once.

    A prefetcher killed with SIGKILL cannot release its lock, which then lives until its
    TTL passes. When the holder ran on this host and its process is gone, waiting would
    only delay the re-run, so the stale lock is removed (compare-and-delete).
    """
    try:
        return store.lock(dataset, wait=0.0, ttl=LOCK_TTL, version=version)
    except DatasetLocked:
        if not _take_over(store, store.keys.lock(dataset), f"dataset {dataset!r}") and wait <= 0:
            raise
    return store.lock(dataset, wait=wait, ttl=LOCK_TTL, version=version)
