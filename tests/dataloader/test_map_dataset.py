"""CachedMapDataset: random access by index, read through torch's DataLoader (``__getitems__``), every
sampler; counted ids, never just "no exception"."""

from __future__ import annotations

import gc
import pickle
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler, Sampler, SequentialSampler

import shardcache
from shardcache.cache import Manifest, ShardCache
from shardcache.dataloader import CachedDataLoader, CachedMapDataset
from shardcache.errors import ConfigError, ShardCorrupted, ShardMissing

from .conftest import IMAGE_BYTES, ROWS, ids_of
from .test_read_through import shard_keys


def ids(batches: list[dict[str, Any]]) -> list[int]:
    return ids_of(batches)


class Calls:
    """Counts the calls of a dataset's ``__getitems__`` (the path torch's fetcher takes)."""

    def __init__(self, ds: CachedMapDataset) -> None:
        self.items = 0
        real = ds.__getitems__

        def getitems(indices: Any) -> Any:
            self.items += 1
            return real(indices)

        ds.__getitems__ = getitems  # type: ignore[method-assign]


def test_len_and_samples_are_the_rows_in_source_order(dataset: Manifest, cache: ShardCache) -> None:
    with CachedMapDataset(dataset.name, cache=cache) as ds:
        assert len(ds) == ROWS == dataset.num_rows
        assert shardcache.CachedMapDataset is CachedMapDataset
        for i in (0, 1, 250, ROWS - 1):
            sample = ds[i]
            assert int(sample["id"]) == i
            assert sample["id"].dtype == torch.int64
            assert sample["id"].shape == ()
            assert sample["label"].dtype == torch.int16
            assert int(sample["label"]) == i % 10
            assert sample["image"].dtype == torch.uint8
            assert sample["image"].shape == (IMAGE_BYTES,)
            assert sample["vec"].tolist() == [float(i)] * 3
            assert sample["name"] == f"row-{i}"
            assert isinstance(sample["blob"], bytes)
        assert int(ds[-1]["id"]) == ROWS - 1
        assert int(ds[-ROWS]["id"]) == 0
        assert int(ds[np.int64(5)]["id"]) == 5


def test_default_collate_builds_the_streaming_loaders_batch(dataset: Manifest, cache: ShardCache) -> None:
    streamed = next(iter(CachedDataLoader(dataset.name, cache=cache, batch_size=16, shuffle=False)))
    with CachedMapDataset(dataset.name, cache=cache) as ds:
        batch = next(iter(DataLoader(ds, batch_size=16)))
    assert batch.keys() == streamed.keys()
    for column, value in streamed.items():
        if isinstance(value, torch.Tensor):
            assert batch[column].dtype == value.dtype, column
            assert torch.equal(batch[column], value), column
        else:
            assert list(batch[column]) == list(value), column


def test_indices_are_checked_like_a_sequence(dataset: Manifest, cache: ShardCache) -> None:
    with CachedMapDataset(dataset.name, cache=cache) as ds:
        for bad in (ROWS, -ROWS - 1, 10**9):
            with pytest.raises(IndexError, match=f"index {bad} is out of range"):
                ds[bad]
        with pytest.raises(IndexError, match=f"index {ROWS}"):
            ds.__getitems__([0, ROWS])
        for bad_key in ("3", 1.0, None, slice(0, 2)):
            with pytest.raises(TypeError, match="indices must be integers"):
                ds[bad_key]  # type: ignore[index]
        with pytest.raises(TypeError, match="sequence of integers"):
            ds.__getitems__([1.5, 2.0])
        assert ds.__getitems__([]) == []
        got = ds.__getitems__([5, -1, 5, 300])
        assert [int(s["id"]) for s in got] == [5, ROWS - 1, 5, 300]


def test_arguments_are_validated(dataset: Manifest, cache: ShardCache) -> None:
    cases = [
        ({"cache_bytes": 0}, "cache_bytes=0"),
        ({"cache_bytes": "lots"}, "cache_bytes"),
        ({"read_through": "yes"}, "read_through='yes'"),
        ({"write_back": 1}, "write_back=1"),
        ({"transform": 3}, "transform=3 is not callable"),
        ({"lease_ttl": 0}, "lease_ttl=0"),
        ({"read_threads": 0}, "read_threads=0"),
        ({"columns": ["nope"]}, "'nope'"),
        ({"cache": 7}, "cache=7"),
    ]
    for options, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            CachedMapDataset(dataset.name, **{"cache": cache, **options})
    with pytest.raises(ConfigError):
        CachedMapDataset("bad\nname", cache=cache)
    with pytest.raises(TypeError):
        CachedMapDataset(dataset.name, cache)  # type: ignore[misc]  # keyword-only


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_distributed_sampler_reads_every_sample_exactly_once(
    dataset: Manifest, cache: ShardCache, world_size: int, num_workers: int
) -> None:
    """The union of the ranks is every index; the only repeats are DistributedSampler's padding."""
    counted: Counter[int] = Counter()
    per_rank = []
    for rank in range(world_size):
        ds = CachedMapDataset(dataset.name, cache=cache, columns=["id", "label"], cache_bytes="64KiB")
        calls = Calls(ds) if num_workers == 0 else None
        sampler = DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(1)
        loader = DataLoader(ds, batch_size=32, sampler=sampler, num_workers=num_workers)
        got = ids(list(loader))
        assert got == list(sampler), "delivered in the sampler's order"
        if calls is not None:
            assert calls.items == len(loader), "torch's fetcher calls __getitems__ once per batch"
        per_rank.append(got)
        counted.update(got)
        ds.close()
    total = -(-ROWS // world_size) * world_size
    assert {len(r) for r in per_rank} == {total // world_size}
    assert set(counted) == set(range(ROWS))
    padding = total - ROWS  # DistributedSampler repeats the first indices of its permutation to even out ranks
    assert sum(counted.values()) == ROWS + padding
    assert sum(c - 1 for c in counted.values()) == padding


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batch_sampler_and_custom_sampler(dataset: Manifest, cache: ShardCache, num_workers: int) -> None:
    class EveryThird(Sampler[int]):
        def __iter__(self) -> Any:
            return iter(range(2, ROWS, 3))

        def __len__(self) -> int:
            return len(range(2, ROWS, 3))

    with CachedMapDataset(dataset.name, cache=cache, columns=["id"]) as ds:
        batches = list(DataLoader(ds, sampler=EveryThird(), batch_size=10, num_workers=num_workers))
        assert ids(batches) == list(range(2, ROWS, 3))
        sampler = BatchSampler(RandomSampler(ds, generator=torch.Generator().manual_seed(0)), 50, drop_last=False)
        assert sorted(ids(list(DataLoader(ds, batch_sampler=sampler, num_workers=num_workers)))) == list(range(ROWS))
        # batch_size=None: samples one by one through __getitem__
        single = list(DataLoader(ds, sampler=SequentialSampler(range(5)), batch_size=None))
        assert [int(s["id"]) for s in single] == [0, 1, 2, 3, 4]


def test_transform_is_called_on_each_sample(dataset: Manifest, cache: ShardCache) -> None:
    with CachedMapDataset(dataset.name, cache=cache, columns=["id", "name"], transform=_double) as ds:
        assert ds[7] == {"id": 14, "name": "row-7"}
        assert [s["id"] for s in ds.__getitems__([1, 2])] == [2, 4]


def _double(sample: dict[str, Any]) -> dict[str, Any]:
    return {"id": int(sample["id"]) * 2, "name": sample["name"]}


def test_the_lru_stays_within_its_budget(dataset: Manifest, cache: ShardCache) -> None:
    largest = max(s.nbytes for s in dataset.shards)
    budget = 3 * largest
    with CachedMapDataset(dataset.name, cache=cache, cache_bytes=budget) as ds:
        order = np.random.default_rng(0).permutation(ROWS)
        for start in range(0, ROWS, 20):
            ds.__getitems__(order[start : start + 20].tolist())
            stats = ds.stats()
            assert 0 < stats.bytes_held <= budget  # no shard is larger than the budget alone
        stats = ds.stats()
        assert stats.samples == ROWS
        assert stats.evictions > 0
        assert stats.hits > dataset.num_shards, "shards were loaded again after eviction"
        assert stats.hits == stats.evictions + stats.shards_held
        assert stats.misses == stats.read_throughs == 0
    with CachedMapDataset(dataset.name, cache=cache, cache_bytes="1GiB", read_threads=1) as ds:
        for i in range(ROWS):
            ds[i]
        stats = ds.stats()
        assert (stats.hits, stats.evictions, stats.shards_held) == (dataset.num_shards, 0, dataset.num_shards)
        assert stats.lru_hits == ROWS - dataset.num_shards


def test_a_deleted_shard_is_read_through_and_written_back(make_dataset, cache: ShardCache) -> None:
    manifest = make_dataset()
    with CachedMapDataset(manifest.name, cache=cache) as ds:
        expected = [ds[i] for i in range(len(ds))]
    cache.client.delete(*shard_keys(cache, manifest, 1))
    with CachedMapDataset(manifest.name, cache=cache) as ds:
        got = ds.__getitems__(list(range(len(ds))))
        stats = ds.stats()
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
    assert (stats.misses, stats.read_throughs, stats.written_back, stats.corrupted) == (1, 1, 1, 0)
    assert stats.source_rows == manifest.shards[1].rows
    assert cache.missing_shards(manifest) == []


def test_a_corrupt_shard_is_read_through_or_refused(make_dataset, cache: ShardCache) -> None:
    manifest = make_dataset()
    key = shard_keys(cache, manifest, 2)[0]
    good = cache.client.get(key)
    first = int(manifest.shards[0].rows + manifest.shards[1].rows)
    cache.client.set(key, bytes(len(good)))
    with (
        CachedMapDataset(manifest.name, cache=cache, read_through=False) as ds,
        pytest.raises(ShardCorrupted, match="checksum"),
    ):
        ds[first]
    with CachedMapDataset(manifest.name, cache=cache) as ds:
        assert int(ds[first]["id"]) == first
        stats = ds.stats()
    assert (stats.corrupted, stats.read_throughs, stats.written_back) == (1, 1, 1)
    assert cache.client.get(key) == good, "repaired byte for byte"


@pytest.mark.parametrize("num_workers", [0, 2])
def test_read_through_false_raises_shard_missing(make_dataset, cache: ShardCache, num_workers: int) -> None:
    manifest = make_dataset()
    cache.client.delete(*shard_keys(cache, manifest, 0))
    with (
        CachedMapDataset(manifest.name, cache=cache, read_through=False) as ds,
        pytest.raises(ShardMissing, match="read_through=False"),
    ):
        list(DataLoader(ds, batch_size=8, num_workers=num_workers))
    gc.collect()  # the failed iterator's workers, now rather than during a later test


def test_a_lease_is_held_while_in_use(dataset: Manifest, cache: ShardCache) -> None:
    before = set(cache.leases(dataset.name))
    ds = CachedMapDataset(dataset.name, cache=cache, lease_ttl=30)
    assert ds.lease is not None
    assert set(cache.leases(dataset.name)) - before == {ds.lease.member}
    assert ds.lease.member.startswith(f"{dataset.version}|")
    ds.close()
    assert ds.lease is None
    assert set(cache.leases(dataset.name)) == before
    ds[0]  # reading again takes a lease again
    assert len(set(cache.leases(dataset.name)) - before) == 1
    del ds  # collected: released
    assert set(cache.leases(dataset.name)) == before


def test_workers_hold_their_own_lease_and_release_it(dataset: Manifest, cache: ShardCache) -> None:
    before = set(cache.leases(dataset.name))
    with CachedMapDataset(dataset.name, cache=cache, columns=["id"]) as ds:
        seen: list[int] = []
        loader = DataLoader(ds, batch_size=50, num_workers=2)
        for _batch in loader:
            seen.append(len(set(cache.leases(dataset.name)) - before))
        assert max(seen) == 3, "the main process's lease and one per worker"
        assert len(set(cache.leases(dataset.name)) - before) == 1, "the workers' leases went with them"
    assert set(cache.leases(dataset.name)) == before


def test_pickles_for_spawned_workers(dataset: Manifest, cache: ShardCache) -> None:
    with CachedMapDataset(dataset.name, cache=cache, columns=["id", "name"], cache_bytes="1MiB") as ds:
        ds[3]
        copy = pickle.loads(pickle.dumps(ds))
        assert copy.stats().samples == 0
        assert copy.cache_bytes == ds.cache_bytes
        assert copy[3]["name"] == "row-3"
        assert copy.lease is not None
        assert copy.lease.member != ds.lease.member
        copy.close()
        loader = DataLoader(ds, batch_size=100, num_workers=1, multiprocessing_context="spawn")
        assert ids(list(loader)) == list(range(ROWS))
