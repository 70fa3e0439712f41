"""Whether the shards to load fit in Redis: all of them, or (under ``allow_partial``) which ones."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..cache.manifest import Manifest
from ..cache.store import Capacity, ShardCache
from ..errors import CapacityExceeded
from ..units import format_bytes
from .plan import redis_bytes

__all__ = ["MANIFEST_HEADROOM", "fit"]

log = logging.getLogger(__name__)

MANIFEST_HEADROOM = 256 * 1024  # the done records and allocator slack beside the manifest


def fit(
    store: ShardCache, manifest: Manifest, todo: list[int], estimates: Sequence[int], *, new: bool,
    allow_partial: bool,
) -> tuple[list[int], list[int]]:
    """``(shards to load, shards left uncached)``; raises CapacityExceeded unless allow_partial."""
    if not todo:
        return todo, []
    chunk = store.chunk_size
    costs = [redis_bytes(estimates[i], chunk_size=chunk) for i in todo]
    manifest_bytes = len(manifest.to_json()) * 2
    needed = sum(costs) + (manifest_bytes if new else 0)
    capacity = store.capacity()
    free = capacity.free
    if allow_partial:
        return _what_fits(store, manifest, todo, costs, capacity, manifest_bytes)
    if needed <= free:
        return todo, []
    raise CapacityExceeded(
        f"dataset {manifest.name!r} needs about {format_bytes(needed)} in Redis ({len(todo)} shards) but "
        f"only {format_bytes(free)} is free; free space with `shardcache rm`, raise maxmemory, add "
        "nodes, or pass allow_partial (--allow-partial) to cache what fits",
        needed=needed, available=free,
    )


def _what_fits(
    store: ShardCache, manifest: Manifest, todo: list[int], costs: list[int], capacity: Capacity,
    manifest_bytes: int,
) -> tuple[list[int], list[int]]:
    """Under allow_partial: the shards that fit, node by node, in load order.

    Shards spread over the primaries by hash slot, so one node can fill while the
    others have room; a cluster-wide budget would let that node run out mid-load and
    then refuse the manifest at commit. So each node gets its own budget, and the
    node that holds the manifest keeps room for it.
    """
    budget = {n.node: n.free for n in capacity.nodes}
    meta = store.node_of(store.keys.manifest(manifest.name, manifest.version))
    if meta in budget:
        budget[meta] -= manifest_bytes + MANIFEST_HEADROOM
    load, skip = [], []
    for index, cost in zip(todo, costs, strict=True):
        node = store.node_of(manifest.shards[index].key)
        if node is not None and budget.get(node, 0) >= cost:
            budget[node] -= cost
            load.append(index)
        else:
            skip.append(index)
    if skip:
        log.warning("dataset %r: %d of %d shards fit in the %s free; the rest stay uncached (allow_partial)",
                    manifest.name, len(load), len(todo), format_bytes(capacity.free))
    return load, skip
