"""Mixing cached datasets (Stream) and epoch_size, against the session cluster: counted ids per stream and per
epoch across simulated ranks, resume and elastic resume of a mix, workers, stats, leases, and bad mixes."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardcache.cache import Manifest, ShardCache
from shardcache.dataloader import CachedDataLoader, CachedDataset, CachedMapDataset, Stream
from shardcache.errors import ConfigError, DatasetInUse, SourceError
from shardcache.prefetcher import prefetch

from .conftest import make_table, unique_name
from .test_resume import check_resumption, id_batches

A_ROWS, B_ROWS = 240, 150
B_START = 100_000  # B's ids, so that each id tells its stream


def _prefetch(cache: ShardCache, root: Path, table: pa.Table, name: str) -> Manifest:
    root.mkdir(parents=True)
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), root / "part-0.parquet", row_group_size=50)
    pq.write_table(table.slice(half), root / "part-1.parquet", row_group_size=50)
    return prefetch(str(root), dataset=name, cache=cache, shard_size="6KiB")


@pytest.fixture(scope="module")
def mixed(cache: ShardCache, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Manifest]]:
    """Datasets ``a`` (ids 0..239) and ``b`` (ids 100000..100149) of one schema, and ``odd`` of another."""
    root = tmp_path_factory.mktemp("mix")
    names = {key: unique_name(f"mix-{key}") for key in ("a", "b", "odd")}
    odd = make_table(60, start=500_000)
    odd = odd.set_column(odd.schema.get_field_index("label"), "label", odd["label"].cast(pa.int64()))
    out = {
        "a": _prefetch(cache, root / "a", make_table(A_ROWS), names["a"]),
        "b": _prefetch(cache, root / "b", make_table(B_ROWS, start=B_START), names["b"]),
        "odd": _prefetch(cache, root / "odd", odd, names["odd"]),
    }
    assert out["a"].num_shards >= 3
    assert out["b"].num_shards >= 2
    yield out
    for name in names.values():
        cache.delete(name, force=True)


def per_stream(ids: list[int]) -> Counter[str]:
    return Counter("b" if i >= B_START else "a" for i in ids)


def epoch_of(streams: list[Stream], cache: ShardCache, world_size: int, epoch: int, **options: Any) -> list[int]:
    """Every id of one epoch across simulated ranks, checking that the ranks yield equal batch counts."""
    out = []
    lengths = set()
    for rank in range(world_size):
        loader = CachedDataLoader(streams, cache=cache, rank=rank, world_size=world_size, **options)
        loader.set_epoch(epoch)
        batches = id_batches(loader)
        lengths.add(len(batches))
        assert len(batches) == len(loader)
        out += [i for b in batches for i in b]
    assert len(lengths) == 1, "every rank yields the same number of batches"
    return out


def check_quota(ids: list[int], quota: dict[str, int], *, world_size: int, batch_size: int, drop_last: bool) -> None:
    got = per_stream(ids)
    if drop_last:
        assert all(got[s] <= quota[s] for s in quota)
        assert sum(quota.values()) - len(ids) < world_size * batch_size
    else:
        assert all(quota[s] <= got[s] for s in quota), f"{got} short of the quotas {quota}"
        assert len(ids) - sum(quota.values()) <= world_size - 1, "padding only"


@pytest.mark.parametrize(
    ("mix", "quota"),
    [
        ([Stream("a", weight=0.7), Stream("b", weight=0.3)], {"a": 273, "b": 117}),  # 390 samples, b upsampled
        ([Stream("a", samples=101), Stream("b", samples=37)], {"a": 101, "b": 37}),  # both undersampled
        ([Stream("a", samples=55), Stream("b")], {"a": 55, "b": B_ROWS}),
    ],
)
@pytest.mark.parametrize(("world_size", "batch_size", "drop_last"), [(1, 16, False), (2, 7, True), (3, 10, False)])
def test_each_stream_gives_its_quota_every_epoch(mixed, cache, mix, quota, world_size, batch_size, drop_last):
    streams = [Stream(mixed[s.name].name, weight=s.weight, samples=s.samples) for s in mix]
    seen_a: list[int] = []
    for epoch in (0, 1):
        ids = epoch_of(streams, cache, world_size, epoch, batch_size=batch_size, drop_last=drop_last)
        check_quota(ids, quota, world_size=world_size, batch_size=batch_size, drop_last=drop_last)
        a = [i for i in ids if i < B_START]
        if quota["a"] <= A_ROWS and not drop_last:
            assert set(a) <= set(range(A_ROWS))
        seen_a += sorted(set(a))
    if 2 * quota["a"] <= A_ROWS:
        assert len(seen_a) == len(set(seen_a)), "an undersampled stream continues without replacement next epoch"


@pytest.mark.slow
def test_with_two_workers_the_batches_are_the_same(mixed, cache):
    streams = [Stream(mixed["a"].name, weight=2), Stream(mixed["b"].name, weight=1)]
    for world_size in (1, 3):
        for rank in range(world_size):
            options = {"cache": cache, "batch_size": 9, "rank": rank, "world_size": world_size}
            plain = CachedDataLoader(streams, **options)
            workers = CachedDataLoader(streams, num_workers=2, **options)
            for loader in (plain, workers):
                loader.set_epoch(1)
            assert id_batches(plain) == id_batches(workers)


def test_two_workers_deliver_the_quotas(mixed, cache):
    streams = [Stream(mixed["a"].name, samples=100), Stream(mixed["b"].name, samples=170)]
    ids = epoch_of(streams, cache, 2, 0, batch_size=12, num_workers=2)
    check_quota(ids, {"a": 100, "b": 170}, world_size=2, batch_size=12, drop_last=False)
    plain = epoch_of(streams, cache, 2, 0, batch_size=12)
    assert ids == plain, "the order does not depend on the number of workers"
    loader = CachedDataLoader(streams, cache=cache, batch_size=12, num_workers=2)
    list(loader)
    stats = loader.stats()  # counted in the workers, per stream
    assert stats.hits == sum(s.hits for s in stats.streams.values())
    assert all(s.hits >= 1 and s.bytes_read > 0 for s in stats.streams.values())
    assert [s.samples for s in stats.streams.values()] == [100, 170]


@pytest.mark.slow
def test_persistent_workers_carrying_the_next_epoch_deliver_each_epoch_of_a_mix_exactly(mixed, cache):
    # Persistent workers load the next epoch's first shards while an epoch ends (carry.py): through the
    # mix's own source, so the carried shards are the right stream's and counted per stream.
    streams = [Stream(mixed["a"].name, samples=100), Stream(mixed["b"].name, samples=170)]
    persistent = CachedDataLoader(streams, cache=cache, batch_size=12, num_workers=2, persistent_workers=True)
    for epoch in range(3):
        persistent.set_epoch(epoch)
        plain = CachedDataLoader(streams, cache=cache, batch_size=12)
        plain.set_epoch(epoch)
        assert id_batches(persistent) == id_batches(plain), f"epoch {epoch}"
    stats = persistent.stats()
    assert stats.carried_shards >= 1
    assert [s.samples for s in stats.streams.values()] == [300, 510]
    assert stats.hits == sum(s.hits for s in stats.streams.values())


def test_an_undersampled_stream_covers_its_rows_over_epochs_and_an_upsampled_one_wraps(mixed, cache):
    streams = [Stream(mixed["a"].name, samples=100), Stream(mixed["b"].name, samples=2 * B_ROWS + 20)]
    a_seen: list[int] = []
    for epoch in range(3):
        ids = epoch_of(streams, cache, 1, epoch, batch_size=50)
        assert per_stream(ids) == {"a": 100, "b": 2 * B_ROWS + 20}
        b = Counter(i for i in ids if i >= B_START)
        assert set(b) == set(range(B_START, B_START + B_ROWS)), "two whole passes of b fit in each epoch"
        a_seen += [i for i in ids if i < B_START]
    assert len(set(a_seen[:200])) == 200, "epochs 0 and 1 share no sample of a"
    assert set(a_seen) == set(range(A_ROWS)), "epoch 2 ends the first pass over a (and starts the next)"


def test_every_part_of_the_epoch_has_the_ratio(mixed, cache):
    streams = [Stream(mixed["a"].name, weight=3), Stream(mixed["b"].name, weight=1)]
    loader = CachedDataLoader(streams, cache=cache, batch_size=40, drop_last=True)
    for batch in id_batches(loader):
        assert 20 <= per_stream(batch)["a"] <= 40  # 30 expected; the window shuffle moves samples a little


def test_epoch_size_on_one_dataset_shortens_or_lengthens_the_epoch(mixed, cache):
    name = mixed["a"].name
    short = [i for e in range(3) for i in ids_of_epoch(name, cache, e, epoch_size=100)]
    assert len(short) == 300
    assert len(set(short[:200])) == 200, "shorter epochs continue where the last stopped"
    assert set(short) == set(range(A_ROWS))
    long = ids_of_epoch(name, cache, 0, epoch_size=A_ROWS * 2 + 10)
    assert len(long) == 2 * A_ROWS + 10
    assert set(Counter(long).values()) <= {2, 3}
    assert set(long) == set(range(A_ROWS))
    whole = ids_of_epoch(name, cache, 1)
    assert ids_of_epoch(name, cache, 1, epoch_size=A_ROWS) == whole, "epoch_size = rows plans as without it"


def ids_of_epoch(name: Any, cache: ShardCache, epoch: int, **options: Any) -> list[int]:
    loader = CachedDataLoader(name, cache=cache, batch_size=32, **options)
    loader.set_epoch(epoch)
    return [i for b in id_batches(loader) for i in b]


def test_resume_of_a_mix_mid_epoch_yields_exactly_the_rest(mixed, cache):
    streams = [Stream(mixed["a"].name, weight=0.6), Stream(mixed["b"].name, weight=0.4)]

    def make() -> CachedDataLoader:
        loader = CachedDataLoader(streams, cache=cache, batch_size=11, rank=1, world_size=2, epoch_size=333)
        loader.set_epoch(3)
        return loader

    check_resumption(make, points=4)


@pytest.mark.parametrize(("before", "after", "drop_last"), [(2, 3, False), (3, 1, True), (1, 2, False)])
def test_elastic_resume_of_a_mix_delivers_each_planned_sample_once(mixed, cache, before, after, drop_last):
    streams = [Stream(mixed["a"].name, samples=130), Stream(mixed["b"].name, samples=190)]
    batch_size = 8
    options = {"cache": cache, "batch_size": batch_size, "drop_last": drop_last}
    planned = Counter(epoch_of(streams, cache, 1, 2, batch_size=1))  # one rank, batch 1: the plan itself
    assert per_stream(list(planned.elements())) == {"a": 130, "b": 190}
    delivered: Counter[int] = Counter()
    states = []
    for rank in range(before):
        loader = CachedDataLoader(streams, rank=rank, world_size=before, **options)
        loader.set_epoch(2)
        iterator = iter(loader)
        for _ in range(3 + rank):
            delivered.update(next(iterator)["id"].tolist())
        states.append(json.loads(json.dumps(loader.state_dict())))
    lengths = set()
    for rank in range(after):
        loader = CachedDataLoader(streams, rank=rank, world_size=after, **options)
        loader.load_state_dict(states)
        rest = id_batches(loader)
        lengths.add(len(rest))
        delivered.update(i for b in rest for i in b)
    assert len(lengths) == 1, "every new rank yields the same number of batches"
    if drop_last:
        assert not delivered - planned
        assert sum((planned - delivered).values()) < (before + after) * batch_size
    else:
        assert not planned - delivered, "every planned sample delivered"
        assert sum((delivered - planned).values()) <= (before - 1) + (after - 1), "padding only"


def test_a_state_loads_only_into_the_same_mix(mixed, cache):
    a, b = mixed["a"].name, mixed["b"].name
    loader = CachedDataLoader([Stream(a, weight=1), Stream(b, weight=1)], cache=cache, batch_size=10)
    next(iter(loader))
    state = loader.state_dict()
    assert state["mix"][0] == {"name": a, "version": mixed["a"].version, "samples": 195}
    for other in (
        [Stream(a, weight=2), Stream(b, weight=1)],
        [Stream(b, weight=1), Stream(a, weight=1)],
        a,
    ):
        with pytest.raises(ConfigError, match="the state dict belongs to the mix"):
            CachedDataLoader(other, cache=cache, batch_size=10).load_state_dict(state)
    plain = CachedDataLoader(a, cache=cache, batch_size=10)
    with pytest.raises(ConfigError, match="epoch_size=100"):
        CachedDataLoader(a, cache=cache, batch_size=10, epoch_size=100).load_state_dict(plain.state_dict())
    CachedDataLoader([Stream(a, weight=1), Stream(b, weight=1)], cache=cache, batch_size=10).load_state_dict(state)


def test_stats_per_stream_and_leases_on_every_version(mixed, cache):
    a, b = mixed["a"], mixed["b"]
    loader = CachedDataLoader([Stream(a.name, samples=50), Stream(b.name, samples=70)], cache=cache, batch_size=20)
    iterator = iter(loader)
    next(iterator)
    for m in (a, b):
        assert any(x.startswith(f"{m.version}|") for x in cache.leases(m.name))
        with pytest.raises(DatasetInUse):
            cache.delete(m.name)
    for _ in iterator:
        pass
    assert cache.leases(a.name) == []
    assert cache.leases(b.name) == []
    stats = loader.stats()
    assert set(stats.streams) == {a.name, b.name}
    assert stats.streams[a.name].samples == 50
    assert stats.streams[b.name].samples == 70
    assert stats.samples == 120
    for m in (a, b):
        assert stats.streams[m.name].hits >= 1
    assert stats.hits == sum(s.hits for s in stats.streams.values())
    assert stats.as_dict()["streams"][a.name]["samples"] == 50


def test_streams_of_another_schema_need_a_projection(mixed, cache):
    a, odd = mixed["a"].name, mixed["odd"].name
    with pytest.raises(ConfigError, match=rf"stream '{odd}' does not have the columns .*label \(int16 vs int64\)"):
        CachedDataset([Stream(a), Stream(odd)], cache=cache)
    ds = CachedDataset([Stream(a), Stream(odd, columns=["id", "image"])], cache=cache, columns=["id", "image"])
    assert ds.columns == ["id", "image"]
    with pytest.raises(ConfigError, match=rf"stream '{odd}'.*'nope'"):
        CachedDataset([Stream(a), Stream(odd, columns=["nope"])], cache=cache)
    loader = CachedDataLoader([Stream(a, samples=20), Stream(odd, samples=30)], cache=cache, batch_size=25,
                              columns=["id", "image", "name"])  # fmt: skip
    ids = [i for batch in id_batches(loader) for i in batch]
    assert Counter(i >= 500_000 for i in ids) == {False: 20, True: 30}


def test_bad_mixes_raise_config_error(mixed, cache):
    a, b = mixed["a"], mixed["b"]
    with pytest.raises(ConfigError, match="in the mix twice"):
        CachedDataset([Stream(a.name), Stream(a.name, version=a.version)], cache=cache)
    with pytest.raises(ConfigError, match="have no weight while others do"):
        CachedDataset([Stream(a.name, weight=1), Stream(b.name)], cache=cache)
    with pytest.raises(ConfigError, match="give each Stream its version"):
        CachedDataset([Stream(a.name)], cache=cache, version=a.version)
    with pytest.raises(ConfigError, match="list of Stream"):
        CachedDataset([a.name, b.name], cache=cache)  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="epoch_size=0"):
        CachedDataset(a.name, cache=cache, epoch_size=0)


def test_two_versions_of_one_dataset_mix_under_labels_with_the_version(mixed, cache, tmp_path):
    a = mixed["a"]
    root = tmp_path / "a2"
    v2 = _prefetch(cache, root, make_table(40, start=900_000), a.name)
    try:
        loader = CachedDataLoader(
            [Stream(a.name, version=a.version, samples=30), Stream(a.name, version=v2.version, samples=40)],
            cache=cache, batch_size=10,
        )  # fmt: skip
        ids = [i for batch in id_batches(loader) for i in batch]
        assert Counter(i >= 900_000 for i in ids) == {False: 30, True: 40}
        assert set(loader.stats().streams) == {f"{a.name}@{a.version}", f"{a.name}@{v2.version}"}
    finally:
        cache.delete(a.name, version=v2.version, force=True)


def test_a_shard_missing_from_one_stream_is_read_through_from_its_own_source(cache, tmp_path):
    a = _prefetch(cache, tmp_path / "a", make_table(90), unique_name("mix-rt-a"))
    b = _prefetch(cache, tmp_path / "b", make_table(70, start=B_START), unique_name("mix-rt-b"))
    try:
        streams = [Stream(a.name, samples=60), Stream(b.name, samples=100)]
        expected = id_batches(CachedDataLoader(streams, cache=cache, batch_size=16))
        cache.client.delete(*(cache.keys.chunk(b.shards[1].key, c) for c in range(b.shards[1].chunks)))
        assert cache.missing_shards(b) == [1]
        loader = CachedDataLoader(streams, cache=cache, batch_size=16)
        assert id_batches(loader) == expected
        stats = loader.stats().streams
        assert (stats[b.name].misses, stats[b.name].read_throughs, stats[b.name].written_back) == (1, 1, 1)
        assert (stats[a.name].misses, stats[a.name].read_throughs) == (0, 0)
        assert cache.missing_shards(b) == []
    finally:
        for m in (a, b):
            cache.delete(m.name, force=True)


def kept(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A prefetch transform (module level: its name and code make the manifest's transform id)."""
    return batch


def test_a_stream_prefetched_with_a_transform_is_read_through_with_its_own(cache, tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    pq.write_table(make_table(80), root / "part-0.parquet", row_group_size=40)
    t = prefetch(str(root), dataset=unique_name("mix-tf"), cache=cache, shard_size="6KiB", transform=kept)
    raw = _prefetch(cache, tmp_path / "raw", make_table(60, start=B_START), unique_name("mix-raw"))
    try:
        with pytest.raises(ConfigError, match="prefetch_transform"):  # the dataset's applies to every stream
            CachedDataLoader([Stream(t.name), Stream(raw.name)], cache=cache, batch_size=16, prefetch_transform=kept)
        streams = [Stream(t.name, prefetch_transform=kept), Stream(raw.name)]
        expected = id_batches(CachedDataLoader(streams, cache=cache, batch_size=16))
        cache.client.delete(*(cache.keys.chunk(t.shards[0].key, c) for c in range(t.shards[0].chunks)))
        loader = CachedDataLoader(streams, cache=cache, batch_size=16, num_workers=2)
        assert id_batches(loader) == expected
        assert loader.stats().streams[t.name].read_throughs == 1
        with pytest.raises(ConfigError, match="prefetch_transform"):
            Stream(t.name, prefetch_transform="kept")
    finally:
        for m in (t, raw):
            cache.delete(m.name, force=True)


# --- degenerate mixes and epoch sizes: a clear ConfigError at construction, or a defined outcome ----------------


@pytest.fixture(scope="module")
def empty(cache: ShardCache, mixed: dict[str, Manifest]) -> Iterator[Manifest]:
    """A complete version with no rows, of a's schema. Only the store API makes one: prefetch refuses."""
    name = unique_name("mix-empty")
    cache.commit(cache.begin(Manifest(name=name, version="v1", schema=mixed["a"].schema, shards=())))
    yield cache.manifest(name)
    cache.delete(name, force=True)


def test_prefetch_makes_no_version_without_rows(cache, tmp_path):
    (tmp_path / "header.csv").write_text("id,label\n")
    pq.write_table(make_table(4).slice(0, 0), tmp_path / "zero.parquet")
    for source, options in ((tmp_path / "header.csv", {}), (tmp_path / "zero.parquet", {"columns": ["id"]})):
        name = unique_name("mix-none")
        with pytest.raises(SourceError, match="holds no rows"):
            prefetch(str(source), dataset=name, cache=cache, **options)
        assert cache.versions(name) == []


@pytest.mark.parametrize(
    ("kind", "options"),
    [("weight", {}), ("weight", {"epoch_size": 50}), ("samples", {}), ("rows", {}), ("rows", {"epoch_size": 50})],
)
def test_a_stream_without_rows_is_refused_at_construction_naming_it(mixed, cache, empty, kind, options):
    a, e = mixed["a"].name, empty.name
    streams = {
        "weight": [Stream(a, weight=1), Stream(e, weight=1)],
        "samples": [Stream(a), Stream(e, samples=5)],
        "rows": [Stream(a), Stream(e)],  # asks for its rows, none: still refused (it would give nothing)
    }[kind]
    want = rf"stream '{e}' \('{e}' version v1\) has no rows, .*: drop it from the mix"
    with pytest.raises(ConfigError, match=want):
        CachedDataset(streams, cache=cache, batch_size=4, **options)
    with pytest.raises(ConfigError, match=want):
        CachedDataLoader(streams, cache=cache, batch_size=4, num_workers=2, **options)


def test_a_lone_dataset_without_rows_is_refused_by_the_loader_and_empty_by_index(cache, empty):
    for options in ({}, {"epoch_size": 10}, {"num_workers": 2}):
        with pytest.raises(ConfigError, match=rf"dataset '{empty.name}' version v1 has no rows; prefetch a non-empty"):
            CachedDataLoader(empty.name, cache=cache, batch_size=4, **options)
    ds = CachedMapDataset(empty.name, cache=cache)
    assert len(ds) == 0
    for index in (0, -1):
        with pytest.raises(IndexError, match=f"index {index} is out of range for dataset '{empty.name}' of 0 samples"):
            ds[index]


def test_zero_negative_and_partial_epoch_sizes_weights_and_samples_raise_config_error(mixed, cache):
    a, b = mixed["a"].name, mixed["b"].name
    for epoch_size in (0, -3):
        with pytest.raises(ConfigError, match=f"epoch_size={epoch_size} is invalid: pass the samples of an epoch"):
            CachedDataLoader([Stream(a), Stream(b)], cache=cache, batch_size=4, epoch_size=epoch_size)
    with pytest.raises(ConfigError, match=r"weight=0 is invalid: .*drop it from the mix"):
        CachedDataLoader([Stream(a, weight=1), Stream(b, weight=0)], cache=cache, batch_size=4)
    with pytest.raises(ConfigError, match=r"samples=0 is invalid: .*drop it from the mix"):
        CachedDataLoader([Stream(a), Stream(b, samples=0)], cache=cache, batch_size=4)
    with pytest.raises(ConfigError, match=f"streams '{b}' have no weight while others do"):
        CachedDataLoader([Stream(a, weight=1), Stream(b)], cache=cache, batch_size=4, epoch_size=20)
    with pytest.raises(ConfigError, match=f"stream '{b}' gets no sample in an epoch of 10: raise epoch_size"):
        CachedDataLoader([Stream(a, weight=100), Stream(b, weight=1)], cache=cache, batch_size=4, epoch_size=10)


def test_an_asked_for_epoch_too_small_for_a_batch_on_every_rank_with_drop_last_is_refused(mixed, cache):
    a, b = mixed["a"].name, mixed["b"].name
    cases = [
        (a, {"epoch_size": 15}, 2, r"an epoch of 15 samples \(epoch_size=15\) gives each of 2 rank\(s\) 7"),
        ([Stream(a, weight=2), Stream(b, weight=1)], {"epoch_size": 15}, 2, "an epoch of 15 samples"),
        ([Stream(a, samples=9), Stream(b, samples=6)], {}, 2, r"an epoch of 15 samples \(the streams' quotas\)"),
    ]
    for name, options, world_size, start in cases:
        want = start + r".*fewer than batch_size=8: with drop_last=True no rank would yield a batch; .*at least 16"
        with pytest.raises(ConfigError, match=want):
            CachedDataLoader(name, cache=cache, batch_size=8, drop_last=True, rank=1, world_size=world_size,
                             num_workers=2, **options)  # fmt: skip
        with pytest.raises(ConfigError, match=want):
            CachedDataset(name, cache=cache, batch_size=8, drop_last=True, rank=0, world_size=world_size, **options)
    # One sample more per rank than the smallest refused: every rank yields one whole batch.
    ids = epoch_of([Stream(a, samples=10), Stream(b, samples=6)], cache, 2, 0, batch_size=8, drop_last=True)
    assert per_stream(ids) == {"a": 10, "b": 6}
    assert len(set(ids)) == 16
    # Without drop_last a tiny epoch pads: 3 samples over 4 ranks give one batch of one each.
    ids = epoch_of(a, cache, 4, 0, batch_size=8, epoch_size=3)  # type: ignore[arg-type]
    assert len(ids) == 4
    assert len(set(ids)) == 3


def test_a_lone_dataset_read_whole_smaller_than_a_batch_per_rank_yields_no_batch_with_drop_last(mixed, cache):
    # As a DataLoader with drop_last does: 240 rows over 4 ranks is 60 a rank, fewer than a batch of 61.
    for rank in range(4):
        loader = CachedDataLoader(mixed["a"].name, cache=cache, batch_size=61, drop_last=True, rank=rank, world_size=4,
                                  num_workers=2)  # fmt: skip
        assert len(loader) == 0
        assert list(loader) == []
