"""Carrying the next epoch's first shards (carry.py): persistent workers load them while an epoch ends;
the next iteration takes them only when it is the one predicted, and the batches stay exactly those of
a loader that carries nothing, every sample once per epoch."""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa
import pytest

from shardcache.cache import Manifest, ShardCache
from shardcache.dataloader import CachedDataLoader
from shardcache.dataloader.carry import Carried, carry_next, drop_carried, take_carried
from shardcache.dataloader.stats import Counters

from .conftest import ROWS


def _table(shard: int) -> pa.Table:
    return pa.table({"shard": [shard]})


def test_carried_shards_are_loaded_in_order_and_popped_once() -> None:
    order: list[int] = []
    lock = threading.Lock()

    def load(shard: int) -> pa.Table:
        with lock:
            order.append(shard)
        if shard == 7:
            raise ConnectionError("a node went away")
        return _table(shard)

    carried = Carried("key", [3, 1, 7, 2], load, counters=Counters(), threads=1)
    assert carried.pop(1).column("shard").to_pylist() == [1]
    assert carried.pop(3).column("shard").to_pylist() == [3]
    assert carried.pop(7) is None  # its load failed: the iteration loads it again
    assert carried.pop(2).column("shard").to_pylist() == [2]
    assert carried.pop(2) is None  # popped once
    assert carried.pop(9) is None  # never carried
    assert order == [3, 1, 7, 2]
    carried.close()


def test_a_closed_carry_hands_nothing_over() -> None:
    release = threading.Event()

    def load(shard: int) -> pa.Table:
        release.wait(5)
        return _table(shard)

    carried = Carried("key", [0, 1], load, counters=Counters())
    carried.close()
    release.set()
    assert carried.pop(0) is None


def test_only_the_predicted_iteration_takes_the_carried_shards() -> None:
    carry_next(("epoch", 1), [0], _table, counters=Counters())
    assert take_carried(("epoch", 2)) is None  # another iteration: dropped
    assert take_carried(("epoch", 1)) is None  # and gone
    carry_next(("epoch", 1), [0], _table, counters=Counters())
    carried = take_carried(("epoch", 1))
    assert carried is not None
    assert carried.pop(0).column("shard").to_pylist() == [0]
    carry_next(("epoch", 3), [0], _table, counters=Counters())
    drop_carried()
    assert take_carried(("epoch", 3)) is None


def _epochs(loader: CachedDataLoader, epochs: list[int | None]) -> list[list[list[int]]]:
    out = []
    for epoch in epochs:
        if epoch is not None:
            loader.set_epoch(epoch)
        out.append([b["id"].tolist() for b in loader])
    return out


@pytest.mark.parametrize("shuffle", [True, False])
def test_persistent_workers_carry_the_next_epochs_first_shards(
    dataset: Manifest, cache: ShardCache, shuffle: bool
) -> None:
    options: dict[str, Any] = {"cache": cache, "batch_size": 32, "shuffle": shuffle, "seed": 5, "num_workers": 2}
    carrying = CachedDataLoader(dataset.name, persistent_workers=True, **options)
    plain = CachedDataLoader(dataset.name, persistent_workers=False, **options)
    epochs: list[int | None] = [0, 1, 2]
    got, want = _epochs(carrying, epochs), _epochs(plain, epochs)
    assert got == want  # the same batches, in the same order
    for batches in got:
        assert sorted(i for b in batches for i in b) == list(range(ROWS))  # every sample once per epoch
    stats = carrying.stats()
    assert stats.carried_shards > 0  # epochs 1 and 2 began with shards read while the epoch before ended
    assert stats.hits >= dataset.num_shards * 3  # carried loads are counted too
    assert plain.stats().carried_shards == 0


def test_a_loop_without_set_epoch_carries_the_same_epoch_again(dataset: Manifest, cache: ShardCache) -> None:
    loader = CachedDataLoader(dataset.name, cache=cache, batch_size=32, shuffle=True, seed=5, num_workers=2,
                              persistent_workers=True)  # fmt: skip
    first, second, third = _epochs(loader, [None, None, None])
    assert first == second == third  # the same epoch each time, as without set_epoch in PyTorch
    assert loader.stats().carried_shards > 0  # the third iteration took what the second carried


def test_a_resume_drops_what_was_carried(dataset: Manifest, cache: ShardCache) -> None:
    options: dict[str, Any] = {"cache": cache, "batch_size": 32, "shuffle": True, "seed": 5, "num_workers": 2,
                               "persistent_workers": True}  # fmt: skip
    loader = CachedDataLoader(dataset.name, **options)
    list(loader)  # epoch 0; the workers carry epoch 1's start
    reference = CachedDataLoader(dataset.name, **options)
    reference.set_epoch(1)
    whole = []
    for k, batch in enumerate(reference):
        whole.append(batch["id"].tolist())
        if k == 2:
            state = reference.state_dict()
    loader.load_state_dict(state)  # epoch 1 from its fourth batch: not the iteration carried for
    rest = [b["id"].tolist() for b in loader]
    assert rest == whole[3:]
    assert sorted(ids_of_lists(whole)) == list(range(ROWS))


def ids_of_lists(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]

