"""Batches built in place: a shard's largest column received from the socket straight into its batches.

A loader would copy every byte twice: the kernel copies a shard from the socket into its buffer, then
the gather copies its rows into the batch. Instead, the read-ahead thread that loads a shard has its
largest fixed-width column received straight into the tensors of the batches that use the shard
(``ShardCache.get_payload(..., into=...)``), and copies the shard's other tensor columns there
itself. An unshuffled read receives one run of consecutive rows per batch; a shuffled read receives
each row into its own position, scattered over the batches of the shard's window (one ``recv_into``
per image-sized row, no more calls than the ordinary read's 256 KiB steps). A shard whose rows
include one twice (a padding sample) is gathered as usual. The batch loop then finds the batch made
(a :class:`Prepared`). In a DataLoader worker those tensors are the shared-memory block the batch
travels in (a pool slot, taken ahead).

Where a column's bytes lie in a payload is learned from the first shard of each row count, read the
ordinary way, and checked again on every shard once it is decoded. A shard whose column is not where
it was expected is read again the ordinary way; one rebuilt from its source is gathered as usual.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from .source import ShardSource
from .tensors import ROW_COPY_BYTES, BatchBuilder, Prepared, ShardViews, copy_rows, row_runs

if TYPE_CHECKING:
    from .mix import MixSource

__all__ = ["InPlace", "Use"]

Use = tuple[int, int, np.ndarray, np.ndarray]
"""``(key, size, rows, positions)``: batch ``key`` of ``size`` samples holds ``rows`` of a shard at ``positions``."""


class InPlace:
    """Loads shards into the batches that use them (see the module docstring); thread-safe."""

    def __init__(self, builder: BatchBuilder, source: ShardSource | MixSource) -> None:
        self._builder = builder
        self._source = source
        tensors = [s for s in builder.specs if s.kind == "tensor" and s.dtype is not None]
        sizes = {s.name: s.dtype.itemsize * math.prod(s.shape) for s in tensors if s.dtype is not None}
        largest = max(tensors, key=lambda s: sizes[s.name], default=None)
        self.column = largest.name if largest is not None and sizes[largest.name] >= ROW_COPY_BYTES else None
        self._row_bytes = sizes.get(self.column or "", 0)
        self._offsets: dict[int, int] = {}  # rows of a shard -> where the column starts in its payload
        self._prepared: dict[int, Prepared] = {}
        self._lock = threading.Lock()
        self._loading = 0  # loads under way: they may still write into prepared batches
        self._closed = False

    def load(self, index: int, uses: Sequence[Use]) -> ShardViews:
        """Shard ``index``, its rows already in the batches of ``uses`` when it could be received there."""
        with self._lock:
            self._loading += 1
        try:
            return self._load(index, uses)
        finally:
            with self._lock:
                self._loading -= 1
                left = self._leftovers()
            self._discard(left)

    def close(self) -> None:
        """No more batches are taken: the prepared ones left are discarded (their pool slots given
        back) once no load writes into them any more. Loads after this gather as usual."""
        with self._lock:
            self._closed = True
            left = self._leftovers()
        self._discard(left)

    def _leftovers(self) -> list[Prepared]:
        """Under the lock: the prepared batches to discard, once closed and no load runs."""
        if not self._closed or self._loading:
            return []
        left = list(self._prepared.values())
        self._prepared.clear()
        return left

    def _discard(self, left: list[Prepared]) -> None:
        for prepared in left:
            self._builder.discard(prepared)

    def _load(self, index: int, uses: Sequence[Use]) -> ShardViews:
        rows = self._source.shard_rows(index)
        offset, into = self._into(rows, uses)
        table, payload = self._source.load_into(index, into)
        views = self._builder.views(table, shard=index)
        found = self._learn(views, payload)
        if not into or payload is None:  # nothing placed, or rebuilt from the source: gathered as usual
            return views
        if found != offset:  # not where the last shard of this size had it: its bytes are in no batch
            table, _ = self._source.load_into(index)
            return self._builder.views(table, shard=index)
        for key, _, shard_rows, positions in uses:
            prepared = self._prepared[key]
            for spec in self._builder.specs:
                if spec.kind == "tensor" and spec.name != self.column:
                    copy_rows(prepared.outputs[spec.name][1], views.arrays[spec.name], shard_rows, positions)
            with self._lock:
                prepared.done.add(id(views))
        views.holes = self.column
        self._source.counters.add(received_in_place=1)
        return views

    def take(self, key: int) -> Prepared | None:
        """Batch ``key``'s outputs, if a shard was received into them (then forgotten here)."""
        with self._lock:
            return self._prepared.pop(key, None)

    def _into(self, rows: int, uses: Sequence[Use]) -> tuple[int | None, list[tuple[int, memoryview]]]:
        """Where the column starts in a payload of ``rows`` rows, and the destination of each run of it."""
        with self._lock:
            offset = None if self._closed else self._offsets.get(rows)
        if self.column is None or offset is None:
            return None, []
        if not uses or not _distinct_rows(uses):
            return None, []  # a row in two places (a padding sample): one payload range, two destinations
        into = []
        width = self._row_bytes
        for key, size, shard_rows, positions in uses:
            with self._lock:
                prepared = self._prepared.get(key)
            if prepared is None:  # made outside the lock (it may map a block); another load may win
                made = self._builder.prepare(size)
                with self._lock:
                    prepared = self._prepared.setdefault(key, made)
                if prepared is not made:
                    self._builder.discard(made)
            out: Any = prepared.outputs[self.column][1]
            flat = memoryview(out).cast("B")
            # Unshuffled: one run per batch. Shuffled: a run per row, each row received straight into
            # its own position (the socket scatters the shard over the window's batches).
            for position, row, count in row_runs(positions, shard_rows):
                into.append((offset + row * width, flat[position * width : (position + count) * width]))
        return offset, into

    def _learn(self, views: ShardViews, payload: pa.Buffer | None) -> int | None:
        """Where the column's bytes start in ``payload``, remembered for shards of as many rows."""
        if self.column is None or payload is None:
            return None
        array: Any = views.arrays[self.column]
        start = array.ctypes.data - payload.address
        if not array.flags.c_contiguous or start < 0 or start + views.rows * self._row_bytes > payload.size:
            with self._lock:
                self._offsets.pop(views.rows, None)
            return None  # not a plain view of the payload (e.g. a converted column)
        with self._lock:
            self._offsets[views.rows] = start
        return int(start)


def _distinct_rows(uses: Sequence[Use]) -> bool:
    """Whether no row of the shard is used twice across ``uses``."""
    # A sort, not np.unique: numpy 2's unique imports numpy.ma on first use, some 30 ms of every worker's
    # first batch.
    rows = np.sort(np.concatenate([shard_rows for _, _, shard_rows, _ in uses]))
    return not bool((rows[1:] == rows[:-1]).any())
