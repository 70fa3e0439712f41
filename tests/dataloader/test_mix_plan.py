"""The plan of a mix (and of epoch_size), without Redis: quotas, the interleave, passes across epochs,
exactly-once per planned slot across ranks, elastic resume, and the lone-dataset plan unchanged."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest

from shardcache.dataloader import Stream
from shardcache.dataloader.plan import EpochPlan, PlanSegment, remaining_stream, resume_point
from shardcache.dataloader.stream import stream_quotas
from shardcache.errors import ConfigError
from shardcache.sampling import interleave, mix_stream, quotas, row_offsets, shard_stream, stream_take
from shardcache.sampling.passes import Passes

# Stream 0: 7 shards (60 rows), stream 1: 3 shards (25 rows), stream 2: 2 shards (9 rows).
STREAMS = [(5, 1, 9, 30, 2, 12, 1), (10, 7, 8), (4, 5)]
ROWS = tuple(n for s in STREAMS for n in s)


def mix_of(quota: Sequence[int]) -> tuple[tuple[int, int], ...]:
    return tuple((len(s), q) for s, q in zip(STREAMS, quota, strict=True))


def stream_of(ids: np.ndarray) -> np.ndarray:
    """The stream of each flat id."""
    bounds = row_offsets([sum(s) for s in STREAMS])
    return np.searchsorted(bounds[1:], ids, side="right")


def rank_plans(mix, world_size, batch_size, drop_last, *, epoch=3, history=(), shuffle=True) -> list[EpochPlan]:
    return [
        EpochPlan.build(
            rows=ROWS, seed=5, epoch=epoch, shuffle=shuffle, world_size=world_size, rank=r, batch_size=batch_size,
            drop_last=drop_last, history=history, mix=mix,
        )
        for r in range(world_size)
    ]


def planned(mix, *, epoch=3, shuffle=True) -> np.ndarray:
    return remaining_stream(rows=ROWS, seed=5, epoch=epoch, shuffle=shuffle, mix=mix)


def test_quotas_split_by_largest_remainder_and_sum_exactly():
    assert quotas(10, [0.7, 0.3]) == (7, 3)
    assert quotas(100, [1, 1, 1]) == (34, 33, 33)
    assert quotas(7, [0.5, 0.25, 0.25]) == (3, 2, 2)  # 3.5, 1.75, 1.75: the two largest remainders get one
    assert quotas(7, [2, 1, 1]) == (3, 2, 2)
    assert quotas(3, [1, 1]) == (2, 1)  # a tie goes to the earlier stream
    for total in range(0, 60):
        assert sum(quotas(total, [0.13, 0.6, 0.27])) == total


def test_interleave_keeps_the_ratio_in_every_prefix():
    counts = (70, 20, 10)
    owners = interleave(counts)
    assert Counter(owners.tolist()) == {0: 70, 1: 20, 2: 10}
    seen = np.zeros(3)
    for k, s in enumerate(owners.tolist(), start=1):
        seen[s] += 1
        assert np.all(np.abs(seen - np.array(counts) * k / 100) <= 1)


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 4, 7])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("quota", [(60, 25, 9), (31, 50, 6), (7, 3, 40), (1, 1, 1)])
def test_each_planned_slot_is_delivered_once_with_equal_batches(world_size, batch_size, drop_last, quota):
    mix = mix_of(quota)
    stream = planned(mix)
    assert Counter(stream_of(stream).tolist()) == dict(enumerate(quota)), "each stream gives exactly its quota"
    ranks = rank_plans(mix, world_size, batch_size, drop_last)
    assert len({p.num_batches for p in ranks}) == 1, "equal batch counts per rank"
    got = Counter(np.concatenate([p.samples for p in ranks]).tolist())
    want = Counter(stream.tolist())
    if drop_last:
        assert not got - want, "nothing beyond the plan"
        assert sum((want - got).values()) < world_size * batch_size
    else:
        assert not want - got, "every planned slot delivered"
        assert sum((got - want).values()) <= world_size - 1, "padding only"


def test_one_stream_read_whole_plans_exactly_as_no_mix():
    rows = STREAMS[0]
    for world_size, drop_last, shuffle in ((1, False, True), (3, True, True), (2, False, False)):
        for epoch in (0, 4):
            for rank in range(world_size):
                args = {"rows": rows, "seed": 2, "epoch": epoch, "shuffle": shuffle, "world_size": world_size,
                        "rank": rank, "batch_size": 4, "drop_last": drop_last}  # fmt: skip
                plain = EpochPlan.build(**args)  # type: ignore[arg-type]
                mixed = EpochPlan.build(**args, mix=((len(rows), sum(rows)),))  # type: ignore[arg-type]
                assert plain.samples.tobytes() == mixed.samples.tobytes()


def test_an_undersampled_stream_continues_without_replacement_and_an_upsampled_one_wraps():
    quota = (25, 60, 9)  # stream 0 (60 rows) under, stream 1 (25 rows) up 2.4x, stream 2 whole
    mix = mix_of(quota)
    firsts = row_offsets([sum(s) for s in STREAMS])
    per_epoch = [planned(mix, epoch=e) for e in range(5)]
    zero = np.concatenate([ids[stream_of(ids) == 0] for ids in per_epoch])
    for p in range(len(zero) // 60):  # every consecutive 60 of stream 0 is one pass: each row once
        assert sorted(zero[p * 60 : (p + 1) * 60].tolist()) == list(range(60))
    assert len(set(zero[:50].tolist())) == 50, "epochs 0 and 1 share no sample of the undersampled stream"
    one = [ids[stream_of(ids) == 1] - firsts[1] for ids in per_epoch]
    for ids in one:
        counts = Counter(ids.tolist())
        # 60 draws span 3 or 4 passes: each row at least once (a whole pass is inside), at most once a pass.
        assert set(counts) == set(range(25))
        assert max(counts.values()) <= 4
    sequence = np.concatenate(one)
    for p in range(len(sequence) // 25):
        assert sorted(sequence[p * 25 : (p + 1) * 25].tolist()) == list(range(25)), "no repeat within a pass"


def test_the_mix_is_deterministic_and_epochs_differ():
    mix = mix_of((31, 50, 6))
    assert planned(mix, epoch=2).tolist() == planned(mix, epoch=2).tolist()
    assert planned(mix, epoch=2).tolist() != planned(mix, epoch=3).tolist()
    unshuffled = planned(mix, epoch=0, shuffle=False)
    zero = unshuffled[stream_of(unshuffled) == 0]
    assert zero.tolist() == list(range(31)), "without shuffle a stream is read in source order"


@pytest.mark.parametrize(("before", "after"), [(1, 3), (3, 2), (2, 2), (3, 1)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_elastic_resume_of_a_mix_delivers_each_planned_slot_once(before, after, drop_last):
    mix, batch_size = mix_of((31, 50, 6)), 4
    want = Counter(planned(mix).tolist())
    ranks = rank_plans(mix, before, batch_size, drop_last)
    rng = np.random.default_rng(before * 10 + after)
    uneven = tuple(int(c) for c in rng.integers(0, ranks[0].num_batches, before))
    for consumed in [(0,) * before, (1,) * before, uneven]:
        got = Counter(x for p, c in zip(ranks, consumed, strict=True) for x in p.samples[: c * batch_size].tolist())
        segment = PlanSegment(world_size=before, batch_size=batch_size, drop_last=drop_last, consumed=consumed)
        history, starts = resume_point(
            history=(), current=segment, world_size=after, batch_size=batch_size, drop_last=drop_last
        )
        resumed = rank_plans(mix, after, batch_size, drop_last, history=history)
        assert len({p.num_batches for p in resumed}) == 1
        got += Counter(x for p, s in zip(resumed, starts, strict=True) for x in p.samples[s * batch_size :].tolist())
        if drop_last:
            assert not got - want
            assert sum((want - got).values()) < (before + after) * batch_size
        else:
            assert not want - got, "every planned slot delivered"
            assert sum((got - want).values()) <= (before - 1) + (after - 1)


def test_stream_arguments_are_validated():
    with pytest.raises(ConfigError, match=r"weight=0\.5 and samples=3"):
        Stream("a", weight=0.5, samples=3)
    with pytest.raises(ConfigError, match="weight=-1"):
        Stream("a", weight=-1)
    with pytest.raises(ConfigError, match="weight=nan"):
        Stream("a", weight=float("nan"))
    with pytest.raises(ConfigError, match="samples=0"):
        Stream("a", samples=0)
    with pytest.raises(ConfigError, match="columns='id'"):
        Stream("a", columns="id")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Stream("a", None, 0.5)  # type: ignore[misc]
    assert Stream("a", columns=["id"]).columns == ("id",)


def test_the_quota_rule():
    labels = ["'a'", "'b'"]
    w = [Stream("a", weight=3), Stream("b", weight=1)]
    assert stream_quotas(w, [100, 10], epoch_size=None, labels=labels) == (83, 27)
    assert stream_quotas(w, [100, 10], epoch_size=10, labels=labels) == (8, 2)
    n = [Stream("a", samples=30), Stream("b")]
    assert stream_quotas(n, [100, 10], epoch_size=None, labels=labels) == (30, 10)
    assert stream_quotas(n, [100, 10], epoch_size=50, labels=labels) == (30, 20)
    assert stream_quotas([Stream("a"), Stream("b")], [100, 10], epoch_size=55, labels=labels) == (50, 5)
    assert stream_quotas([Stream("a", samples=5), Stream("b", samples=7)], [1, 1], epoch_size=12, labels=labels)
    with pytest.raises(ConfigError, match="streams 'b' have no weight"):
        stream_quotas([Stream("a", weight=1), Stream("b")], [1, 1], epoch_size=None, labels=labels)
    with pytest.raises(ConfigError, match="epoch_size=13 differs from the 12 samples"):
        stream_quotas([Stream("a", samples=5), Stream("b", samples=7)], [1, 1], epoch_size=13, labels=labels)
    with pytest.raises(ConfigError, match="raise epoch_size"):
        stream_quotas(n, [100, 10], epoch_size=30, labels=labels)
    with pytest.raises(ConfigError, match="stream 'b' gets no sample"):
        stream_quotas([Stream("a", weight=99), Stream("b", weight=1)], [100, 10], epoch_size=10, labels=labels)


def test_a_bad_mix_argument_raises_config_error():
    with pytest.raises(ConfigError, match="mix="):
        EpochPlan.build(rows=ROWS, seed=0, epoch=0, world_size=1, rank=0, batch_size=1, drop_last=False,
                        mix=((3, 5),))  # fmt: skip


# --- no sample twice in an epoch that crosses into a new pass (shardcache.sampling.passes) ---------------

LAYOUTS = [(5, 1, 9, 30, 2, 12, 1), (3, 3, 3, 3, 3, 3, 3), (7, 0, 4, 11), (1, 2, 40, 1, 3)]


def epochs_of(rows, quota, seed, count, *, stream=0, shuffle=True) -> list[np.ndarray]:
    return [
        stream_take(rows, seed=seed, stream=stream, start=e * quota, count=quota, shuffle=shuffle) for e in range(count)
    ]


def reference_passes(rows, quota, seed, count, *, stream=0) -> list[np.ndarray]:
    """The rules of the passes module written plainly, pass after pass, the runs found by walking back."""
    total = sum(rows)
    raw = [shard_stream(rows, seed=seed, epoch=p, stream=stream).tolist() for p in range(count)]
    cut = [(p + 1) * total % quota for p in range(count)]
    out: list[np.ndarray] = []
    tails: list[set[int]] = []
    for p in range(count):
        crossed = quota <= total and p > 0 and cut[p - 1] > 0
        split = crossed and quota + cut[p] > total
        if not crossed:
            order = raw[p]
        elif split:
            k = p - 1
            while k > 0 and cut[k - 1] > 0 and quota + cut[k] > total:
                k -= 1
            late = set(raw[k][total - cut[p] :])
            assert tails[p - 1] <= late, "the tails of a run are nested"
            order = [x for x in raw[p] if x not in late] + [x for x in raw[p] if x in late]
        else:
            head = [x for x in raw[p] if x not in tails[p - 1]][: quota - cut[p - 1]]
            chosen = set(head)
            order = head + [x for x in raw[p] if x not in chosen]
        out.append(np.array(order))
        tails.append(set(order[total - cut[p] :]) if cut[p] else set())
    return out


def quotas_near(total: int) -> list[int]:
    return sorted({total - 1, total - 2, total // 2 - 1, total // 2, total // 2 + 1, 7, 13, total} - {0})


@pytest.mark.parametrize("rows", LAYOUTS)
@pytest.mark.parametrize("seed", [0, 3])
def test_no_epoch_repeats_a_sample_and_every_pass_is_each_sample_once(rows, seed):
    total = sum(rows)
    for quota in quotas_near(total):
        count = max(3 * total // quota, 2 * total + 3) if quota > total - 3 else 6 * total // quota + 3
        epochs = epochs_of(rows, quota, seed, count)
        for e, ids in enumerate(epochs):
            assert len(set(ids.tolist())) == quota, f"epoch {e} of q={quota}, N={total} repeats a sample"
        sequence = np.concatenate(epochs)
        for p in range(len(sequence) // total):
            assert sorted(sequence[p * total : (p + 1) * total].tolist()) == list(range(total)), f"pass {p}"
        passes = reference_passes(rows, quota, seed, len(sequence) // total + 1)
        assert np.concatenate(passes)[: len(sequence)].tolist() == sequence.tolist(), "epochs = slices of the E_p"


def test_the_passes_are_the_raw_ones_when_no_crossing_overlaps():
    rows = LAYOUTS[0]
    for quota in (60, 30, 20, 12):  # quota divides N: no epoch crosses a pass
        sequence = np.concatenate(epochs_of(rows, quota, 1, 5 * 60 // quota))
        raw = np.concatenate([shard_stream(rows, seed=1, epoch=p) for p in range(5)])
        assert sequence.tobytes() == raw.tobytes()
    sequence = np.concatenate(epochs_of(rows, 25, 1, 12))  # crossings: only those with an overlap move
    raw = [shard_stream(rows, seed=1, epoch=p) for p in range(5)]
    moved = [p for p in range(5) if sequence[p * 60 : (p + 1) * 60].tobytes() != raw[p].tobytes()]
    for p in range(1, 5):
        t = p * 60 % 25
        overlap = t and set(sequence[p * 60 - t : p * 60].tolist()) & set(raw[p][: 25 - t].tolist())
        assert (p in moved) == bool(overlap) or p - 1 in moved


@pytest.mark.parametrize("quota", [59, 58, 31, 29, 7])
def test_the_passes_are_deterministic_and_an_epoch_alone_equals_it_in_sequence(quota):
    rows, seed = LAYOUTS[0], 9
    alone = stream_take(rows, seed=seed, stream=1, start=37 * quota, count=quota, shuffle=True)
    in_order = epochs_of(rows, quota, seed, 38, stream=1)
    assert alone.tobytes() == in_order[37].tobytes()
    again = epochs_of(rows, quota, seed, 38, stream=1)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(in_order, again, strict=True))
    other = epochs_of(rows, quota, seed, 38, stream=2)
    assert any(a.tobytes() != b.tobytes() for a, b in zip(other, in_order, strict=True)), "streams differ"


def test_the_tails_are_the_ends_of_the_passes_and_runs_start_where_the_walk_back_stops():
    rows = LAYOUTS[0]
    for quota in (59, 58, 45, 31, 25, 13):
        passes = Passes(rows, seed=4, stream=0, quota=quota, shuffle=True)
        sequence = np.concatenate(epochs_of(rows, quota, 4, 25 * 60 // quota))
        for p in range(20):
            t = (p + 1) * 60 % quota
            assert passes.tail_ids(p).tolist() == sorted(sequence[(p + 1) * 60 - t : (p + 1) * 60].tolist())
            if passes.split(p):
                k = p - 1
                while passes.split(k):
                    k -= 1
                assert passes.run_start(p) == k
    assert len(Passes(rows, seed=4, stream=0, quota=30, shuffle=True).tail_ids(3)) == 0
    assert Passes(rows, seed=4, stream=0, quota=59, shuffle=False).tail_ids(2).tolist() == [57, 58, 59]


def test_without_shuffle_the_passes_are_source_order_and_no_epoch_repeats():
    rows = LAYOUTS[2]
    for quota in quotas_near(22):
        sequence = np.concatenate(epochs := epochs_of(rows, quota, 0, 50, shuffle=False))
        assert sequence.tolist() == (list(range(22)) * (len(sequence) // 22 + 1))[: len(sequence)]
        assert all(len(set(ids.tolist())) == quota for ids in epochs)


@pytest.mark.parametrize("quota", [23, 30, 44, 45, 61, 66])
def test_an_oversampled_stream_keeps_each_sample_within_its_bounds(quota):
    rows = LAYOUTS[2]  # 22 rows
    epochs = epochs_of(rows, quota, 2, 30)
    low, high = quota // 22 - 1, -(-quota // 22) + 1
    for ids in epochs:
        counts = Counter(ids.tolist())
        assert all(low <= counts.get(x, 0) <= high for x in range(22))
    sequence = np.concatenate(epochs)
    for p in range(len(sequence) // 22):
        assert sorted(sequence[p * 22 : (p + 1) * 22].tolist()) == list(range(22))


def test_a_mix_of_streams_near_their_rows_repeats_no_sample_in_any_epoch():
    mix = mix_of((59, 24, 4))
    firsts = row_offsets([sum(s) for s in STREAMS])
    seen = [[], [], []]
    for epoch in range(70):
        ids = planned(mix, epoch=epoch)
        owner = stream_of(ids)
        for s in range(3):
            mine = ids[owner == s] - firsts[s]
            assert len(set(mine.tolist())) == len(mine), f"epoch {epoch}, stream {s}"
            seen[s].append(mine)
    for s, size in enumerate(sum(x) for x in STREAMS):
        sequence = np.concatenate(seen[s])
        for p in range(len(sequence) // size):
            assert sorted(sequence[p * size : (p + 1) * size].tolist()) == list(range(size))


# --- degenerate inputs: a clear ConfigError, never a ZeroDivisionError or IndexError from inside --------------


def test_a_stream_without_rows_is_refused_when_asked_for_samples_and_gives_nothing_at_quota_0():
    rows = (5, 0, 0)  # stream 1: two shards of no rows
    for mix in (((1, 5), (2, 3)), ((1, 5), (2, 1))):
        with pytest.raises(ConfigError, match=r"stream 1 has no rows but a quota of \d: .*drop it from the mix"):
            EpochPlan.build(rows=rows, seed=0, epoch=1, world_size=1, rank=0, batch_size=2, drop_last=False, mix=mix)
    with pytest.raises(ConfigError, match="stream 1 has no rows but is asked for 3 samples: drop it from the mix"):
        stream_take((0, 0), seed=0, stream=1, start=3, count=3, shuffle=True)
    for epoch in (0, 1, 2):
        plan = EpochPlan.build(rows=rows, seed=0, epoch=epoch, world_size=1, rank=0, batch_size=2, drop_last=False,
                               mix=((1, 5), (2, 0)))  # fmt: skip
        assert sorted(plan.samples.tolist()) == [0, 1, 2, 3, 4]


def test_bad_mix_parts_of_the_sampling_layer_raise_config_error():
    for parts in (((1, 5), (1, -1)), ((1, 5), (0, 2), (1, 1)), ((1, 5),)):
        with pytest.raises(ConfigError, match="are invalid for the 2 shards"):
            mix_stream((5, 4), parts, seed=0, epoch=0, shuffle=True)


def test_zero_negative_and_partial_weights_and_samples_are_config_errors_that_say_how_to_leave_a_stream_out():
    for bad in ({"weight": 0}, {"weight": 0.0}, {"weight": -2.5}, {"samples": 0}, {"samples": -1}):
        with pytest.raises(ConfigError, match=r"is invalid: pass .*drop it from the mix"):
            Stream("a", **bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pass positive weights"):
        quotas(10, [0, 0])
    with pytest.raises(ConfigError, match="pass positive weights"):
        quotas(10, [2, -1])
    labels = ["'a'", "'b'", "'c'"]
    with pytest.raises(ConfigError, match="streams 'b', 'c' have no weight while others do"):
        stream_quotas([Stream("a", weight=1), Stream("b"), Stream("c", samples=3)], [9, 9, 9], epoch_size=None,
                      labels=labels)  # fmt: skip
