"""CachedDataset: an IterableDataset of whole batches, streamed from the shards of a cached dataset.

>>> ds = CachedDataset("imagenet-train", cache="redis://127.0.0.1:7000", batch_size=256)   # doctest: +SKIP
>>> for batch in ds:                                                                       # doctest: +SKIP
...     images, labels = batch["image"], batch["label"]

A mix of several cached datasets (``stream.py`` for the quota rule, ``mix.py`` for how it is read)::

    CachedDataset([Stream("web", weight=0.7), Stream("books", weight=0.3)], cache=url, epoch_size=100_000)

Usually wrapped in :class:`~shardcache.dataloader.CachedDataLoader`, which adds workers in plan order,
``state_dict`` and stats. On its own (or in a plain ``DataLoader(ds, batch_size=None)``) it yields the
same batches; with workers a plain DataLoader interleaves them in another order.

Wrappers that would deliver wrong data raise :class:`~shardcache.errors.ConfigError` instead (see
``_check_caller``): a DataLoader with a batch size (its items are whole batches already; this is also
what accelerate's ``skip_first_batches`` builds), ``IterableDatasetShard`` (its batches are already
split across ranks), and a foreign DataLoader's workers reading a dataset that feeds a CachedDataLoader.
"""

from __future__ import annotations

import math
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from ..cache import ShardCache
from ..errors import CacheUnavailable, ConfigError
from ..sampling import default_window
from .checks import check_bool, check_cache, check_callable, check_int, check_seconds, check_size
from .context import ReadContext
from .mix import resolve_mix
from .plan import EpochPlan, PlanSegment
from .spec import IterSpec, SharedSpec
from .state import rows_digest
from .stream import Stream, as_streams
from .tensors import BufferPool
from .worker import iterate_batches

__all__ = ["CachedDataset"]

MIN_READAHEAD = 32 * 1024 * 1024


class CachedDataset(IterableDataset[Any]):
    """The batches of one rank of a cached dataset version, for one epoch at a time.

    Args:
        name: the dataset's name in the cache, or a mix: a list of :class:`Stream` (each with its version,
            weight or samples, and columns); see ``stream.py`` for how quotas are fixed.
        cache: a :class:`~shardcache.ShardCache` or its URL (default: ``SHARDCACHE_REDIS_URL``).
        version: the version to read (default: the newest, complete or still loading).
        columns: the columns to read (default: all).
        shuffle: shuffle shards, rows, and across shards within a window (see ``plan.py``); False reads
            each rank's contiguous slice in source order.
        seed: the seed of the shuffle; ``set_epoch`` changes the order from epoch to epoch.
        rank, world_size: this rank and the number of ranks; default to ``torch.distributed`` when it
            is initialised, else 0 and 1. Pass both or neither.
        transform: called in the worker on each batch dict (column -> tensor or list); returns the
            batch to deliver (e.g. decodes images). It must be picklable for spawned workers.
        read_through: rebuild shards the cache cannot serve from the source (else raise ShardMissing).
        prefetch_transform: the transform the prefetch applied (``RecordBatch -> RecordBatch``), needed
            to rebuild shards of a transformed dataset; checked against the manifest's transform id.
        write_back: write rebuilt shards back into the cache.
        batch_size, drop_last: set by CachedDataLoader; give them to iterate the dataset directly.
        window: samples per cross-shard shuffle window (default: four shards' worth, rounded up to a
            multiple of the batch size so that windows start on batch boundaries).
        readahead: bytes of shards each worker may hold, loaded or loading (default: two windows'
            worth, at least 32 MiB); shards the current batch needs are always let through.
        read_threads: shards loaded at the same time by each worker (default 2), or by the main process
            when there are no workers (default 3: nothing else reads beside it).
        lease_ttl: seconds a reader's lease outlives a reader that died; renewed while iterating.
        epoch_size: samples an epoch (default: every row once; a mix: see ``stream.py``). Fewer than
            the rows continue where the previous epoch stopped, more wrap into another pass.

    With ``drop_last=True``, a lone dataset read whole that gives a rank fewer samples than a batch yields
    no batch, as a DataLoader does; an epoch whose size was asked for (``epoch_size=``, or a mix) and is
    too small to give every rank one whole batch raises ConfigError instead (none of it would be read).
    """

    def __init__(
        self,
        name: str | Stream | Sequence[Stream],
        *,
        cache: ShardCache | str | None = None,
        version: str | None = None,
        columns: Sequence[str] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        read_through: bool = True,
        prefetch_transform: Callable[[Any], Any] | None = None,
        write_back: bool = True,
        batch_size: int | None = None,
        drop_last: bool = False,
        window: int | None = None,
        readahead: int | str | None = None,
        read_threads: int | None = None,
        lease_ttl: float | str = 60.0,
        epoch_size: int | None = None,
    ) -> None:
        super().__init__()
        streams = as_streams(name, version)
        self.shuffle = check_bool("shuffle", shuffle)
        self.seed = check_int("seed", seed, minimum=0, fix="pass an integer >= 0")
        self._rank_arg, self._world_size_arg = _check_ranks(rank, world_size)
        self.transform = check_callable("transform", transform, what="a function of the batch dict")
        self.read_through = check_bool("read_through", read_through)
        self.prefetch_transform = check_callable(
            "prefetch_transform", prefetch_transform, what="the prefetch's RecordBatch -> RecordBatch function"
        )
        self.write_back = check_bool("write_back", write_back)
        self.batch_size = check_int("batch_size", batch_size, minimum=1, fix="pass at least 1", optional=True)
        self.drop_last = check_bool("drop_last", drop_last)
        self._window_arg = check_int("window", window, minimum=1, fix="pass samples >= 1, or None", optional=True)
        self._readahead_arg = check_size("readahead", readahead)
        self.read_threads = check_int("read_threads", read_threads, minimum=1, fix="pass at least 1", optional=True)
        self.lease_ttl = check_seconds("lease_ttl", lease_ttl)
        self.cache = check_cache(cache)
        fix = "pass the samples of an epoch, at least 1, or None"
        self.epoch_size = check_int("epoch_size", epoch_size, minimum=1, fix=fix, optional=True)
        self.mix, self.column_specs = resolve_mix(self.cache, streams, columns=columns, epoch_size=self.epoch_size)
        self.manifest = self.mix.parts[0].manifest  # a mix's first stream's
        self.name = self.mix.name
        self.version = self.mix.version
        self.rows = self.mix.rows
        self.mix.check_prefetch_transform(self.prefetch_transform)
        self._epoch = 0
        self._shared = SharedSpec()
        self._active: IterSpec | None = None
        self._plans: dict[tuple[Any, ...], EpochPlan] = {}
        self._batch_size_given = self.batch_size is not None
        self._owner: weakref.ref[Any] | None = None
        self._output_pool: BufferPool | None = None
        if self.batch_size is not None:
            self._shared.publish(self.spec())

    def __repr__(self) -> str:
        return f"CachedDataset({self.name!r}, version={self.version!r}, cache={self.cache!r})"

    @property
    def streams(self) -> tuple[str, ...]:
        """The label of each stream (the dataset's name alone for one dataset), as ``stats().streams`` keys them."""
        return self.mix.labels

    def identity(self) -> dict[str, Any]:
        """What a state dict records of the data read, so that it cannot be loaded into another."""
        identity = {"dataset": self.name, "version": self.version, "seed": self.seed, "shuffle": self.shuffle,
                    "rows": rows_digest(self.rows)}  # fmt: skip
        mix = self.mix.identity()
        if mix is not None:
            identity["mix"] = mix
        return identity

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_plans"] = {}  # rebuilt on the other side rather than pickled
        state["_owner"] = None  # a weak reference does not pickle; the copy belongs to no loader
        state["_output_pool"] = None  # buffers of this process
        return state

    # -- what to read ----------------------------------------------------------------

    @property
    def columns(self) -> list[str]:
        return [s.name for s in self.column_specs]

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` next (another order of the same samples). A dataset that feeds a
        CachedDataLoader passes this on to the loader (frameworks call ``loader.dataset.set_epoch``)."""
        epoch = check_int("epoch", epoch, minimum=0, fix="pass an integer >= 0")
        owner = self._owner() if self._owner is not None else None
        if owner is not None:
            owner.set_epoch(epoch)  # it comes back through apply_epoch
        else:
            self.apply_epoch(epoch)

    def apply_epoch(self, epoch: int) -> None:
        """Set the epoch here only (the loader's side of ``set_epoch``)."""
        self._epoch = check_int("epoch", epoch, minimum=0, fix="pass an integer >= 0")
        if self.batch_size is not None and self._owner is None:  # a loader publishes its own spec
            self._shared.publish(self.spec())

    @property
    def given_ranks(self) -> tuple[int, int] | None:
        """``(rank, world_size)`` as given to the constructor, or None: they follow ``torch.distributed``."""
        if self._rank_arg is not None and self._world_size_arg is not None:
            return self._rank_arg, self._world_size_arg
        return None

    def ranks(self) -> tuple[int, int]:
        """``(rank, world_size)``: as given, else from ``torch.distributed``, else ``(0, 1)``."""
        if self.given_ranks is not None:
            return self.given_ranks
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    @property
    def window(self) -> int | None:
        """The shuffle window given to the constructor, or None for the default (see ``window_for``)."""
        return self._window_arg

    def window_for(self, batch_size: int) -> int:
        """The shuffle window used with ``batch_size`` (see the class docstring)."""
        if self._window_arg is not None:
            return self._window_arg
        return math.ceil(default_window(self.rows) / batch_size) * batch_size

    def spec(
        self,
        *,
        epoch: int | None = None,
        history: Sequence[PlanSegment] = (),
        start: int = 0,
        batch_size: int | None = None,
        drop_last: bool | None = None,
        window: int | None = None,
        tagged: bool = False,
        lease: bool = True,
        chunked: bool = False,
    ) -> IterSpec:
        """The :class:`IterSpec` of an iteration; defaults come from this dataset."""
        batch_size = self.batch_size if batch_size is None else batch_size
        if batch_size is None:
            raise ConfigError(
                f"dataset {self.name!r} has no batch size: wrap it in CachedDataLoader(ds, batch_size=...) "
                "or pass batch_size= to CachedDataset"
            )
        window = self.window_for(batch_size) if window is None else window
        rank, world_size = self.ranks()
        drop_last = self.drop_last if drop_last is None else drop_last
        self._check_epoch_fills_a_batch(batch_size=batch_size, drop_last=drop_last, world_size=world_size)
        return IterSpec(
            epoch=self._epoch if epoch is None else epoch,
            history=tuple(history),
            start=start,
            rank=rank,
            world_size=world_size,
            batch_size=batch_size,
            drop_last=drop_last,
            window=window,
            # One window of batches per worker keeps each worker on its own shards (the CachedDataLoader
            # may give each several). Without the loader to restore the order, workers take turns batch
            # by batch (plain DataLoader order).
            chunk=max(1, window // batch_size) if chunked else 1,
            tagged=tagged,
            lease=lease,
        )

    def _check_epoch_fills_a_batch(self, *, batch_size: int, drop_last: bool, world_size: int) -> None:
        """ConfigError for an epoch whose size was asked for (``epoch_size=`` or a mix) that, with
        ``drop_last``, gives no rank a whole batch (the smallest rank's part is ``samples // world_size``)."""
        samples = self.mix.epoch_samples
        if not drop_last or self.mix.single or samples // world_size >= batch_size:
            return
        asked = f"epoch_size={self.epoch_size}" if self.epoch_size is not None else "the streams' quotas"
        raise ConfigError(
            f"an epoch of {samples} samples ({asked}) gives each of {world_size} rank(s) {samples // world_size}, "
            f"fewer than batch_size={batch_size}: with drop_last=True no rank would yield a batch; raise the epoch "
            f"to at least {world_size * batch_size} samples, lower batch_size, or pass drop_last=False"
        )

    def plan(self, spec: IterSpec) -> EpochPlan:
        """The epoch plan of ``spec`` for its rank (the last few are kept)."""
        key = (spec.epoch, spec.history, spec.rank, spec.world_size, spec.batch_size, spec.drop_last, spec.window)
        plan = self._plans.get(key)
        if plan is None:
            plan = EpochPlan.build(
                rows=self.rows, seed=self.seed, epoch=spec.epoch, shuffle=self.shuffle, window=spec.window,
                world_size=spec.world_size, rank=spec.rank, batch_size=spec.batch_size,
                drop_last=spec.drop_last, history=spec.history, mix=self.mix.plan_parts,
            )  # fmt: skip
            if len(self._plans) >= 4:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = plan
        return plan

    def stream_counts(self, spec: IterSpec) -> np.ndarray | None:
        """A mix's samples of each stream in each batch of ``spec``'s plan (``[batch, stream]``), else None."""
        if len(self.mix.parts) < 2:
            return None
        plan = self.plan(spec)
        return self.mix.batch_stream_counts(plan.shard_of, plan.samples, plan.batch_size)

    def __len__(self) -> int:
        """Batches this rank yields in an epoch (the same on every rank)."""
        return self.plan(self.spec()).num_batches

    # -- reading ------------------------------------------------------------------------

    @property
    def sample_nbytes(self) -> float:
        """Mean bytes of one sample in the cache (all columns)."""
        return sum(self.shard_nbytes) / max(1, sum(self.rows))

    @property
    def shard_nbytes(self) -> list[int]:
        """Bytes of each shard: as recorded, or the mean of the recorded ones for shards not cached yet."""
        out = []
        for part in self.mix.parts:
            recorded = [s.nbytes for s in part.manifest.shards if s.cached]
            mean = int(np.mean(recorded)) if recorded else 1 << 20
            out += [s.nbytes if s.cached else mean for s in part.manifest.shards]
        return out

    def readahead_bytes(self, window: int) -> int:
        """Bytes of shards each worker may hold with shuffle window ``window``: as given, else two
        windows' worth (every batch of a window reads the window's shards), at least MIN_READAHEAD."""
        if self._readahead_arg is not None:
            return self._readahead_arg
        sizes = self.shard_nbytes
        window_shards = math.ceil(window / max(1.0, sum(self.rows) / len(self.rows)))
        return max(MIN_READAHEAD, 2 * (window_shards + 1) * int(np.mean(sizes)))

    def output_pool(self) -> BufferPool:
        """The batch buffers of iterations without workers, reused from epoch to epoch."""
        if self._output_pool is None:
            self._output_pool = BufferPool()
        return self._output_pool

    def read_context(self, spec: IterSpec, *, in_worker: bool) -> ReadContext:
        """What the worker reads to iterate ``spec`` (see ``context.py``), as this dataset stands now.

        Built in the process that reads, from its own copy of the dataset; ``in_worker`` leaves out the
        main process's output buffers."""
        return ReadContext(
            cache=self.cache, manifest=self.manifest, columns=self.column_specs, plan=self.plan(spec),
            shard_nbytes=tuple(self.shard_nbytes), readahead=self.readahead_bytes(spec.window),
            read_threads=self.read_threads, transform=self.transform, read_through=self.read_through,
            write_back=self.write_back, prefetch_transform=self.prefetch_transform, lease_ttl=self.lease_ttl,
            output_pool=None if in_worker else self.output_pool(), mix=None if self.mix.single else self.mix,
        )  # fmt: skip

    def refresh(self) -> None:
        """Re-read still-loading manifests, so that shards written since are read from the cache."""
        manifests = [part.manifest for part in self.mix.parts]
        if all(m.state != "loading" for m in manifests):
            return
        try:
            manifests = [self.cache.manifest(m.name, m.version) if m.state == "loading" else m for m in manifests]
        except CacheUnavailable:
            return  # shards are read through; each one is looked up again when it is read
        self.mix = self.mix.with_manifests(manifests)
        self.manifest = self.mix.parts[0].manifest

    def bind(self, *, batch_size: int, drop_last: bool, owner: object) -> None:
        """Give the dataset to one CachedDataLoader, which then decides what each iteration reads."""
        bound = self._owner() if self._owner is not None else None
        if bound is not None and bound is not owner:
            raise ConfigError(
                f"dataset {self.name!r} already feeds another CachedDataLoader; build one CachedDataset per loader"
            )
        if self._batch_size_given and batch_size != self.batch_size:
            raise ConfigError(
                f"batch_size={batch_size} differs from the dataset's batch_size={self.batch_size}; "
                "give the batch size to one of them"
            )
        self._check_epoch_fills_a_batch(batch_size=batch_size, drop_last=drop_last, world_size=self.ranks()[1])
        self.batch_size, self.drop_last = batch_size, drop_last
        self._owner = weakref.ref(owner)

    def activate(self, spec: IterSpec | None) -> None:
        """Read ``spec`` in the next iteration: in workers (shared memory) and, until the iteration has
        started, in this process. ``None`` forgets it here; workers keep it until the next one."""
        self._active = spec
        if spec is not None:
            self._shared.publish(spec)

    def __iter__(self) -> Iterator[Any]:
        ours = self._check_caller(sys._getframe(1))
        info = get_worker_info()
        if info is None:
            spec = self._active if self._active is not None else self.spec()
            return self._batches(spec, worker=0, num_workers=1, in_worker=False)
        shared = self._shared.read()
        if shared is None:
            raise ConfigError(
                f"dataset {self.name!r} has no batch size: wrap it in CachedDataLoader(ds, batch_size=...) "
                "or pass batch_size= to CachedDataset"
            )
        if shared.tagged and not ours:
            raise ConfigError(
                f"a DataLoader other than its CachedDataLoader reads dataset {self.name!r} in workers, but the "
                "dataset feeds a CachedDataLoader, whose workers it serves: iterate that CachedDataLoader, or "
                "build another CachedDataset (with batch_size=) for this DataLoader and pass batch_size=None to it"
            )
        return self._batches(shared, worker=info.id, num_workers=info.num_workers, in_worker=True)

    def _batches(self, spec: IterSpec, *, worker: int, num_workers: int, in_worker: bool) -> Iterator[Any]:
        # The context is built on the first next(), as the iteration starts reading.
        context = self.read_context(spec, in_worker=in_worker)
        yield from iterate_batches(context, spec, worker=worker, num_workers=num_workers)

    def _check_caller(self, frame: Any) -> bool:
        """Whether ``frame`` (the caller of ``__iter__``) is a CachedDataLoader's fetcher; raises ConfigError
        for wrappers that would deliver wrong data. Looked up by name, so that neither torch's private
        fetcher nor transformers/accelerate need importing."""
        caller = frame.f_locals.get("self") if frame is not None else None
        while caller is self and frame is not None:  # a subclass's __iter__ that calls this one
            frame = frame.f_back
            caller = frame.f_locals.get("self") if frame is not None else None
        kind = type(caller).__name__
        if kind == "IterableDatasetShard":
            raise ConfigError(
                f"IterableDatasetShard wraps dataset {self.name!r}, whose batches are already split across ranks "
                "(it would drop or repeat samples): give the framework the CachedDataLoader itself (e.g. return it "
                "from Trainer.get_train_dataloader) instead of the dataset"
            )
        if kind != "_IterableDatasetFetcher":
            return False  # iterated directly, or by a wrapper that takes its batches as they are
        collate = getattr(caller, "collate_fn", None)
        ours = getattr(collate, "feeds_cached_loader", False) is True
        if getattr(caller, "auto_collation", False):
            rebuilt = (
                "a DataLoader rebuilt from a CachedDataLoader's attributes (e.g. accelerate's skip_first_batches, "
                "which transformers.Trainer calls to resume: use shardcache.dataloader.hf.CachedLoaderCallback "
                "with TrainingArguments(ignore_data_skip=True))"
                if ours
                else "a DataLoader with a batch size"
            )
            raise ConfigError(
                f"{rebuilt} iterates dataset {self.name!r}, whose items are whole batches (it would deliver "
                "batches of batches): iterate a CachedDataLoader(ds, batch_size=...), or pass batch_size=None "
                "to the DataLoader"
            )
        return ours


def _check_ranks(rank: object, world_size: object) -> tuple[int | None, int | None]:
    if (rank is None) != (world_size is None):
        raise ConfigError(
            f"rank={rank!r}, world_size={world_size!r}: pass both, or neither to use torch.distributed"
        )
    if rank is None:
        return None, None
    world = check_int("world_size", world_size, minimum=1, fix="pass the number of ranks, at least 1")
    r = check_int("rank", rank, minimum=0, fix="pass 0 <= rank < world_size")
    if r >= world:
        raise ConfigError(f"rank={r} is invalid for world_size={world}: pass 0 <= rank < world_size")
    return r, world
