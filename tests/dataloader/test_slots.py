"""Workers reuse shared-memory batch buffers, and never while the main process still holds a batch."""

from __future__ import annotations

import gc
import os
import pickle
import sys
import threading
from collections.abc import Iterator
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.multiprocessing  # registers the tensor reductions on ForkingPickler

from shardcache.cache import Manifest, ShardCache
from shardcache.dataloader import CachedDataLoader, slots
from shardcache.dataloader.slots import POOL_MIN_BYTES, SlotPool
from shardcache.prefetcher import prefetch

from .conftest import unique_name

ROWS = 240
ROW_BYTES = 48 * 1024
BATCH = 32  # 1.5 MiB of images per batch: over POOL_MIN_BYTES


def image_of(row_id: int) -> np.ndarray:
    return np.random.default_rng(row_id).integers(0, 256, ROW_BYTES, dtype=np.uint8)


@pytest.fixture(scope="module")
def big_rows(cache: ShardCache, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manifest]:
    assert BATCH * ROW_BYTES >= POOL_MIN_BYTES
    ids = np.arange(ROWS, dtype=np.int64)
    images = np.stack([image_of(i) for i in ids])
    table = pa.table({
        "id": ids,
        "image": pa.FixedSizeBinaryArray.from_buffers(pa.binary(ROW_BYTES), ROWS, [None, pa.py_buffer(images)]),
    })
    root: Path = tmp_path_factory.mktemp("big-rows")
    pq.write_table(table, root / "part-0.parquet")
    name = unique_name("slots")
    manifest = prefetch(str(root), dataset=name, cache=cache, shard_size="1MiB")
    yield manifest
    cache.delete(name, force=True)


def check(batch: dict[str, torch.Tensor]) -> None:
    for row_id, image in zip(batch["id"].tolist(), batch["image"], strict=True):
        assert np.array_equal(image.numpy(), image_of(row_id)), f"row {row_id} was overwritten"


def test_held_batches_are_never_overwritten(big_rows: Manifest, cache: ShardCache) -> None:
    loader = CachedDataLoader(big_rows.name, cache=cache, batch_size=BATCH, num_workers=2, seed=3)
    for _ in range(2):  # the second epoch runs after the first epoch's batches were all dropped
        held = list(loader)  # every batch alive at once: more than the pools' slots
        for batch in held:
            check(batch)
        assert sorted(i for b in held for i in b["id"].tolist()) == list(range(ROWS))
        del held
        gc.collect()


def test_dropped_batches_give_their_buffers_back(big_rows: Manifest, cache: ShardCache) -> None:
    loader = CachedDataLoader(big_rows.name, cache=cache, batch_size=BATCH, num_workers=2, seed=3,
                              persistent_workers=True)
    for epoch in range(3):
        loader.set_epoch(epoch)
        loader.reset_stats()
        seen = []
        for batch in loader:
            check(batch)
            seen.extend(batch["id"].tolist())
        assert sorted(seen) == list(range(ROWS))
    stats = loader.stats()  # of the last epoch: the workers' pools are filled by then
    assert stats.reused_buffers >= stats.batches // 2 > 0


def test_an_epoch_left_midway_leaves_the_next_one_whole(big_rows: Manifest, cache: ShardCache) -> None:
    loader = CachedDataLoader(big_rows.name, cache=cache, batch_size=BATCH, num_workers=2, seed=3,
                              persistent_workers=True)
    for epoch in range(3):
        loader.set_epoch(epoch)
        kept = []
        for n, batch in enumerate(loader):
            kept.append(batch)  # held past the point where the epoch is left
            if n == 2:
                break
        whole = list(loader)  # the same epoch, from its start, on the same workers
        for batch in kept + whole:
            check(batch)
        assert sorted(i for b in whole for i in b["id"].tolist()) == list(range(ROWS))


def test_a_block_crosses_by_its_descriptor_once(
    big_rows: Manifest, cache: ShardCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, int, int, bool]] = []
    original = slots._map_block

    def recording(token: str, slot: int, incarnation: int, nbytes: int, df: object) -> torch.UntypedStorage:
        seen.append((token, slot, incarnation, df is not None))
        return original(token, slot, incarnation, nbytes, df)

    # Pickled by reference in the (forked) workers: it must be found under the original's name.
    recording.__module__, recording.__qualname__ = original.__module__, original.__qualname__
    monkeypatch.setattr(slots, "_map_block", recording)
    loader = CachedDataLoader(big_rows.name, cache=cache, batch_size=BATCH, num_workers=2, seed=3,
                              persistent_workers=True)
    for epoch in range(3):
        loader.set_epoch(epoch)
        for batch in loader:
            check(batch)
    first: dict[tuple[str, int, int], bool] = {}
    for token, slot, incarnation, with_descriptor in seen:
        first.setdefault((token, slot, incarnation), with_descriptor)
    assert first
    assert all(first.values()), "the first batch in a block brings its descriptor"
    assert sum(d for *_, d in seen) == len(first), "and no later batch does"
    assert len(seen) > 2 * len(first), "blocks are reused across batches and epochs"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open descriptors in /proc")
def test_descriptors_are_closed_once_the_workers_are_gone(big_rows: Manifest, cache: ShardCache) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    loader = CachedDataLoader(big_rows.name, cache=cache, batch_size=BATCH, num_workers=2, seed=3)
    list(loader)  # connections and the like, opened once
    gc.collect()
    before = open_fds()
    for _ in range(3):
        for batch in loader:
            check(batch)
    gc.collect()
    assert not loader._pools, "each iteration's workers exited, and their pools were forgotten"
    assert open_fds() <= before + 4, "a connection may open meanwhile; every block left open would add more"
    persistent = CachedDataLoader(big_rows.name, cache=cache, batch_size=BATCH, num_workers=2, seed=3,
                                  persistent_workers=True)
    for batch in persistent:
        check(batch)
    tokens = set(persistent._pools)
    assert tokens
    assert tokens <= set(slots._descriptors), "the workers live on: their descriptors are kept"
    del persistent, batch
    gc.collect()
    assert not tokens & set(slots._descriptors), "forgotten with the loader"


@pytest.mark.slow
def test_spawned_workers_and_the_file_system_strategy(big_rows: Manifest, cache: ShardCache) -> None:
    before = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    try:
        for context in ("spawn", "fork"):
            loader = CachedDataLoader(big_rows.name, cache=cache, batch_size=BATCH, num_workers=2, seed=1,
                                      multiprocessing_context=context)
            held = list(loader)
            for batch in held:
                check(batch)
            assert sorted(i for b in held for i in b["id"].tolist()) == list(range(ROWS))
    finally:
        torch.multiprocessing.set_sharing_strategy(before)


@pytest.mark.filterwarnings("ignore:.pin_memory. argument is set as true")
def test_pin_memory_keeps_batches_whole(big_rows: Manifest, cache: ShardCache) -> None:
    loader = CachedDataLoader(big_rows.name, cache=cache, batch_size=BATCH, num_workers=1, pin_memory=True)
    for batch in loader:
        check(batch)


def arrive_in_another_process(pool: SlotPool, slot: tuple[int, int], tensor: torch.Tensor) -> torch.Tensor:
    """What unpickling a batch and its claim does in the main process: a second mapping of the same
    shared memory, with the claim armed on it (in-process, torch's storage cache would hand back the
    worker's own storage instead)."""
    fd, size = tensor.untyped_storage()._share_fd_cpu_()
    copy_fd = os.dup(fd)
    try:
        storage = torch.UntypedStorage._new_shared_fd_cpu(copy_fd, size)
    finally:
        os.close(copy_fd)
    arrived = torch.empty(0, dtype=torch.uint8).set_(storage)
    rebuild, args = pool.claim([slot], [tensor], with_board=True).__reduce__()
    token, board, slots, _ = args
    claim = rebuild(token, board, slots, (arrived,))
    assert claim.tensors == ()
    return arrived


def test_a_slot_comes_back_only_when_its_storage_is_freed() -> None:
    pool = SlotPool(slots=2)
    first = pool.acquire(4096)
    assert first.slot is not None
    assert not first.reused
    arrived = arrive_in_another_process(pool, first.slot, first.tensor)
    arrived[7] = 42
    assert int(first.tensor[7]) == 42, "the same shared memory"
    view = arrived[3:5]
    del arrived
    gc.collect()
    assert pool.acquire(4096).slot == (1, 2), "slot 0 is still busy: a view of it lives"
    del view
    gc.collect()
    again = pool.acquire(4096)
    assert again.slot == (0, 3)
    assert again.reused
    assert pool.acquire(4096).slot is None, "both slots busy: a fresh, unpooled buffer"


def test_reserved_blocks_are_the_ones_batches_then_use() -> None:
    pool = SlotPool(slots=4)
    held = pool.acquire(8192, limit=3)
    assert pool.reserve(8192, limit=3) == 2, "the two empty slots within the limit"
    assert pool.reserve(8192, limit=3) == 0, "nothing left to make"
    got = [pool.acquire(8192, limit=3) for _ in range(2)]
    assert all(g.reused for g in got), "built in the reserved blocks, no fresh segment"
    assert sorted(g.slot[0] for g in got if g.slot) == [1, 2]
    assert held.slot == (0, 1)


def test_reserve_stops_once_its_iteration_ended() -> None:
    pool = SlotPool(slots=4)
    ended = threading.Event()
    ended.set()
    assert pool.reserve(8192, limit=4, stop=ended) == 0, "an ended iteration makes no block"
    assert pool.reserve(8192, limit=4, stop=threading.Event()) == 4


def test_a_stale_release_does_not_free_a_newer_generation() -> None:
    pool = SlotPool(slots=1)
    first = pool.acquire(100)
    assert first.slot is not None
    pool.give_back(first.slot)
    second = pool.acquire(100)
    assert second.slot == (0, 2)
    pool.give_back(first.slot)  # the old generation's release comes late: ignored
    assert pool.acquire(100).slot is None


def test_claims_pickle_without_the_pool() -> None:
    pool = SlotPool(slots=1)
    got = pool.acquire(POOL_MIN_BYTES)
    assert got.slot is not None
    claim = pool.claim([got.slot], [got.tensor], with_board=False)
    assert "SlotClaim" in repr(pickle.loads(ForkingPickler.dumps(claim)))


def test_the_limit_bounds_the_pool_and_drops_free_buffers_beyond_it() -> None:
    pool = SlotPool(slots=4)
    first, second = pool.acquire(100, limit=2), pool.acquire(100, limit=2)
    assert (first.slot, second.slot) == ((0, 1), (1, 2))
    assert pool.acquire(100, limit=2).slot is None, "over the limit: a fresh, unpooled buffer"
    assert second.slot is not None
    pool.give_back(second.slot)
    assert pool.acquire(100, limit=1).slot is None, "slot 1 is beyond the new limit"
    assert pool.acquire(100, limit=2).slot == (1, 3), "its buffer was dropped: a new one"


def test_threads_acquiring_at_once_never_share_a_slot() -> None:
    # A worker's read-ahead threads take blocks for the batches they receive shards into (inplace.py).
    pool = SlotPool(slots=16)
    start = threading.Barrier(8)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch all the time: a race would show
    got: list[tuple[int, int] | None] = []

    def take() -> None:
        start.wait()
        for _ in range(2):
            got.append(pool.acquire(4096).slot)

    threads = [threading.Thread(target=take) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    pooled = [slot for slot in got if slot is not None]
    assert len(pooled) == 16
    assert len({index for index, _ in pooled}) == 16, "each slot handed out once"
    assert pool.board.numpy().all()
