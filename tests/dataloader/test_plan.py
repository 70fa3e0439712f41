"""The sample plan: exactly-once delivery, equal batch counts, locality, determinism and elastic resume."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardcache.dataloader.plan import EpochPlan, PlanSegment, remaining_stream, resume_point
from shardcache.errors import ConfigError
from shardcache.sampling import default_window, row_offsets

# Uneven shards, one-row shards, empty shards, and totals below world_size * batch_size.
ROWS = [
    (5, 1, 9, 1, 30, 2, 17),
    (1,),
    (1, 1, 2),
    (40, 40, 40, 40),
    (0, 3, 0, 50, 1),
    (64, 1, 127, 3, 3, 90, 1, 1, 200),
]


def plans(
    rows: Sequence[int],
    world_size: int,
    batch_size: int,
    drop_last: bool,
    *,
    history: Sequence[PlanSegment] = (),
    **base: object,
) -> list[EpochPlan]:
    base = {"seed": 7, "epoch": 3, **base}
    return [
        EpochPlan.build(
            rows=rows, world_size=world_size, rank=rank, batch_size=batch_size, drop_last=drop_last,
            history=history, **base,  # type: ignore[arg-type]
        )
        for rank in range(world_size)
    ]


def batches(plan: EpochPlan, start: int = 0, stop: int | None = None) -> list[np.ndarray]:
    stop = plan.num_batches if stop is None else stop
    return [plan.batch(j) for j in range(start, stop)]


def flat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)


def check_layout(ranks: list[EpochPlan]) -> None:
    """Every rank yields the same number of batches of the same sizes; only the last may be short."""
    batch_size = ranks[0].batch_size
    assert len({p.num_batches for p in ranks}) == 1
    assert len({p.num_samples for p in ranks}) == 1
    for plan in ranks:
        sizes = [len(b) for b in batches(plan)]
        assert all(s == batch_size for s in sizes[:-1])
        assert all(0 < s <= batch_size for s in sizes)
        if plan.drop_last:
            assert all(s == batch_size for s in sizes)


def check_delivery(
    pool: np.ndarray, got: np.ndarray, world_size: int, batch_size: int, drop_last: bool, *, complete: bool = True
) -> None:
    """``got`` (one segment, all ranks) delivers the undelivered ``pool`` by the contract's rule.

    ``complete=False`` checks a segment stopped part-way: nothing outside the pool, padding bounded.
    """
    counts = Counter(got.tolist())
    pool_set = set(pool.tolist())
    assert len(pool_set) == len(pool)
    assert set(counts) <= pool_set, "delivered a sample that was already delivered or does not exist"
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates <= (0 if drop_last else world_size - 1)
    if complete and drop_last:
        assert len(pool) - len(got) < world_size * batch_size
    elif complete:
        assert set(counts) == pool_set, "a sample was never delivered"


def all_ids(rows: Sequence[int]) -> np.ndarray:
    return np.arange(sum(rows), dtype=np.int64)


def run_chain(
    rows: Sequence[int],
    layouts: Sequence[tuple[int, int, bool]],
    consumed: Sequence[Sequence[int]],
    **base: object,
) -> None:
    """Run one epoch over several layouts, stopping layout k after ``consumed[k]`` batches per rank.

    Between layouts the run resumes through resume_point; the last layout runs to the end. Each
    segment must deliver exactly what its predecessors left, by the rule of its own layout.
    """
    everything = all_ids(rows)
    delivered: list[np.ndarray] = []
    history: tuple[PlanSegment, ...] = ()
    starts: tuple[int, ...] = (0,) * layouts[0][0]
    segment_key: object = None
    for k, (world_size, batch_size, drop_last) in enumerate(layouts):
        if (history, world_size, batch_size, drop_last) != segment_key:  # a new segment re-plans
            segment_key = (history, world_size, batch_size, drop_last)
            pool = np.setdiff1d(everything, flat(delivered))
            segment_got: list[np.ndarray] = []
        ranks = plans(rows, world_size, batch_size, drop_last, history=history, **base)
        check_layout(ranks)
        last = k == len(consumed)
        stops = (ranks[0].num_batches,) * world_size if last else tuple(consumed[k])
        got = flat([b for p, a, z in zip(ranks, starts, stops, strict=True) for b in batches(p, a, z)])
        segment_got.append(got)
        delivered.append(got)
        check_delivery(pool, flat(segment_got), world_size, batch_size, drop_last, complete=last)
        if not last:
            nxt_world, nxt_batch, nxt_drop = layouts[k + 1]
            segment = PlanSegment(world_size=world_size, batch_size=batch_size, drop_last=drop_last, consumed=stops)
            history, starts = resume_point(
                history=history, current=segment, world_size=nxt_world, batch_size=nxt_batch, drop_last=nxt_drop
            )
    if not any(drop_last for _, _, drop_last in layouts):
        assert set(flat(delivered).tolist()) == set(everything.tolist())


def midpoints(num_batches: int, world_size: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Consumed counts per rank: none, one, half, all but one, all, and a few uneven ones."""
    even = sorted({0, min(1, num_batches), num_batches // 2, max(num_batches - 1, 0), num_batches})
    points = [(k,) * world_size for k in even]
    points += [tuple(int(c) for c in rng.integers(0, num_batches + 1, world_size)) for _ in range(3)]
    return points


def check_resume(
    rows: Sequence[int],
    world_size: int,
    batch_size: int,
    drop_last: bool,
    world_size2: int,
    batch_size2: int | None = None,
    drop_last2: bool | None = None,
    **base: object,
) -> None:
    """Resume at many midpoints: the same layout continues exactly, another one re-plans what is left."""
    batch_size2 = batch_size if batch_size2 is None else batch_size2
    drop_last2 = drop_last if drop_last2 is None else drop_last2
    ranks = plans(rows, world_size, batch_size, drop_last, **base)
    rng = np.random.default_rng(sum(rows) * 31 + world_size)
    for consumed in midpoints(ranks[0].num_batches, world_size, rng):
        segment = PlanSegment(world_size=world_size, batch_size=batch_size, drop_last=drop_last, consumed=consumed)
        # Same layout: no new segment, each rank continues with exactly its remaining batches.
        history, starts = resume_point(
            history=(), current=segment, world_size=world_size, batch_size=batch_size, drop_last=drop_last
        )
        assert (history, starts) == ((), consumed)
        resumed = plans(rows, world_size, batch_size, drop_last, history=history, **base)
        for before, after, start in zip(ranks, resumed, starts, strict=True):
            assert [b.tolist() for b in batches(after, start)] == [b.tolist() for b in batches(before, start)]
        # Another layout: the undelivered samples exactly once, equal batch counts, padding bounded.
        layouts = [(world_size, batch_size, drop_last), (world_size2, batch_size2, drop_last2)]
        run_chain(rows, layouts, [consumed], **base)
        # ... planned in the previous streams' order: rank 0's rest first, then rank 1's, ...
        history, _ = resume_point(
            history=(), current=segment, world_size=world_size2, batch_size=batch_size2, drop_last=drop_last2
        )
        if not history:
            continue
        left = remaining_stream(rows=rows, history=history, **{"seed": 7, "epoch": 3, **base})  # type: ignore[arg-type]
        delivered = set(flat([b for p, c in zip(ranks, consumed, strict=True) for b in batches(p, 0, c)]).tolist())
        assert set(left.tolist()) == set(range(sum(rows))) - delivered
        assert len(left) == len(set(left.tolist()))
        rest = [x for p, c in zip(ranks, consumed, strict=True) for x in p.samples[c * batch_size :].tolist()]
        rest = [x for x in dict.fromkeys(rest) if x not in delivered]
        assert left[np.isin(left, rest)].tolist() == rest
        if not drop_last:
            assert left.tolist() == rest


@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
@pytest.mark.parametrize("batch_size", [1, 7, 64])
@pytest.mark.parametrize("drop_last", [False, True])
def test_one_epoch_delivers_every_sample_once_with_equal_batch_counts(rows, world_size, batch_size, drop_last):
    ranks = plans(rows, world_size, batch_size, drop_last)
    check_layout(ranks)
    got = flat([b for p in ranks for b in batches(p)])
    check_delivery(all_ids(rows), got, world_size, batch_size, drop_last)
    if not drop_last:
        assert ranks[0].num_samples == -(-sum(rows) // world_size)


def test_fewer_samples_than_ranks_pads_every_rank_to_one_batch():
    ranks = plans((1, 2), 5, 7, False)
    assert [p.num_batches for p in ranks] == [1] * 5
    assert sorted(set(flat([p.batch(0) for p in ranks]).tolist())) == [0, 1, 2]
    assert [p.num_batches for p in plans((1, 2), 5, 7, True)] == [0] * 5


def test_same_seed_and_epoch_give_the_same_order_and_other_epochs_another():
    rows = (30, 5, 70, 12, 1, 44)
    first = [p.samples.tolist() for p in plans(rows, 3, 4, False)]
    assert first == [p.samples.tolist() for p in plans(rows, 3, 4, False)]
    assert first != [p.samples.tolist() for p in plans(rows, 3, 4, False, epoch=4)]
    assert first != [p.samples.tolist() for p in plans(rows, 3, 4, False, seed=8)]


def test_shuffle_false_gives_source_order():
    ranks = plans((3, 8, 1, 9), 4, 4, False, shuffle=False)
    assert [p.samples.tolist() for p in ranks] == [
        [0, 1, 2, 3, 4, 5],
        [6, 7, 8, 9, 10, 10],
        [11, 12, 13, 14, 15, 15],
        [16, 17, 18, 19, 20, 20],
    ]
    ranks = plans((3, 8, 1, 9), 4, 4, True, shuffle=False)
    assert [p.samples.tolist() for p in ranks] == [[0, 1, 2, 3], [6, 7, 8, 9], [11, 12, 13, 14], [16, 17, 18, 19]]


def test_shuffle_permutes_shards_and_rows_and_the_window_bounds_mixing():
    rows = (50, 50, 50, 50, 50, 50, 50, 50)
    offsets = row_offsets(rows)
    unmixed = plans(rows, 1, 10, False, window=1)[0].samples
    shards = np.searchsorted(offsets[1:], unmixed, side="right")
    runs = shards[np.r_[0, np.flatnonzero(np.diff(shards)) + 1]]
    assert sorted(runs.tolist()) == list(range(8)), "without a window each shard is one contiguous run"
    assert runs.tolist() != list(range(8)), "shards are permuted"
    assert unmixed[:50].tolist() != sorted(unmixed[:50].tolist()), "rows within a shard are permuted"
    mixed = plans(rows, 1, 10, False)[0].samples
    window = default_window(rows)
    assert window == 200
    for start in range(0, len(mixed), window):
        block = slice(start, start + window)
        assert sorted(mixed[block].tolist()) == sorted(unmixed[block].tolist())
        assert mixed[block].tolist() != unmixed[block].tolist()
    first_batch_shards = np.unique(np.searchsorted(offsets[1:], mixed[:10], side="right"))
    assert len(first_batch_shards) > 1, "a batch mixes shards"


@pytest.mark.parametrize("rows", [(100,) * 12, (37, 120, 5, 64, 90, 11, 150, 80, 66, 23), tuple(range(1, 40))])
@pytest.mark.parametrize("world_size", [2, 3, 5])
@pytest.mark.parametrize("drop_last", [False, True])
def test_each_shard_is_read_by_at_most_two_neighbouring_ranks(rows, world_size, drop_last):
    plan = plans(rows, world_size, 8, drop_last)[0]
    readers = plan.shard_ranks()
    part = sum(rows) // world_size
    # A shard larger than a rank's part necessarily spans more ranks: ceil(rows / part) + 1 at most.
    most = 2 if part >= max(rows) else -(-max(rows) // part) + 1
    for ranks in readers.values():
        assert len(ranks) <= most
        assert list(ranks) == list(range(ranks[0], ranks[0] + len(ranks)))
    if not drop_last:
        assert set(readers) == {i for i, n in enumerate(rows) if n}
    shared = [s for s, ranks in readers.items() if len(ranks) == 2]
    assert len(shared) <= world_size - 1


def test_a_batch_past_the_last_raises_index_error():
    plan = plans((5, 1, 9, 1, 30, 2, 17), 1, 4, False)[0]
    assert len(plan.batch(plan.num_batches - 1)) == 65 % 4
    with pytest.raises(IndexError, match="out of range"):
        plan.batch(plan.num_batches)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"world_size": 0}, "world_size=0"),
        ({"rank": 2}, "rank=2 is invalid for world_size=2"),
        ({"rank": -1}, "rank=-1"),
        ({"rows": ()}, r"rows=\(\) is invalid"),
        ({"rows": (3, -1)}, "rows contains -1"),
        ({"rows": (3, 1.5)}, "rows contains 1.5"),
        ({"seed": -1}, "seed=-1"),
        ({"window": 0}, "window=0"),
        ({"drop_last": "yes"}, "drop_last='yes'"),
        ({"history": ({"world_size": 2},)}, "PlanSegment"),
        ({"history": (PlanSegment(world_size=2, batch_size=2, drop_last=False, consumed=(99, 0)),)}, "exceeds"),
    ],
)
def test_invalid_arguments_raise_config_error_naming_them(change, match):
    args = {"rows": (3, 4), "seed": 0, "epoch": 0, "world_size": 2, "rank": 0, "batch_size": 2, "drop_last": False}
    with pytest.raises(ConfigError, match=match):
        EpochPlan.build(**{**args, **change})


def test_plan_segment_needs_one_consumed_count_per_rank():
    with pytest.raises(ConfigError, match="has 2 counts but world_size=3"):
        PlanSegment(world_size=3, batch_size=4, drop_last=False, consumed=(1, 2))
    with pytest.raises(ConfigError, match="consumed=-1"):
        PlanSegment(world_size=2, batch_size=4, drop_last=False, consumed=(1, -1))


@pytest.mark.parametrize("rows", [(5, 1, 9, 1, 30, 2, 17), (64, 1, 127, 3, 3, 90, 1, 1, 200), (1, 1, 2)])
@pytest.mark.parametrize(("world_size", "world_size2"), [(4, 3), (2, 5), (3, 3), (1, 2), (5, 1)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_resume_on_another_world_size_delivers_the_rest_exactly_once(rows, world_size, world_size2, drop_last):
    check_resume(rows, world_size, 7, drop_last, world_size2)


def test_resume_may_change_batch_size_and_drop_last():
    check_resume((64, 1, 127, 3, 3, 90), 3, 8, False, 2, batch_size2=5, drop_last2=True)
    check_resume((64, 1, 127, 3, 3, 90), 3, 8, True, 4, batch_size2=16, drop_last2=False)
    check_resume((64, 1, 127, 3, 3, 90), 2, 8, False, 2, batch_size2=3, shuffle=False)


def test_resume_chains_three_to_two_to_four():
    rows = (64, 1, 127, 3, 3, 90, 1, 1, 200)
    for drop_last in (False, True):
        run_chain(rows, [(3, 7, drop_last), (2, 7, drop_last), (4, 7, drop_last)], [(5, 3, 8), (4, 6)])
        run_chain(rows, [(3, 7, drop_last), (2, 7, drop_last), (4, 7, drop_last)], [(1, 1, 1), (0, 0)])
        run_chain(rows, [(3, 7, drop_last), (3, 7, drop_last), (4, 7, drop_last)], [(2, 9, 4), (7, 12, 5)])


def test_resume_before_any_batch_plans_the_new_layout_from_scratch():
    segment = PlanSegment(world_size=4, batch_size=7, drop_last=False, consumed=(0, 0, 0, 0))
    history, starts = resume_point(history=(), current=segment, world_size=3, batch_size=7, drop_last=False)
    assert (history, starts) == ((), (0, 0, 0))


@settings(deadline=None, max_examples=100)
@given(
    rows=st.lists(st.integers(0, 40), min_size=1, max_size=12),
    world_size=st.integers(1, 6),
    world_size2=st.integers(1, 6),
    batch_size=st.integers(1, 9),
    drop_last=st.booleans(),
    seed=st.integers(0, 2**32),
    data=st.data(),
)
def test_property_any_layout_and_resume_point_delivers_by_the_contract(
    rows, world_size, world_size2, batch_size, drop_last, seed, data
):
    ranks = plans(rows, world_size, batch_size, drop_last, seed=seed)
    check_layout(ranks)
    check_delivery(all_ids(rows), flat([b for p in ranks for b in batches(p)]), world_size, batch_size, drop_last)
    consumed = data.draw(st.lists(st.integers(0, ranks[0].num_batches), min_size=world_size, max_size=world_size))
    run_chain(rows, [(world_size, batch_size, drop_last), (world_size2, batch_size, drop_last)], [consumed], seed=seed)
