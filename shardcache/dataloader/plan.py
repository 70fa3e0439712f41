"""Deterministic sample plan of the cache-aware DataLoader: which samples rank ``r`` reads in batch ``j``.

Sample ``(shard, row)`` has the flat id ``offsets[shard] + row``. For one ``(seed, epoch)``:

1. the shards are put in a seeded random order and the rows of each shard are permuted;
2. that stream is cut into ``world_size`` contiguous parts (:func:`shardcache.sampling.partition`, the
   split the prefetcher's ``epoch0`` order predicts), so each shard is fetched by one rank only; a
   shard straddling a part boundary is fetched by those two neighbouring ranks;
3. inside each part, each block of ``window`` consecutive samples (default four shards' worth,
   ``4 * ceil(mean rows)``) is shuffled, so a batch mixes rows of about ``window / mean_rows + 1``
   shards instead of one.

``shuffle=False`` skips 1 and 3: each rank reads a contiguous slice in source order.

A mix (``mix=((shards, quota), ...)``, one pair per stream, their shards concatenated in ``rows``)
replaces step 1 with :func:`shardcache.sampling.mix_stream`: each stream's quota of samples, taken from
its endless sequence of seeded passes where the previous epoch stopped, interleaved evenly. Steps 2
and 3 are the same. One stream whose quota is its row count plans exactly as no mix.

How good the shuffle is: every order of the shards, and of the rows within a shard, is equally
likely, but a sample never moves further than one window from its shard's slot in its rank's
stream, so rows of shards far apart in the shard order never share a batch. Because the window acts
inside a rank's part, it costs no cross-rank locality; its cost is the per-rank working set, about
``window / mean_rows + 1`` shards live at a time. Batches do not depend on the number of workers:
the loader hands batch ``j`` to worker ``j % num_workers``.

Batch counts. A stream of ``M`` samples is split into parts whose sizes differ by at most one.
With ``drop_last=False`` each short part gets one padding sample (its own last sample, so no extra
shard is fetched), giving every rank ``ceil(M / R)`` samples: at most ``R - 1`` duplicates. With
``drop_last=True`` each rank keeps the first ``M // (R * B) * B`` samples of its part, leaving out
fewer than ``R * B``. Every rank yields the same number of batches.

Elastic resume. An epoch's plan is the base ``(rows, seed, epoch, shuffle, window)``, the finished
:class:`PlanSegment` layouts with per-rank consumed batch counts, and the current layout. Each new
segment re-plans the samples its predecessors did not deliver, keeping their order (what rank 0 had
left first, then rank 1, ...), and splits that stream contiguously again. :func:`resume_point` adds a
segment only when the layout changes, so resuming on the same layout continues the same batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

from ..errors import ConfigError
from ..sampling import IdArray, default_window, mix_stream, partition, row_offsets, shard_stream, window_shuffle
from .checks import check_bool, check_int

__all__ = ["EpochPlan", "PlanSegment", "remaining_stream", "resume_point"]


def _check_rows(rows: Sequence[int]) -> tuple[int, ...]:
    # Vectorised: a version can have a million shards and build runs once per epoch per worker.
    counts = np.asarray(rows)
    if counts.ndim != 1 or len(counts) == 0:
        raise ConfigError(f"rows={rows!r} is invalid: pass the row count of each shard of the version")
    if counts.dtype.kind not in "iu" or counts.min() < 0:
        bad = next(
            (n for n in rows if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0),
            counts.dtype,
        )
        raise ConfigError(f"rows contains {bad!r}: shard row counts are integers >= 0")
    return tuple(counts.tolist())


@dataclass(frozen=True, kw_only=True)
class PlanSegment:
    """A finished layout of an epoch: ``consumed[r]`` batches were delivered by rank ``r``."""

    world_size: int
    batch_size: int
    drop_last: bool
    consumed: tuple[int, ...]

    def __post_init__(self) -> None:
        world_size = check_int("world_size", self.world_size, minimum=1, fix="pass at least 1 rank")
        check_int("batch_size", self.batch_size, minimum=1, fix="pass a batch size of at least 1")
        check_bool("drop_last", self.drop_last)
        consumed = tuple(
            check_int("consumed", c, minimum=0, fix="batch counts are integers >= 0") for c in self.consumed
        )
        if len(consumed) != world_size:
            raise ConfigError(
                f"consumed={consumed!r} has {len(consumed)} counts but world_size={world_size}: "
                "record one consumed batch count per rank"
            )
        object.__setattr__(self, "consumed", consumed)


def _check_mix(mix: Sequence[tuple[int, int]], rows: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    parts = tuple((int(n), int(q)) for n, q in mix)
    shards = len(rows)
    if parts and (sum(n for n, _ in parts) != shards or any(n < 1 or q < 0 for n, q in parts)):
        raise ConfigError(
            f"mix={list(parts)!r} is invalid for {shards} shards: pass one (shards >= 1, quota >= 0) per stream, "
            "the shards summing to the shards of rows"
        )
    if parts:
        firsts = row_offsets([n for n, _ in parts])[:-1]
        totals = np.add.reduceat(np.asarray(rows, dtype=np.int64), firsts)
        for s, ((_, quota), total) in enumerate(zip(parts, totals.tolist(), strict=True)):
            if quota and not total:
                raise ConfigError(
                    f"mix={list(parts)!r}: stream {s} has no rows but a quota of {quota}: a stream without rows "
                    "gives no sample; drop it from the mix"
                )
    return parts


class _Layout(NamedTuple):
    bounds: IdArray  # part r is stream[bounds[r]:bounds[r + 1]]
    per_rank: int  # samples each rank yields, padding included
    num_batches: int


def _layout(total: int, world_size: int, batch_size: int, drop_last: bool) -> _Layout:
    bounds = partition(total, world_size=world_size)
    # Part 0 is the longest and the last part the shortest (their sizes differ by at most one).
    if drop_last:
        num_batches = int(bounds[-1] - bounds[-2]) // batch_size
        return _Layout(bounds, num_batches * batch_size, num_batches)
    per_rank = int(bounds[1] - bounds[0])
    return _Layout(bounds, per_rank, -(-per_rank // batch_size))


def _rank_samples(part: IdArray, stream: IdArray, rank: int, per_rank: int) -> IdArray:
    if len(part) >= per_rank:
        return part[:per_rank]
    # Only drop_last=False gets here, one sample short. An empty part (fewer samples than ranks)
    # borrows a sample of another rank; the replay then counts it as delivered once.
    pad = part[-1] if len(part) else stream[rank % len(stream)]
    return np.append(part, pad)


def _part(
    stream: IdArray, layout: _Layout, rank: int, *, first: bool, base: _Base, world_size: int
) -> IdArray:
    part = stream[layout.bounds[rank] : layout.bounds[rank + 1]]
    if first and base.shuffle:
        part = window_shuffle(
            part, window=base.window, seed=base.seed, epoch=base.epoch, world_size=world_size, rank=rank
        )
    return part


class _Base(NamedTuple):
    rows: tuple[int, ...]
    seed: int
    epoch: int
    shuffle: bool
    window: int
    mix: tuple[tuple[int, int], ...] = ()

    def stream(self) -> IdArray:
        """The epoch's flat ids in order; with a mix, an id may come more than once (an upsampled stream)."""
        if self.mix:
            return mix_stream(self.rows, self.mix, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle)
        if self.shuffle:
            return shard_stream(self.rows, seed=self.seed, epoch=self.epoch)
        return np.arange(sum(self.rows), dtype=np.int64)


def _replay(total: int, base: _Base, history: Sequence[PlanSegment]) -> IdArray:
    """The positions in ``base.stream()`` (of ``total`` samples) that ``history`` left, in order.

    Positions rather than ids, so that a sample planned twice in a mix's epoch counts twice."""
    stream = np.arange(total, dtype=np.int64)
    for index, segment in enumerate(history):
        layout = _layout(len(stream), segment.world_size, segment.batch_size, segment.drop_last)
        left: list[IdArray] = []
        borrowed: list[int] = []
        for rank, consumed in enumerate(segment.consumed):
            if consumed > layout.num_batches:
                raise ConfigError(
                    f"history[{index}].consumed[{rank}]={consumed} exceeds the {layout.num_batches} "
                    "batches of that segment: the state does not belong to this dataset version or seed"
                )
            part = _part(stream, layout, rank, first=index == 0, base=base, world_size=segment.world_size)
            done = min(consumed * segment.batch_size, layout.per_rank)
            left.append(part[done:])
            if done > len(part):  # the padding sample was delivered
                borrowed.append(int(_rank_samples(part, stream, rank, layout.per_rank)[-1]))
        stream = np.concatenate(left) if left else stream[:0]
        if borrowed:
            stream = stream[~np.isin(stream, borrowed)]
    return stream


def remaining_stream(
    *,
    rows: Sequence[int],
    seed: int,
    epoch: int,
    shuffle: bool = True,
    window: int | None = None,
    history: Sequence[PlanSegment] = (),
    mix: Sequence[tuple[int, int]] = (),
) -> IdArray:
    """The samples ``history`` left undelivered, in the order the next segment splits them."""
    rows = _check_rows(rows)
    plan = EpochPlan(
        rows=rows, seed=seed, epoch=epoch, shuffle=shuffle, history=tuple(history),
        window=default_window(rows) if window is None else window,
        world_size=1, rank=0, batch_size=1, drop_last=False, mix=tuple(mix),
    )  # fmt: skip
    ids = plan._ids
    return ids[_replay(len(ids), plan._base, plan.history)]


def resume_point(
    *,
    history: Sequence[PlanSegment],
    current: PlanSegment,
    world_size: int,
    batch_size: int,
    drop_last: bool,
) -> tuple[tuple[PlanSegment, ...], tuple[int, ...]]:
    """The history to build with and the first batch index of each new rank, for a resumed epoch.

    ``current`` is the layout that was running with its per-rank consumed counts. The same layout
    continues where each rank stopped (no re-plan); a new layout re-plans what is left from batch 0.
    """
    world_size = check_int("world_size", world_size, minimum=1, fix="pass at least 1 rank")
    batch_size = check_int("batch_size", batch_size, minimum=1, fix="pass a batch size of at least 1")
    drop_last = check_bool("drop_last", drop_last)
    history = tuple(history)
    if (current.world_size, current.batch_size, current.drop_last) == (world_size, batch_size, drop_last):
        return history, current.consumed
    if not any(current.consumed):  # nothing delivered: plan the new layout as if it had been first
        return history, (0,) * world_size
    return (*history, current), (0,) * world_size


@dataclass(frozen=True, kw_only=True)
class EpochPlan:
    """The batches of one rank for one epoch. Build with :meth:`build`; all arrays are read-only."""

    rows: tuple[int, ...]
    seed: int
    epoch: int
    shuffle: bool
    window: int
    history: tuple[PlanSegment, ...]
    world_size: int
    rank: int
    batch_size: int
    drop_last: bool
    mix: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", _check_rows(self.rows))
        object.__setattr__(self, "mix", _check_mix(self.mix, self.rows))
        check_int("seed", self.seed, minimum=0, fix="pass an integer >= 0")
        check_int("epoch", self.epoch, minimum=0, fix="pass an integer >= 0")
        check_bool("shuffle", self.shuffle)
        check_int("window", self.window, minimum=1, fix="pass a number of samples >= 1, or None")
        world_size = check_int("world_size", self.world_size, minimum=1, fix="pass at least 1 rank")
        if check_int("rank", self.rank, minimum=0, fix="pass 0 <= rank < world_size") >= world_size:
            raise ConfigError(
                f"rank={self.rank} is invalid for world_size={world_size}: pass 0 <= rank < world_size"
            )
        check_int("batch_size", self.batch_size, minimum=1, fix="pass a batch size of at least 1")
        check_bool("drop_last", self.drop_last)
        history = tuple(self.history)
        for index, segment in enumerate(history):
            if not isinstance(segment, PlanSegment):
                raise ConfigError(f"history[{index}]={segment!r} is invalid: pass PlanSegment objects")
        object.__setattr__(self, "history", history)

    @classmethod
    def build(
        cls,
        *,
        rows: Sequence[int],
        seed: int,
        epoch: int,
        shuffle: bool = True,
        window: int | None = None,
        world_size: int,
        rank: int,
        batch_size: int,
        drop_last: bool,
        history: Sequence[PlanSegment] = (),
        mix: Sequence[tuple[int, int]] = (),
    ) -> EpochPlan:
        """Validate and plan; ``window=None`` means four shards' worth of samples."""
        rows = _check_rows(rows)
        if window is None:
            window = default_window(rows)
        plan = cls(
            rows=rows, seed=seed, epoch=epoch, shuffle=shuffle, window=window, history=tuple(history),
            world_size=world_size, rank=rank, batch_size=batch_size, drop_last=drop_last, mix=tuple(mix),
        )  # fmt: skip
        plan._samples  # noqa: B018 -- plan eagerly, so that a bad history fails here
        return plan

    @property
    def _base(self) -> _Base:
        return _Base(self.rows, self.seed, self.epoch, self.shuffle, self.window, self.mix)

    @cached_property
    def _ids(self) -> IdArray:
        return self._base.stream()

    def _rank_of(self, stream: IdArray, rank: int) -> IdArray:
        layout = _layout(len(stream), self.world_size, self.batch_size, self.drop_last)
        first = not self.history
        part = _part(stream, layout, rank, first=first, base=self._base, world_size=self.world_size)
        return _rank_samples(part, stream, rank, layout.per_rank)

    @cached_property
    def _samples(self) -> IdArray:
        ids = self._ids
        samples = ids[self._rank_of(_replay(len(ids), self._base, self.history), self.rank)]
        samples = np.ascontiguousarray(samples, dtype=np.int64)
        samples.setflags(write=False)
        return samples

    @cached_property
    def _offsets(self) -> IdArray:
        return row_offsets(self.rows)

    @property
    def num_samples(self) -> int:
        """Samples this rank yields in the current layout, padding included; equal on every rank."""
        return len(self._samples)

    @property
    def num_batches(self) -> int:
        """Batches this rank yields in the current layout; equal on every rank."""
        return -(-self.num_samples // self.batch_size)

    @property
    def samples(self) -> IdArray:
        """All flat sample ids of this rank, in order (read-only)."""
        return self._samples

    def batch(self, j: int) -> IdArray:
        """Flat sample ids of batch ``j`` (a read-only view); only the last may be short."""
        if not 0 <= j < self.num_batches:
            raise IndexError(f"batch {j} is out of range: this rank has {self.num_batches} batches")
        return self._samples[j * self.batch_size : (j + 1) * self.batch_size]

    def shard_of(self, ids: IdArray) -> IdArray:
        """Shard index of each flat sample id."""
        return np.searchsorted(self._offsets[1:], ids, side="right").astype(np.int64)

    def shard_ranks(self) -> dict[int, tuple[int, ...]]:
        """For each shard read in the current layout, the ranks that read it (computes every rank)."""
        ids = self._ids
        stream = _replay(len(ids), self._base, self.history)
        readers: dict[int, list[int]] = {}
        for rank in range(self.world_size):
            for shard in np.unique(self.shard_of(ids[self._rank_of(stream, rank)])):
                readers.setdefault(int(shard), []).append(rank)
        return {shard: tuple(ranks) for shard, ranks in sorted(readers.items())}
