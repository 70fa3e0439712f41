"""The batches one worker builds: its share of the rank's plan, read ahead, gathered at Arrow level.

Batches are cut into chunks of ``spec.chunk`` consecutive batches (whole shuffle windows, see
:func:`chunk_batches`), and chunk ``c`` goes to worker ``c % num_workers``. Every batch of a window
mixes the same few shards, so a worker reads the shards of its own windows instead of every worker
reading every shard; the CachedDataLoader puts the batches back in plan order, which therefore does
not depend on the number of workers.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from torch.utils.data import get_worker_info

from ..cache import Lease, ShardCache
from ..errors import AccessDenied, CacheUnavailable, ManifestCorrupted, ShardCacheError
from ..sampling import row_offsets
from .carry import Carried, carry_next, take_carried
from .context import ReadContext
from .inplace import InPlace, Use
from .plan import EpochPlan
from .readahead import Need, ReadAhead
from .slots import SlotClaim, worker_pool
from .spec import IterSpec
from .stats import Counters
from .tensors import BatchBuilder, ShardViews

__all__ = [
    "TaggedBatch",
    "batch_groups",
    "chunk_batches",
    "drop_lease",
    "iterate_batches",
    "raise_error",
    "shard_schedule",
    "take_lease",
    "take_leases",
    "drop_leases",
    "worker_batches",
]

log = logging.getLogger(__name__)

PortableError = tuple[type[BaseException], str, dict[str, Any]]

CHUNK_BYTES = 64 * 1024 * 1024
MIN_CHUNKS_PER_WORKER = 4
WORKER_READ_THREADS = 2  # GETs in flight per worker process
MAIN_READ_THREADS = 3  # without workers, the main process reads alone: one GET more in flight
RESERVED_BLOCKS = 2  # blocks a worker makes while its first shards load: those of its first batches


class TaggedBatch(NamedTuple):
    """A batch on its way to the CachedDataLoader: its number in the plan, its size, the worker's
    counters since its previous batch, an error that stopped the worker (batch is then None), and
    the worker's pool slots the batch lives in (see :mod:`.slots`)."""

    number: int
    batch: Any
    samples: int
    counters: dict[str, float]
    error: BaseException | PortableError | None = None
    claim: SlotClaim | None = None


def raise_error(error: BaseException | PortableError) -> None:
    """Raise an error sent by a worker as its own type, with its attributes (PyTorch would turn an
    exception with keyword-only arguments into a RuntimeError)."""
    if isinstance(error, BaseException):
        exc = error
    else:
        cls, message, attributes = error
        exc = cls.__new__(cls)
        BaseException.__init__(exc, message)
        exc.__dict__.update(attributes)
    try:
        raise exc
    finally:
        # The traceback holds this frame: without the del, frame and exception form a cycle that
        # keeps the DataLoader's worker processes alive until the garbage collector runs.
        del exc, error


def _portable(exc: BaseException, in_worker: bool) -> BaseException | PortableError:
    return (type(exc), str(exc), dict(exc.__dict__)) if in_worker else exc


def chunk_batches(
    *, batches_per_window: int, window_bytes: float, windows: int, num_workers: int, max_batches: int
) -> int:
    """Consecutive batches one worker builds: whole windows, about CHUNK_BYTES and at most
    ``max_batches`` of them, yet at least MIN_CHUNKS_PER_WORKER chunks per worker in an epoch of
    ``windows`` windows.

    A shard cut by the border between two workers' chunks is read by both, so longer chunks read less
    twice (one shard in five with windows of four shards). Their price is memory: the loader holds up
    to a chunk of batches of each other worker while it puts them back in order.
    """
    by_bytes = int(CHUNK_BYTES // max(1.0, window_bytes))
    by_workers = windows // (max(1, num_workers) * MIN_CHUNKS_PER_WORKER)
    return batches_per_window * max(1, min(by_bytes, by_workers, max_batches // batches_per_window))


def worker_batches(num_batches: int, *, start: int, chunk: int, worker: int, num_workers: int) -> np.ndarray:
    """Indices of the batches in ``[start, num_batches)`` that ``worker`` builds, in order."""
    js = np.arange(start, num_batches, dtype=np.int64)
    owners = (js // chunk - start // chunk) % num_workers
    return js[owners == worker]


def shard_schedule(plan: EpochPlan, batches: np.ndarray, *, nbytes: Sequence[int]) -> list[Need]:
    """The shards ``batches`` read, in first-use order, with the positions of their first and last use."""
    if not len(batches):
        return []
    ids = [plan.batch(int(j)) for j in batches]
    shards = plan.shard_of(np.concatenate(ids))
    pos = np.repeat(np.arange(len(ids)), [len(b) for b in ids])
    unique, first_at = np.unique(shards, return_index=True)
    last_at = len(shards) - 1 - np.unique(shards[::-1], return_index=True)[1]
    by_first_use = np.argsort(first_at, kind="stable")
    return [
        Need(shard=int(unique[k]), first=int(pos[first_at[k]]), last=int(pos[last_at[k]]), nbytes=nbytes[unique[k]])
        for k in by_first_use
    ]


def batch_groups(plan: EpochPlan, offsets: np.ndarray, j: int) -> tuple[list[tuple[int, np.ndarray, np.ndarray]], int]:
    """Batch ``j`` as ``(shard, rows in the shard, positions in the batch)`` per shard, and its size.

    Groups come in shard order, so one ``out[positions] = view[rows]`` per shard builds the batch.
    """
    ids = plan.batch(j)
    shards = np.searchsorted(offsets, ids, side="right") - 1
    positions = np.argsort(shards, kind="stable")
    ordered = shards[positions]
    rows = ids[positions] - offsets[ordered]
    cuts = [0, *(np.flatnonzero(ordered[1:] != ordered[:-1]) + 1).tolist(), len(ids)]
    groups = [(int(ordered[a]), rows[a:b], positions[a:b]) for a, b in itertools.pairwise(cuts)]
    return groups, len(ids)


class _Groups:
    """:func:`batch_groups` of a worker's batches by position, computed once by whichever thread
    needs them first (a read-ahead thread receiving a shard in place, or the loop gathering the batch)."""

    def __init__(self, plan: EpochPlan, offsets: np.ndarray, batches: Sequence[int]) -> None:
        self._plan, self._offsets, self._batches = plan, offsets, batches
        self._known: dict[int, tuple[list[tuple[int, np.ndarray, np.ndarray]], int]] = {}
        self._lock = threading.Lock()

    def at(self, pos: int) -> tuple[list[tuple[int, np.ndarray, np.ndarray]], int]:
        with self._lock:
            known = self._known.get(pos)
        if known is None:
            known = batch_groups(self._plan, self._offsets, self._batches[pos])
            with self._lock:
                self._known[pos] = known
        return known

    def take(self, pos: int) -> tuple[list[tuple[int, np.ndarray, np.ndarray]], int]:
        """The groups of batch ``pos``, forgotten here (the loop gathers each batch once)."""
        with self._lock:
            known = self._known.pop(pos, None)
        return known if known is not None else batch_groups(self._plan, self._offsets, self._batches[pos])


def take_lease(cache: ShardCache, name: str, version: str, *, ttl: float) -> Lease | None:
    """A reader's lease on the version, or None when the node holding it cannot be reached: reading goes on
    (shards are read through), and ``rm`` cannot run on that dataset either while its node is down. Or None
    when the lease key holds something else than a lease set (ManifestCorrupted): the reader carries on
    with a warning that names the key and the fix, since training need not stop for it."""
    try:
        return cache.lease(name, version, ttl=ttl)
    except AccessDenied:
        raise  # a missing ACL rule is the user's to fix, not a node to wait out
    except (CacheUnavailable, ManifestCorrupted) as exc:
        log.warning("reading %r without a reader lease: %s", name, exc)
        return None


def take_leases(cache: ShardCache, versions: Sequence[tuple[str, str]], *, ttl: float) -> list[Lease | None]:
    """A lease on each ``(name, version)`` (a mix reads several), or none: those taken are dropped on an error."""
    leases: list[Lease | None] = []
    try:
        for name, version in versions:
            leases.append(take_lease(cache, name, version, ttl=ttl))
    except BaseException:
        drop_leases(leases, versions)
        raise
    return leases


def drop_leases(leases: Sequence[Lease | None], versions: Sequence[tuple[str, str]]) -> None:
    """Release what :func:`take_leases` took, without raising."""
    for lease, (name, _) in zip(leases, versions, strict=False):
        drop_lease(lease, name)


def drop_lease(lease: Lease | None, name: str) -> None:
    """Release ``lease`` without raising: every batch was delivered, and an unreleased lease expires by itself."""
    if lease is None:
        return
    try:
        lease.release()
    except ShardCacheError as exc:
        log.warning("could not release the reader lease of %r (it expires by itself): %s", name, exc)


def iterate_batches(ctx: ReadContext, spec: IterSpec, *, worker: int, num_workers: int) -> Iterator[Any]:
    """Batches of ``spec`` that ``worker`` of ``num_workers`` builds (TaggedBatch when ``spec.tagged``);
    ``ctx`` is the dataset's side of the iteration (its plan of ``spec``, the cache, the columns ...)."""
    plan = ctx.plan
    mine = worker_batches(plan.num_batches, start=spec.start, chunk=spec.chunk, worker=worker, num_workers=num_workers)
    if not len(mine):
        return
    in_worker = get_worker_info() is not None
    counters = Counters()
    # Only tagged batches carry the claim that lets the main process hand a pool slot back.
    pooled = in_worker and spec.tagged and spec.pool_slots > 0
    builder = BatchBuilder(ctx.columns, dataset=ctx.name, slots=worker_pool() if pooled else None,
                           slot_limit=spec.pool_slots, pool=None if in_worker else ctx.output_pool)  # fmt: skip
    source = ctx.shard_source(counters)

    schedule = shard_schedule(plan, mine, nbytes=ctx.shard_nbytes)
    by_pos = _Groups(plan, row_offsets(plan.rows), mine.tolist())
    # Shards are received straight into their batches, shuffled or not (see inplace.py); datasets
    # without an image-sized column gather, with no work added to their read path.
    inplace: InPlace | None = InPlace(builder, source)
    if inplace is not None and inplace.column is None:
        inplace = None
    needs = {need.shard: need for need in schedule}
    # A persistent worker may have read this iteration's first shards while the last one ended (carry.py).
    carried = take_carried(_carry_key(ctx, spec, plan, worker, num_workers)) if in_worker else None

    def load(index: int) -> ShardViews:
        if carried is not None:
            table = carried.pop(index)
            counters.merge(carried.counters.take())
            if table is not None:
                counters.add(carried_shards=1)
                return builder.views(table, shard=index)
        if inplace is None:
            return builder.views(source.load(index), shard=index)
        need, uses = needs[index], list[Use]()
        for pos in range(need.first, need.last + 1):
            groups, size = by_pos.at(pos)
            uses.extend((pos, size, rows, positions) for shard, rows, positions in groups if shard == index)
        return inplace.load(index, uses)

    leases = take_leases(ctx.cache, ctx.versions, ttl=ctx.lease_ttl) if spec.lease else []
    threads = ctx.read_threads or (WORKER_READ_THREADS if in_worker else MAIN_READ_THREADS)
    ahead = ReadAhead(load, schedule, budget=ctx.readahead, threads=threads,
                      name=f"shardcache-readahead-{worker}")  # fmt: skip
    # While the first shards load, a side thread makes the blocks of the first batches; receiving in place,
    # of the whole pool: batches are then filled ahead of the loop, and memory is at once what it settles
    # at. The loop does not wait for it (a batch whose slot is still empty has its block made on the spot).
    reserving = threading.Event()  # set when this iteration ends: no more blocks made for it
    if pooled:
        reserve = RESERVED_BLOCKS if inplace is None else spec.pool_slots
        threading.Thread(target=_reserve, args=(builder, spec.batch_size, min(len(mine), reserve), reserving),
                         name=f"shardcache-reserve-{worker}", daemon=True).start()  # fmt: skip
    j = int(mine[0])
    # Once every shard of this iteration is loading, a persistent worker starts on the next one's (carry.py).
    carry = spec.next_epoch is not None and in_worker
    try:
        for pos, j_ in enumerate(mine.tolist()):
            j = j_
            ahead.advance(pos)
            if carry and ahead.dispatched:
                carry = False
                _carry_next_epoch(ctx, spec, worker=worker, num_workers=num_workers)
            groups, size = by_pos.take(pos)
            started = time.perf_counter()
            parts = [(ahead.get(shard), rows, positions) for shard, rows, positions in groups]
            counters.add(worker_wait_seconds=time.perf_counter() - started)
            batch = builder.gather(parts, size, prepared=None if inplace is None else inplace.take(pos))
            claim, reused = builder.take_claim()
            if reused:
                counters.add(reused_buffers=reused)
            if ctx.transform is not None:
                try:
                    batch = ctx.transform(batch)
                except BaseException:
                    builder.give_back(claim)  # the batch is never sent
                    raise
            if spec.tagged:
                yield TaggedBatch(j, batch, size, counters.take(), claim=claim)
            else:
                yield batch
        if carry:
            _carry_next_epoch(ctx, spec, worker=worker, num_workers=num_workers)
    except ShardCacheError as exc:
        if not spec.tagged:
            raise
        yield TaggedBatch(j, None, 0, counters.take(), _portable(exc, in_worker))
    finally:
        reserving.set()
        ahead.close()
        if inplace is not None:
            inplace.close()
        if carried is not None:
            carried.close()
        drop_leases(leases, ctx.versions)


def _reserve(builder: BatchBuilder, size: int, batches: int, stop: threading.Event) -> None:
    try:
        builder.reserve(size, batches=batches, stop=stop)
    except Exception as exc:  # the loop makes the blocks it needs itself, and raises then if it must
        log.debug("could not make the worker's batch blocks ahead: %s", exc)


def _carry_key(ctx: ReadContext, spec: IterSpec, plan: EpochPlan, worker: int, num_workers: int) -> object:
    return (ctx.versions, dataclasses.replace(spec, next_epoch=None), plan, worker, num_workers)


def _carry_next_epoch(ctx: ReadContext, spec: IterSpec, *, worker: int, num_workers: int) -> Carried | None:
    """Start loading the shards of the first window of this worker's batches in epoch ``spec.next_epoch``
    read from its start: the iteration a persistent worker most likely runs next (see carry.py). Never
    fails this iteration: carrying only saves the next one some waiting."""
    try:
        return _start_carry(ctx, spec, worker=worker, num_workers=num_workers)
    except Exception as exc:
        log.warning("could not load the first shards of epoch %s ahead (it reads them as usual): %r",
                    spec.next_epoch, exc)  # fmt: skip
        return None


def _start_carry(ctx: ReadContext, spec: IterSpec, *, worker: int, num_workers: int) -> Carried | None:
    assert spec.next_epoch is not None
    history = spec.history if spec.next_epoch == spec.epoch else ()  # set_epoch() forgets a resume's history
    spec = dataclasses.replace(spec, epoch=spec.next_epoch, start=0, history=history)
    plan = dataclasses.replace(ctx.plan, epoch=spec.epoch, history=history)
    mine = worker_batches(plan.num_batches, start=0, chunk=spec.chunk, worker=worker, num_workers=num_workers)
    first_window = max(1, spec.window // spec.batch_size)
    shards: list[int] = []
    held = 0
    for need in shard_schedule(plan, mine[:first_window], nbytes=ctx.shard_nbytes):
        if shards and held + need.nbytes > ctx.readahead:
            break
        shards.append(need.shard)
        held += need.nbytes
    if not shards:
        return None
    counters = Counters()
    source = ctx.shard_source(counters)
    return carry_next(_carry_key(ctx, spec, plan, worker, num_workers), shards, source.load, counters=counters)
