"""CachedDataLoader against a real cluster: batch format, exactly-once across ranks, order, workers, leases."""

from __future__ import annotations

import pickle
import threading
from collections import Counter

import pytest
import torch

from shardcache.cache import Manifest, ShardCache
from shardcache.dataloader import CachedDataLoader, CachedDataset, LoaderStats
from shardcache.dataloader import worker as worker_module
from shardcache.errors import ConfigError, DatasetInUse, DatasetNotFound

from .conftest import IMAGE_BYTES, ROWS, ids_of, run_ranks


def check_epoch(per_rank: list[list[list[int]]], *, world_size: int, batch_size: int, drop_last: bool) -> None:
    """One epoch over all ranks keeps the contract: equal batch counts, exactly once, padding bounded."""
    assert len({len(batches) for batches in per_rank}) == 1, "every rank yields the same number of batches"
    for batches in per_rank:
        assert all(len(b) == batch_size for b in batches[:-1])
        if drop_last:
            assert all(len(b) == batch_size for b in batches)
    counts = Counter(i for batches in per_rank for b in batches for i in b)
    assert set(counts) <= set(range(ROWS))
    duplicates = sum(c - 1 for c in counts.values())
    if drop_last:
        assert duplicates == 0
        assert ROWS - len(counts) < world_size * batch_size
    else:
        assert set(counts) == set(range(ROWS)), "every sample is delivered"
        assert duplicates <= world_size - 1


def test_batches_are_dicts_of_tensors_and_lists(dataset: Manifest, cache: ShardCache):
    loader = CachedDataLoader(dataset.name, cache=cache, batch_size=32)
    batch = next(iter(loader))
    assert batch["id"].dtype == torch.int64
    assert batch["id"].shape == (32,)
    assert batch["image"].dtype == torch.uint8
    assert batch["image"].shape == (32, IMAGE_BYTES)
    assert batch["label"].dtype == torch.int16
    assert batch["vec"].dtype == torch.float32
    assert batch["vec"].shape == (32, 3)
    assert torch.equal(batch["vec"][:, 0], batch["id"].float())
    assert batch["name"] == [f"row-{i}" for i in batch["id"].tolist()]
    assert isinstance(batch["blob"], list)
    assert all(isinstance(b, bytes) for b in batch["blob"])
    assert torch.equal(batch["label"], (batch["id"] % 10).to(torch.int16))


def test_columns_select_what_is_read(dataset: Manifest, cache: ShardCache):
    loader = CachedDataLoader(dataset.name, cache=cache, batch_size=10, columns=["label", "id"])
    assert list(next(iter(loader))) == ["label", "id"]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_exactly_once_across_ranks(dataset: Manifest, cache, world_size, num_workers, drop_last):
    batch_size = 32
    per_rank, loaders = run_ranks(
        dataset.name, cache, world_size, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last
    )
    check_epoch(per_rank, world_size=world_size, batch_size=batch_size, drop_last=drop_last)
    assert [len(loader) for loader in loaders] == [len(batches) for batches in per_rank]
    if num_workers:  # the order does not depend on the number of workers
        alone, _ = run_ranks(dataset.name, cache, world_size, batch_size=batch_size, drop_last=drop_last)
        assert per_rank == alone


def test_order_depends_on_seed_and_epoch_only(dataset: Manifest, cache: ShardCache):
    loader = CachedDataLoader(dataset.name, cache=cache, batch_size=50)
    first = ids_of(list(loader))
    assert first == ids_of(list(loader)), "iterating again repeats the epoch"
    assert sorted(first) == list(range(ROWS))
    loader.set_epoch(1)
    second = ids_of(list(loader))
    assert second != first
    assert sorted(second) == sorted(first)
    other_seed = CachedDataLoader(dataset.name, cache=cache, batch_size=50, seed=5)
    assert ids_of(list(other_seed)) != first
    unshuffled = CachedDataLoader(dataset.name, cache=cache, batch_size=50, shuffle=False)
    assert ids_of(list(unshuffled)) == list(range(ROWS))


def test_a_batch_mixes_several_shards(dataset: Manifest, cache: ShardCache):
    loader = CachedDataLoader(dataset.name, cache=cache, batch_size=64)
    offsets = [0]
    for shard in dataset.shards:
        offsets.append(offsets[-1] + shard.rows)
    batch = next(iter(loader))["id"].tolist()
    shards = {next(k for k in range(len(offsets) - 1) if offsets[k] <= i < offsets[k + 1]) for i in batch}
    assert len(shards) > 2


def test_persistent_workers_follow_set_epoch(dataset: Manifest, cache: ShardCache):
    persistent = CachedDataLoader(dataset.name, cache=cache, batch_size=40, num_workers=2, persistent_workers=True)
    plain = CachedDataLoader(dataset.name, cache=cache, batch_size=40)
    orders = []
    for epoch in (0, 1, 2):
        persistent.set_epoch(epoch)
        plain.set_epoch(epoch)
        orders.append(ids_of(list(persistent)))
        assert orders[-1] == ids_of(list(plain))
    assert len({tuple(order) for order in orders}) == 3, "each epoch has its own order"


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true but no accelerator")
@pytest.mark.parametrize("method", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_start_methods(dataset: Manifest, cache: ShardCache, method):
    loader = CachedDataLoader(
        dataset.name, cache=cache, batch_size=64, num_workers=2, multiprocessing_context=method, pin_memory=True
    )
    reference = CachedDataLoader(dataset.name, cache=cache, batch_size=64)
    assert ids_of(list(loader)) == ids_of(list(reference))


def test_the_dataset_pickles_and_iterates_alone(dataset: Manifest, cache: ShardCache):
    ds = CachedDataset(dataset.name, cache=cache, batch_size=25, seed=3, columns=["id", "name"])
    copy = pickle.loads(pickle.dumps(ds))
    assert ids_of(list(copy)) == ids_of(list(ds))
    assert len(copy) == len(ds) == -(-ROWS // 25)
    plain = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    assert ids_of(list(plain)) == ids_of(list(ds)), "a plain DataLoader keeps the order with one batch per turn"


def test_transform_and_collate_fn_run_on_the_batch(dataset: Manifest, cache: ShardCache):
    ds = CachedDataset(dataset.name, cache=cache, columns=["id", "label"], transform=_double_ids)
    loader = CachedDataLoader(ds, batch_size=16, num_workers=2, collate_fn=_as_pair)
    ids, labels = next(iter(loader))
    assert torch.equal(labels, (ids // 2 % 10).to(torch.int16))


def _double_ids(batch):
    return {**batch, "id": batch["id"] * 2}


def _as_pair(batch):
    return batch["id"], batch["label"]


def test_stats_count_hits_bytes_and_waiting(dataset: Manifest, cache: ShardCache):
    loader = CachedDataLoader(dataset.name, cache=cache, batch_size=100, num_workers=2)
    batches = list(loader)
    stats = loader.stats()
    assert isinstance(stats, LoaderStats)
    assert stats.batches == len(batches)
    assert stats.samples == ROWS
    assert stats.hits >= dataset.num_shards
    assert stats.misses == 0
    assert stats.read_throughs == 0
    assert stats.bytes_read >= dataset.nbytes
    assert stats.hit_ratio == 1.0
    assert 0 < stats.wait_seconds <= stats.elapsed_seconds
    loader.reset_stats()
    assert loader.stats() == LoaderStats()


@pytest.mark.parametrize(("read_threads", "expected"), [(None, 3), (1, 1)])
def test_without_workers_the_main_process_reads_three_shards_at_a_time(
    dataset: Manifest, cache: ShardCache, monkeypatch: pytest.MonkeyPatch, read_threads, expected
):
    asked = []

    class Recording(worker_module.ReadAhead):
        def __init__(self, *args, threads: int, **kwargs):
            asked.append(threads)
            super().__init__(*args, threads=threads, **kwargs)

    monkeypatch.setattr(worker_module, "ReadAhead", Recording)
    loader = CachedDataLoader(dataset.name, cache=cache, batch_size=100, read_threads=read_threads)
    assert sum(len(b["id"]) for b in loader) == ROWS
    assert asked == [expected]


def test_a_lease_protects_the_dataset_while_iterating(make_dataset, cache: ShardCache):
    manifest = make_dataset(rows=100)
    loader = CachedDataLoader(manifest.name, cache=cache, batch_size=10)
    iterator = iter(loader)
    next(iterator)
    assert any(m.startswith(f"{manifest.version}|") for m in cache.leases(manifest.name))
    with pytest.raises(DatasetInUse):
        cache.delete(manifest.name)
    for _ in iterator:
        pass
    assert cache.leases(manifest.name) == []


@pytest.mark.parametrize(("num_workers", "persistent"), [(0, False), (2, False), (2, True)])
def test_an_epoch_left_midway_releases_everything_and_the_next_is_whole(
    make_dataset, cache: ShardCache, num_workers, persistent
):
    manifest = make_dataset(rows=200)
    loader = CachedDataLoader(
        manifest.name, cache=cache, batch_size=10, num_workers=num_workers, persistent_workers=persistent
    )
    expected = {}
    for epoch in (0, 1):
        reference = CachedDataLoader(manifest.name, cache=cache, batch_size=10)
        reference.set_epoch(epoch)
        expected[epoch] = ids_of(list(reference))
    before = set(threading.enumerate())
    for k, batch in enumerate(loader):
        assert batch["id"].tolist() == expected[0][k * 10 : (k + 1) * 10]
        if k == 2:
            break  # the iterator is dropped here, as when a training loop stops early
    assert cache.leases(manifest.name) == []
    started = [t for t in set(threading.enumerate()) - before if t.name.startswith("shardcache-")]
    for thread in started:  # read-ahead threads may finish a load already running, then stop
        thread.join(timeout=10)
    assert [t.name for t in started if t.is_alive()] == []
    loader.set_epoch(1)
    assert ids_of(list(loader)) == expected[1]
    loader.set_epoch(0)
    assert ids_of(list(loader)) == expected[0]
    assert cache.leases(manifest.name) == []


def test_len_is_exact_for_each_layout(dataset: Manifest, cache: ShardCache):
    for batch_size, drop_last in ((1, False), (7, True), (64, False), (ROWS + 5, True), (ROWS + 5, False)):
        loader = CachedDataLoader(dataset.name, cache=cache, batch_size=batch_size, drop_last=drop_last)
        assert len(loader) == len(list(loader)) == (ROWS // batch_size if drop_last else -(-ROWS // batch_size))
        assert loader.batch_size == batch_size
        assert loader.drop_last == drop_last


# -- bad input ---------------------------------------------------------------------------


def test_unknown_dataset_or_version(cache: ShardCache, dataset: Manifest):
    with pytest.raises(DatasetNotFound, match="prefetch it first"):
        CachedDataLoader("no-such-dataset-anywhere", cache=cache, batch_size=4)
    with pytest.raises(DatasetNotFound, match="version 'v0'"):
        CachedDataset(dataset.name, cache=cache, version="v0")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"columns": ["id", "nope"]}, "names 'nope', which the dataset does not have; its columns are id, image"),
        ({"batch_size": 0}, "batch_size=0 is invalid"),
        ({"batch_size": 2.5}, "batch_size=2.5 is invalid"),
        ({"rank": 1}, "pass both"),
        ({"rank": 3, "world_size": 3}, "rank=3 is invalid for world_size=3"),
        ({"seed": -1}, "seed=-1"),
        ({"sampler": [1, 2]}, "sampler=.* is not supported"),
        ({"readahead": "lots"}, "readahead='lots' is not a size"),
        ({"transform": 3}, "transform=3 is not callable"),
        ({"no_such_option": 1}, "unknown CachedDataLoader or CachedDataset argument"),
    ],
)
def test_bad_arguments_raise_config_error_naming_them(dataset: Manifest, cache: ShardCache, options, match):
    with pytest.raises(ConfigError, match=match):
        CachedDataLoader(dataset.name, cache=cache, **{"batch_size": 4, **options})


def test_a_dataset_feeds_one_loader(dataset: Manifest, cache: ShardCache):
    ds = CachedDataset(dataset.name, cache=cache)
    loader = CachedDataLoader(ds, batch_size=4)
    with pytest.raises(ConfigError, match="already feeds another CachedDataLoader"):
        CachedDataLoader(ds, batch_size=8)
    with pytest.raises(ConfigError, match="pass them to CachedDataset"):
        CachedDataLoader(ds, batch_size=4, seed=3)
    del loader
    with pytest.raises(ConfigError, match="has no batch size"):
        iter(CachedDataset(dataset.name, cache=cache))
