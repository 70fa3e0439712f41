"""CachedDataLoader: a drop-in ``torch.utils.data.DataLoader`` over a cached dataset.

>>> loader = CachedDataLoader("imagenet-train", cache="redis://127.0.0.1:7000", batch_size=256,
...                           num_workers=4, pin_memory=True, persistent_workers=True)   # doctest: +SKIP
>>> for epoch in range(epochs):                                                          # doctest: +SKIP
...     loader.set_epoch(epoch)
...     for batch in loader:
...         ...

Batches are built whole inside the workers (the DataLoader runs with automatic batching off), each
worker builds one shuffle window's worth of consecutive batches at a time, and the main process puts
them back in plan order: the order depends on ``(seed, epoch)`` only, never on the number of workers.
The main process counts what it delivered, so ``state_dict()`` can be taken after any batch.

With frameworks (Lightning, Accelerate, transformers.Trainer, torchdata), two rules make it a drop-in:

* ``set_epoch`` reaches the loader from wherever a framework calls it: ``loader.set_epoch``,
  ``loader.sampler.set_epoch`` (see ``sampler.py``) and ``loader.dataset.set_epoch`` all set the epoch
  of the next iteration, so each epoch has a new order without user code.
* ``len(loader)`` is the whole epoch's batch count on this rank, as torchdata's ``StatefulDataLoader``
  reports it, also right after ``load_state_dict``: a framework restores its own batch counter ``k``,
  iterates what is left, and stops at ``len``. After a resume on the same layout that is the epoch's
  batch count; after an elastic re-plan it is the batches delivered per rank before (each finished
  layout counts its ranks' largest count) plus the batches each new rank has left, and never less than
  a whole epoch of the new layout (a framework that reads ``len`` once then still reads later epochs
  whole; in the resumed epoch the loader simply ends early).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ..cache.keys import check_dataset_name
from ..errors import ConfigError
from .accelerate import AccelerateHooks
from .checks import check_bool, check_callable, check_int
from .dataset import CachedDataset
from .device import DevicePrefetcher
from .lightning import widen_lightning_limit
from .observe import LoaderObserver
from .plan import PlanSegment, resume_point
from .sampler import EpochSampler
from .slots import POOL_SLOTS, forget, forget_gone
from .spec import IterSpec
from .state import LoaderState, merge_rank_states
from .stats import LoaderStats, stream_keys
from .stream import Stream
from .worker import TaggedBatch, chunk_batches, drop_leases, raise_error, take_leases

__all__ = ["CachedDataLoader"]

log = logging.getLogger(__name__)

# DataLoader arguments that make no sense here: the dataset plans, shuffles and batches itself.
_REFUSED = {
    "sampler": "the dataset plans its own batches; drop sampler=",
    "batch_sampler": "the dataset plans its own batches; pass batch_size= instead",
    "generator": "the order comes from seed= and set_epoch(); drop generator=",
    "in_order": "batches always come in plan order; drop in_order=",
}


class _Run(NamedTuple):
    spec: IterSpec
    num_batches: int


class _Collate:
    """Applies the user's ``collate_fn`` to the batch inside a TaggedBatch, in the worker."""

    # How CachedDataset tells its loader's fetchers from a foreign DataLoader's (dataset.py, _check_caller).
    feeds_cached_loader = True

    def __init__(self, fn: Callable[[Any], Any] | None) -> None:
        self.fn = fn

    def __call__(self, item: Any) -> Any:
        if self.fn is None or not isinstance(item, TaggedBatch) or item.error is not None:
            return item
        return item._replace(batch=self.fn(item.batch))


class CachedDataLoader(AccelerateHooks, DataLoader):
    """A DataLoader of whole batches of a cached dataset, exactly once per epoch across ranks.

    Args:
        dataset: a :class:`CachedDataset`, a dataset name, or a mix (a list of :class:`Stream`); with a
            name or a mix, ``cache`` and ``dataset_options`` (e.g. ``columns=``, ``seed=``, ``epoch_size=``,
            ``transform=``) build the CachedDataset.
        batch_size, drop_last: as in PyTorch; every rank yields the same number of batches.
        collate_fn: called in the worker on each batch dict (after the dataset's ``transform``).
        device: when given, batches arrive on this device; on CUDA the next one is copied on a side
            stream while the current one computes (use with ``pin_memory=True``).
        num_workers, pin_memory, timeout, worker_init_fn, multiprocessing_context, prefetch_factor,
        persistent_workers, pin_memory_device: as in PyTorch.
        metrics: export this loader's stats to Prometheus (``shardcache.metrics``): a port, a Pushgateway
            URL, None (as ``$SHARDCACHE_METRICS_PORT`` / ``_PUSHGATEWAY`` say; off without them) or False.
    """

    def __init__(
        self,
        dataset: CachedDataset | str | Stream | Sequence[Stream],
        *,
        cache: Any = None,
        batch_size: int = 1,
        num_workers: int = 0,
        collate_fn: Callable[[Any], Any] | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn: Callable[[int], None] | None = None,
        multiprocessing_context: Any = None,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory_device: str = "",
        device: torch.device | str | None = None,
        metrics: Any = None,
        **dataset_options: Any,
    ) -> None:
        for name, fix in _REFUSED.items():
            if name in dataset_options:
                raise ConfigError(f"{name}={dataset_options[name]!r} is not supported: {fix}")
        batch_size = check_int("batch_size", batch_size, minimum=1, fix="pass a batch size of at least 1")
        drop_last = check_bool("drop_last", drop_last)
        check_callable("collate_fn", collate_fn, what="a function of the batch dict")
        if isinstance(dataset, CachedDataset):
            if cache is not None or dataset_options:
                given = ["cache"] * (cache is not None) + sorted(dataset_options)
                raise ConfigError(
                    f"{', '.join(given)} given with a CachedDataset: pass them to CachedDataset, "
                    "or pass the dataset's name instead"
                )
        elif isinstance(dataset, (str, Stream, Sequence)):
            if isinstance(dataset, str):
                check_dataset_name(dataset)
            try:
                dataset = CachedDataset(dataset, cache=cache, **dataset_options)
            except TypeError as exc:
                raise ConfigError(f"unknown CachedDataLoader or CachedDataset argument: {exc}") from None
        else:
            raise ConfigError(
                f"dataset={dataset!r} is invalid: pass a CachedDataset, a dataset name or a list of Stream"
            )
        dataset.bind(batch_size=batch_size, drop_last=drop_last, owner=self)
        super().__init__(
            dataset,
            batch_size=None,  # the dataset yields whole batches
            num_workers=num_workers,
            collate_fn=_Collate(collate_fn),
            pin_memory=pin_memory,
            timeout=timeout,
            worker_init_fn=worker_init_fn,
            multiprocessing_context=multiprocessing_context,
            prefetch_factor=prefetch_factor,
            persistent_workers=persistent_workers,
            pin_memory_device=pin_memory_device,
        )
        # DataLoader freezes these after __init__; report the real values rather than None/False.
        object.__setattr__(self, "batch_size", batch_size)
        object.__setattr__(self, "drop_last", drop_last)
        # Frameworks call set_epoch on loader.sampler: this one forwards it here (see sampler.py).
        object.__setattr__(self, "sampler", EpochSampler(self))
        self.device = None if device is None else torch.device(device)
        self._epoch = dataset.epoch
        self._history: tuple[PlanSegment, ...] = ()
        self._window: int | None = None  # set by a loaded state; else the dataset's default
        self._resume: int | None = None  # the first batch of the next iteration, after load_state_dict
        self._consumed = 0  # batches of the current layout this rank has delivered in this epoch
        self._last_epoch: int | None = None  # the epoch the last iteration read
        self._totals = self._zero_totals()  # summed per batch on the hot path; stats() snapshots
        # The slot pools of the workers whose batches arrived here (see slots.py): their block
        # descriptors are closed once the workers are gone, or with the loader.
        self._pools: set[str] = set()
        weakref.finalize(self, forget, self._pools)
        self._observer = LoaderObserver.attach(self, metrics)  # Prometheus and the reader heartbeat

    @property
    def cached_dataset(self) -> CachedDataset:
        return self.dataset  # type: ignore[return-value]

    # -- epochs and length ---------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` next. The same epoch keeps a position loaded by ``load_state_dict``.

        ``loader.sampler.set_epoch`` and ``loader.dataset.set_epoch`` come here too, so frameworks that
        call those (Lightning, Accelerate, transformers.Trainer) reshuffle every epoch."""
        epoch = check_int("epoch", epoch, minimum=0, fix="pass an integer >= 0")
        if epoch != self._epoch:
            self._epoch, self._history, self._window, self._resume, self._consumed = epoch, (), None, None, 0
        self.cached_dataset.apply_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self._epoch

    def _next_run(self) -> _Run:
        spec = self.cached_dataset.spec(
            epoch=self._epoch, history=self._history, start=self._resume or 0, batch_size=self.batch_size,
            drop_last=self.drop_last, window=self._window, tagged=True, lease=False, chunked=True,
        )  # fmt: skip
        num_batches = self.cached_dataset.plan(spec).num_batches
        if self.num_workers > 0:
            # A worker's batches in flight: the prefetched ones, the one in the training loop, those of
            # its chunk waiting to be put back in order, and those its read-ahead receives shards into
            # (inplace.py; it runs about half its budget ahead of the loop). More get fresh blocks,
            # freed after use.
            ds = self.cached_dataset
            prefetch = self.prefetch_factor or 2
            batch_bytes = max(1.0, spec.batch_size * ds.sample_nbytes)
            ahead = math.ceil(ds.readahead_bytes(spec.window) / (2 * batch_bytes))
            ahead = max(0, min(ahead, POOL_SLOTS // 2 - prefetch))  # leave chunks at least half the pool
            chunk = chunk_batches(
                batches_per_window=spec.chunk, window_bytes=spec.window * ds.sample_nbytes,
                windows=-(-(num_batches - spec.start) // spec.chunk), num_workers=self.num_workers,
                max_batches=POOL_SLOTS - prefetch - ahead,
            )  # fmt: skip
            spec = dataclasses.replace(spec, chunk=chunk, pool_slots=min(POOL_SLOTS, prefetch + chunk + ahead),
                                       next_epoch=self._predicted_epoch())
        return _Run(spec, num_batches)

    def _predicted_epoch(self) -> int | None:
        """The epoch persistent workers prepare for while an iteration ends: the next one, unless the last
        iteration read this same epoch (a loop that does not call ``set_epoch``)."""
        if not self.persistent_workers:
            return None
        return self._epoch if self._last_epoch == self._epoch else self._epoch + 1

    def __len__(self) -> int:
        """The whole epoch's batches on this rank, also after ``load_state_dict`` (the rule: module docstring).

        After a mid-epoch ``load_state_dict`` the next iteration yields fewer: ``remaining()`` says how many."""
        run = self._next_run()
        if not self._history:
            return run.num_batches
        delivered = sum(max(segment.consumed) for segment in self._history)
        whole = self.cached_dataset.plan(dataclasses.replace(run.spec, history=(), start=0)).num_batches
        return max(delivered + run.num_batches, whole)

    def remaining(self) -> int:
        """Batches the next iteration yields on this rank: all of the epoch, or what a loaded state left."""
        run = self._next_run()
        return run.num_batches - run.spec.start

    # -- iteration ----------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        ds = self.cached_dataset
        ds.refresh()
        run = self._next_run()
        # First: a refused lease (AccessDenied) keeps a loaded resume point.
        leases = take_leases(ds.cache, ds.mix.versions, ttl=ds.lease_ttl)
        for lease in leases:
            self._observer.reading(lease)
        per_stream = ds.stream_counts(run.spec)  # a mix's samples per stream of each batch, else None
        self._last_epoch = self._epoch
        self._resume = None
        self._consumed = run.spec.start
        ds.activate(run.spec)
        mark = time.perf_counter()
        source: Any = None
        ordered: Any = None
        try:
            try:
                source = super().__iter__()
            finally:
                ds.activate(None)
            ordered = self._in_order(source, run)
            if self.device is not None:
                ordered = iter(DevicePrefetcher(ordered, self.device))
            if self._accelerate is not None:  # adopted by accelerator.prepare(): see accelerate.py
                ordered = self._accelerate.signal(ordered, run.num_batches)
            while True:
                asked = time.perf_counter()
                try:
                    index, samples, batch = next(ordered)
                except StopIteration:
                    break
                now = time.perf_counter()
                totals = self._totals
                totals["wait_seconds"] += now - asked
                totals["elapsed_seconds"] += now - mark
                totals["batches"] += 1
                totals["samples"] += samples
                if per_stream is not None:
                    for s, n in enumerate(per_stream[index].tolist()):
                        totals[f"samples@{s}"] += n
                mark = now
                self._consumed = index + 1
                yield batch
        finally:
            source = ordered = None  # see _in_order: the workers stop now, not with a traceback
            forget_gone(self._pools)
            drop_leases(leases, ds.mix.versions)

    def _in_order(self, source: Any, run: _Run) -> Iterator[tuple[int, int, Any]]:
        pending: dict[int, TaggedBatch] = {}
        expected = run.spec.start
        for item in source:
            if item.error is not None:
                # A traceback keeps the frames' locals: drop the DataLoader iterator first, so that its
                # workers shut down now rather than when the exception is garbage.
                source = None
                raise_error(item.error)
            for name, value in item.counters.items():
                self._totals[name] += value
            if item.claim is not None:
                self._pools.add(item.claim.token)
            pending[item.number] = item
            while expected in pending:
                ready = pending.pop(expected)
                yield expected, ready.samples, ready.batch
                expected += 1
        if expected != run.num_batches:
            raise RuntimeError(
                f"the workers stopped after batch {expected} of {run.num_batches} (holding {sorted(pending)}); "
                "this is a bug in shardcache, please report it"
            )

    # -- stats --------------------------------------------------------------------------

    def stats(self) -> LoaderStats:
        """Hits, misses, read-throughs, bytes and waiting time, summed over workers and iterations; a mix's
        per stream too (``stats().streams``)."""
        return LoaderStats.from_totals(self._totals, self.cached_dataset.streams)

    def reset_stats(self) -> None:
        self._totals = self._zero_totals()

    def _zero_totals(self) -> dict[str, float]:
        return LoaderStats().as_counters() | stream_keys(len(self.cached_dataset.streams))

    # -- state --------------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        return self.cached_dataset.identity()

    def _collective(self) -> bool:
        if not (dist.is_available() and dist.is_initialized()):
            return False
        return self.cached_dataset.ranks() == (dist.get_rank(), dist.get_world_size())

    def state_dict(self) -> dict[str, Any]:
        """Where this epoch stands. Under ``torch.distributed`` a collective: every rank must call it, and
        each gets the global state. Otherwise this rank's state (``load_state_dict`` also takes the list of
        every rank's states)."""
        run = self._next_run()
        rank, world_size = self.cached_dataset.ranks()
        local = LoaderState(
            identity=self._identity(), window=run.spec.window, epoch=self._epoch, history=self._history,
            world_size=world_size, batch_size=self.batch_size, drop_last=self.drop_last,  # type: ignore[arg-type]
            rank=rank, consumed=(self._consumed,),
        )  # fmt: skip
        if not self._collective():
            return local.to_dict()
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, local.to_dict())
        states = [LoaderState.from_dict(s, identity=local.identity) for s in gathered]
        return merge_rank_states(states).to_dict()

    def load_state_dict(self, state: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Resume where ``state`` stopped: on the same layout each rank continues its own batches; on another
        world size, batch size or drop_last, the samples not yet delivered in that epoch are re-planned
        across the new ranks, exactly once and with equal batch counts."""
        before = len(self)
        identity = self._identity()
        if isinstance(state, (list, tuple)):
            parsed = merge_rank_states([LoaderState.from_dict(s, identity=identity) for s in state])
        else:
            parsed = LoaderState.from_dict(state, identity=identity)
        ds = self.cached_dataset
        if ds.window is not None and ds.window != parsed.window:
            raise ConfigError(
                f"the state dict was saved with window={parsed.window}, this dataset has window={ds.window}: "
                "build the dataset with the same window (or window=None)"
            )
        rank, world_size = ds.ranks()
        layout = (world_size, self.batch_size, self.drop_last)
        saved = (parsed.world_size, parsed.batch_size, parsed.drop_last)
        if parsed.rank is not None:
            if saved != layout or parsed.rank != rank:
                raise ConfigError(
                    f"this state is rank {parsed.rank}'s of world_size={parsed.world_size}, batch_size="
                    f"{parsed.batch_size}, drop_last={parsed.drop_last}; this loader is rank {rank} of "
                    f"world_size={world_size}, batch_size={self.batch_size}, drop_last={self.drop_last}. "
                    "To resume on another layout pass the global state (state_dict() under torch.distributed) "
                    "or the list of every rank's state"
                )
            history, start = parsed.history, parsed.consumed[0]
        elif saved == layout and len(set(parsed.consumed)) > 1:
            # Ranks that stopped at different batches would end unevenly: re-plan what is left instead.
            history, start = (*parsed.history, parsed.segment), 0
        else:
            history, starts = resume_point(
                history=parsed.history, current=parsed.segment, world_size=world_size,
                batch_size=self.batch_size, drop_last=self.drop_last,  # type: ignore[arg-type]
            )  # fmt: skip
            start = starts[rank]
        spec = ds.spec(
            epoch=parsed.epoch, history=history, start=start, batch_size=self.batch_size,
            drop_last=self.drop_last, window=parsed.window,
        )  # fmt: skip
        num_batches = ds.plan(spec).num_batches  # raises ConfigError for a history of another dataset
        if start > num_batches:
            raise ConfigError(
                f"the state dict says {start} batches were delivered, but this epoch has {num_batches}: "
                "it belongs to another dataset version, seed or layout"
            )
        self._epoch, self._history, self._window, self._resume, self._consumed = (
            parsed.epoch, history, parsed.window, start, start,
        )  # fmt: skip
        ds.apply_epoch(parsed.epoch)
        widen_lightning_limit(sys._getframe(1), self, before)
