"""CachedMapDataset: random access to the samples of a cached dataset (a map-style torch Dataset).

>>> ds = CachedMapDataset("imagenet-train", cache="redis://127.0.0.1:7000", cache_bytes="1GiB")  # doctest: +SKIP
>>> len(ds), ds[0]["label"]                                                                   # doctest: +SKIP
>>> loader = DataLoader(ds, batch_size=64, sampler=DistributedSampler(ds), num_workers=4)     # doctest: +SKIP

For code that needs an index: its own sampler, ``DistributedSampler``, Hugging Face ``datasets``-style
code. Each read loads the whole shard holding the sample (from the cache, checksum-verified, or read
through from its source and written back, like :class:`~shardcache.dataloader.CachedDataLoader`) and
keeps it in a per-process LRU of decoded shards (``cache_bytes``). ``__getitems__``, which torch's
DataLoader calls with a batch's indices, loads each shard once per batch.

**Cost against the streaming loader.** The streaming loader reads every shard once per epoch, whole,
ahead of the training loop, on background threads. Random indices over a dataset larger than the LRU
touch about one shard per sample: a batch of 64 reads up to 64 shards of some MiB to use one sample of
each, in the training loop (or the DataLoader worker). Unless the sampler has locality or the dataset
fits in ``cache_bytes`` (per process: each DataLoader worker holds its own), prefer
``CachedDataLoader(shuffle=True)`` for training; ``benchmarks/compare.py --random-access`` measures both.
"""

from __future__ import annotations

import operator
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.util import Finalize
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset, get_worker_info

from ..cache import Lease, ShardCache
from ..cache.keys import check_dataset_name
from ..errors import ConfigError
from ..sampling import row_offsets
from .checks import (
    check_bool,
    check_cache,
    check_callable,
    check_int,
    check_prefetch_transform,
    check_seconds,
    check_size,
)
from .shardlru import ShardLRU
from .source import ShardSource
from .stats import Counters
from .tensors import BatchBuilder, ShardViews, column_specs
from .worker import MAIN_READ_THREADS, WORKER_READ_THREADS, drop_lease, take_lease

__all__ = ["CachedMapDataset", "MapStats"]

DEFAULT_CACHE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class MapStats:
    """What one process of a :class:`CachedMapDataset` read (a snapshot; DataLoader workers count their own).

    Attributes:
        samples: samples returned.
        hits, misses, corrupted, read_throughs, written_back, bytes_read, source_rows: shard loads, as in
            :class:`~shardcache.dataloader.LoaderStats` (a shard found in the LRU is not loaded).
        lru_hits: samples whose shard was in the LRU already.
        evictions: shards dropped from the LRU to stay within ``cache_bytes``.
        shards_held, bytes_held: what the LRU holds now.
    """

    samples: int = 0
    hits: int = 0
    misses: int = 0
    corrupted: int = 0
    read_throughs: int = 0
    written_back: int = 0
    bytes_read: int = 0
    source_rows: int = 0
    lru_hits: int = 0
    evictions: int = 0
    shards_held: int = 0
    bytes_held: int = 0


class _Reader:
    """A dataset's reading state in one process: built there on first use, never pickled nor shared
    across fork (a DataLoader worker builds its own, with its own lease)."""

    def __init__(self, ds: CachedMapDataset) -> None:
        self.pid = os.getpid()
        self.counters = Counters()
        self.totals: dict[str, float] = {}
        self.samples = 0
        self.lru_hits = 0
        self.lru: ShardLRU[ShardViews] = ShardLRU(budget=ds.cache_bytes)
        default = WORKER_READ_THREADS if get_worker_info() is not None else MAIN_READ_THREADS
        self.threads: int = ds.read_threads or default
        self._pool: ThreadPoolExecutor | None = None
        self.builder = BatchBuilder(ds.column_specs, dataset=ds.name)
        self.source = ShardSource(
            cache=ds.cache, manifest=ds.manifest, counters=self.counters, read_through=ds.read_through,
            write_back=ds.write_back, prefetch_transform=ds.prefetch_transform,
        )  # fmt: skip
        self.lease: Lease | None = take_lease(ds.cache, ds.name, ds.version, ttl=ds.lease_ttl)
        # Released when the dataset is closed or collected, or when the process exits (a DataLoader worker
        # too: multiprocessing runs these at a child's exit, and ignores them in a forked copy).
        self.finalize = Finalize(self, drop_lease, args=(self.lease, ds.name), exitpriority=10)

    def shards(self, indices: Sequence[int]) -> Iterator[tuple[int, ShardViews, bool]]:
        """``(index, views, from the LRU)`` for each of ``indices``: those in the LRU first, then the others,
        loaded ``threads`` at a time (each shard of a batch would otherwise wait for the one before)."""
        missing = []
        for index in indices:
            views = self.lru.get(index)
            if views is None:
                missing.append(index)
            else:
                yield index, views, True
        if len(missing) <= 1 or self.threads == 1:
            for index in missing:
                yield index, self._load(index), False
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="shardcache-map-read")
        todo = iter(missing)
        running: deque[tuple[int, Future[ShardViews]]] = deque()
        try:
            for index in todo:  # at most `threads` shards loaded ahead of the one being used
                running.append((index, self._pool.submit(self._load, index)))
                if len(running) >= self.threads:
                    done, future = running.popleft()
                    yield done, future.result(), False
            while running:
                done, future = running.popleft()
                yield done, future.result(), False
        finally:
            for _, future in running:
                future.cancel()

    def _load(self, index: int) -> ShardViews:
        table = self.source.load(index)
        views = self.builder.views(table, shard=index)
        self.lru.put(index, views, nbytes=table.nbytes)
        return views

    def stats(self) -> MapStats:
        for key, value in self.counters.take().items():
            self.totals[key] = self.totals.get(key, 0) + value
        known = MapStats.__dataclass_fields__
        counted = {k: int(v) for k, v in self.totals.items() if k in known}
        return MapStats(samples=self.samples, lru_hits=self.lru_hits, evictions=self.lru.evictions,
                        shards_held=len(self.lru), bytes_held=self.lru.nbytes, **counted)  # fmt: skip

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.lru.clear()
        self.finalize()  # releases the lease, once


class CachedMapDataset(Dataset[Any]):
    """The samples of a cached dataset version by index: ``len(ds)`` rows, ``ds[i]`` one sample.

    A sample is a dict column -> value, as one row of a :class:`~shardcache.dataloader.CachedDataLoader`
    batch: fixed-width columns (numbers, ``fixed_size_binary``, fixed-size lists, tensors) as tensors of
    the per-sample shape (a scalar is a 0-d tensor), so that torch's default collate builds the loader's
    batch; other columns as Python values. Indices follow the dataset's source order (the prefetch's
    shard order); negative ones count from the end.

    Args:
        name: the dataset's name in the cache.
        cache: a :class:`~shardcache.ShardCache` or its URL (default: ``SHARDCACHE_REDIS_URL``).
        version: the version to read (default: the newest, complete or still loading).
        columns: the columns to read (default: all).
        transform: called on each sample dict; returns the sample to deliver. Picklable for spawned workers.
        read_through: rebuild shards the cache cannot serve from the source (else raise ShardMissing).
        prefetch_transform: the transform the prefetch applied, needed to rebuild shards of a transformed
            dataset; checked against the manifest's transform id.
        write_back: write rebuilt shards back into the cache.
        cache_bytes: bytes of decoded shards each process keeps (LRU; e.g. ``"1GiB"``); the shard just
            loaded is kept even when it alone is larger, and a batch's shards loading at the same time
            (``read_threads``) may briefly add theirs.
        read_threads: shards of one batch loaded at the same time (default 2 in a DataLoader worker, 3
            without workers).
        lease_ttl: seconds a reader's lease outlives a reader that died. The process that builds the
            dataset holds a lease on the version from then on, and every other process that reads it (a
            DataLoader worker) from its first read, until :meth:`close`, garbage collection or its exit.
    """

    def __init__(
        self,
        name: str,
        *,
        cache: ShardCache | str | None = None,
        version: str | None = None,
        columns: Sequence[str] | None = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        read_through: bool = True,
        prefetch_transform: Callable[[Any], Any] | None = None,
        write_back: bool = True,
        cache_bytes: int | str = DEFAULT_CACHE_BYTES,
        read_threads: int | None = None,
        lease_ttl: float | str = 60.0,
    ) -> None:
        check_dataset_name(name, argument="name")
        self.transform = check_callable("transform", transform, what="a function of the sample dict")
        self.read_through = check_bool("read_through", read_through)
        self.prefetch_transform = check_callable(
            "prefetch_transform", prefetch_transform, what="the prefetch's RecordBatch -> RecordBatch function"
        )
        self.write_back = check_bool("write_back", write_back)
        budget = check_size("cache_bytes", cache_bytes)
        if budget is None or budget < 1:
            raise ConfigError(f"cache_bytes={cache_bytes!r} is invalid: pass a size such as '1GiB' (at least 1 byte)")
        self.cache_bytes = budget
        self.read_threads = check_int("read_threads", read_threads, minimum=1, fix="pass at least 1", optional=True)
        self.lease_ttl = check_seconds("lease_ttl", lease_ttl)
        self.cache = check_cache(cache)
        self.manifest = self.cache.manifest(name, version)
        self.name = name
        self.version = self.manifest.version
        self.column_specs = column_specs(self.manifest.schema, columns)
        self.offsets = row_offsets([s.rows for s in self.manifest.shards])
        if self.prefetch_transform is not None:
            check_prefetch_transform(self.prefetch_transform, self.manifest)
        self._reader: _Reader | None = None
        self._open()  # the lease, from now on

    def __repr__(self) -> str:
        return f"CachedMapDataset({self.name!r}, version={self.version!r}, cache={self.cache!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reader"] = None  # each process reads with its own (see _Reader)
        return state

    @property
    def columns(self) -> list[str]:
        return [s.name for s in self.column_specs]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: Any) -> Any:
        try:
            i = operator.index(index)
        except TypeError:
            raise TypeError(
                f"CachedMapDataset indices must be integers, not {type(index).__name__}; pass a list of integers "
                "to __getitems__ for several samples"
            ) from None
        return self._read(np.array([i], dtype=np.int64))[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """The samples at ``indices`` (torch's DataLoader calls this with a batch's indices), in that order;
        each shard they fall in is loaded once."""
        array = np.asarray(indices)
        if array.ndim != 1 or (array.size and (array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer))):
            raise TypeError(
                f"CachedMapDataset.__getitems__ takes a sequence of integers, not {type(indices).__name__} of "
                f"{array.dtype} with shape {array.shape}"
            )
        return self._read(array.astype(np.int64, copy=False))

    def _read(self, ids: np.ndarray) -> list[Any]:
        n = len(self)
        ids = np.where(ids < 0, ids + n, ids)
        bad = np.flatnonzero((ids < 0) | (ids >= n))
        if len(bad):
            given = int(ids[bad[0]]) - (n if ids[bad[0]] < 0 else 0)
            raise IndexError(f"index {given} is out of range for dataset {self.name!r} of {n} samples")
        reader = self._open()
        shards = np.searchsorted(self.offsets, ids, side="right") - 1
        samples: list[dict[str, Any]] = [{} for _ in range(len(ids))]
        for shard, views, known in reader.shards(list(dict.fromkeys(shards.tolist()))):
            positions = np.flatnonzero(shards == shard)
            if known:
                reader.lru_hits += len(positions)
            rows = ids[positions] - self.offsets[shard]
            self._fill(samples, positions, views, rows)
        reader.samples += len(ids)
        if self.transform is None:
            return samples
        return [self.transform(sample) for sample in samples]

    def _fill(self, samples: list[dict[str, Any]], positions: np.ndarray, views: ShardViews, rows: np.ndarray) -> None:
        for spec in self.column_specs:
            array = views.arrays[spec.name]
            if spec.kind == "tensor":
                values: Sequence[Any] = torch.from_numpy(np.ascontiguousarray(array[rows])).unbind(0)
            else:
                values = array.take(pa.array(rows)).to_pylist()
            for position, value in zip(positions.tolist(), values, strict=True):
                samples[position][spec.name] = value

    # -- the process's state -------------------------------------------------------------

    def _open(self) -> _Reader:
        reader = self._reader
        if reader is None or reader.pid != os.getpid():
            reader = self._reader = _Reader(self)
        return reader

    def stats(self) -> MapStats:
        """What this process read through this dataset so far (see :class:`MapStats`)."""
        reader = self._reader
        if reader is None or reader.pid != os.getpid():
            return MapStats()
        return reader.stats()

    @property
    def lease(self) -> Lease | None:
        """This process's lease on the version, or None (closed, or the cache refused one)."""
        reader = self._reader
        if reader is None or reader.pid != os.getpid() or not reader.finalize.still_active():
            return None
        return reader.lease

    def close(self) -> None:
        """Release this process's lease and shards; a later read takes them again."""
        reader, self._reader = self._reader, None
        if reader is not None and reader.pid == os.getpid():
            reader.close()

    def __enter__(self) -> CachedMapDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
