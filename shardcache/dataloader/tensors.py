"""Arrow rows to a batch of tensors, built in one copy from zero-copy views of the shards.

A batch is a dict mapping column name to value:

* numeric and boolean columns become tensors of shape ``[B]``;
* ``fixed_size_binary(N)`` becomes ``uint8 [B, N]``; ``fixed_size_list<T>[N]`` (nested too) ``[B, N, ...]``;
* ``fixed_shape_tensor`` becomes ``[B, *shape]``;
* every other type (variable-length binary and string, lists, structs, dates...) stays a Python list.

Each shard is viewed once (:meth:`BatchBuilder.views`, zero-copy numpy arrays over the Arrow buffers);
a batch then copies its rows straight into the output tensor, one ``out[positions] = view[rows]`` per
shard. That runs at memcpy-like speed, about six times faster than an Arrow ``take`` over the
concatenated shards. An unshuffled read skips even that copy for its largest column (see
:mod:`.inplace`). In a DataLoader worker the output lives in shared memory from the start, so
handing it to the main process copies nothing more, and large outputs come from the worker's
:class:`~shardcache.dataloader.slots.SlotPool`, reused once the main process has dropped them; in
the main process output buffers are reused once the training loop has dropped every reference to
them. Either way a batch is not page-faulted afresh each time, which costs several times the copy.
"""

from __future__ import annotations

import itertools
import math
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.types as pat
import torch
from torch.utils.data import get_worker_info

from ..errors import ConfigError
from .slots import POOL_MIN_BYTES, SlotClaim, SlotPool, shared_bytes

__all__ = ["BatchBuilder", "BufferPool", "ColumnSpec", "Prepared", "ShardViews", "column_specs"]

# Arrow types whose values numpy can view without a copy (bool is bit-packed: converted once per shard).
# Rows at least this large are copied one slice at a time (see BatchBuilder.gather).
ROW_COPY_BYTES = 8192
_ALIGN = 64  # bytes; where each column starts in a worker's output block
_NUMERIC = (pat.is_integer, pat.is_floating)


@dataclass(frozen=True)
class ColumnSpec:
    """How one column becomes part of a batch: a ``tensor`` of ``dtype`` and per-sample ``shape``, or a ``list``."""

    name: str
    kind: str
    dtype: np.dtype[Any] | None = None
    shape: tuple[int, ...] = ()


def _fixed_shape(arrow_type: pa.DataType) -> tuple[tuple[int, ...], pa.DataType] | None:
    """Per-sample shape and leaf type of a fixed-width column, or None for a list column."""
    if isinstance(arrow_type, pa.FixedShapeTensorType):
        permutation = arrow_type.permutation
        if permutation is not None and list(permutation) != sorted(permutation):
            return None  # a permuted layout is not a plain view; such columns come as lists
        inner = _fixed_shape(arrow_type.value_type)
        if inner is None or inner[0]:
            return None
        return tuple(arrow_type.shape), inner[1]
    if pat.is_fixed_size_binary(arrow_type) and not pat.is_decimal(arrow_type):
        return (arrow_type.byte_width,), pa.uint8()
    if pat.is_fixed_size_list(arrow_type):
        inner = _fixed_shape(arrow_type.value_type)
        if inner is None:
            return None
        return (arrow_type.list_size, *inner[0]), inner[1]
    if any(test(arrow_type) for test in _NUMERIC) or pat.is_boolean(arrow_type):
        return (), arrow_type
    return None


def column_specs(schema: pa.Schema, columns: Sequence[str] | None) -> tuple[ColumnSpec, ...]:
    """The batch layout of ``columns`` (default: all) of ``schema``; unknown names raise ConfigError."""
    names = list(schema.names) if columns is None else list(columns)
    unknown = [c for c in names if c not in schema.names]
    if unknown:
        raise ConfigError(
            f"columns={names!r} names {unknown[0]!r}, which the dataset does not have; "
            f"its columns are {', '.join(schema.names)}"
        )
    if len(set(names)) != len(names) or not names:
        raise ConfigError(f"columns={names!r} is invalid: pass distinct column names, at least one")
    specs = []
    for name in names:
        fixed = _fixed_shape(schema.field(name).type)
        if fixed is None:
            specs.append(ColumnSpec(name, "list"))
        else:
            shape, leaf = fixed
            specs.append(ColumnSpec(name, "tensor", np.dtype(leaf.to_pandas_dtype()), shape))
    return tuple(specs)


def _view(spec: ColumnSpec, array: pa.Array, *, dataset: str, shard: int) -> np.ndarray[Any, Any]:
    """A zero-copy ``[rows, *shape]`` view of a fixed-width column (bool: one conversion)."""
    rows = len(array)
    leaf = array
    while True:
        if leaf.null_count:
            raise ConfigError(
                f"column {spec.name!r} of shard {shard} of {dataset!r} has null values, which a tensor cannot "
                "hold; fill them in the prefetch transform, or leave the column out with columns=[...]"
            )
        if isinstance(leaf, pa.ExtensionArray):
            leaf = leaf.storage
        elif pat.is_fixed_size_list(leaf.type):
            leaf = leaf.flatten()  # respects the parent's offset, unlike .values
        else:
            break
    if pat.is_fixed_size_binary(leaf.type):
        width = leaf.type.byte_width
        data = np.frombuffer(leaf.buffers()[1], dtype=np.uint8)
        flat = data[leaf.offset * width : (leaf.offset + len(leaf)) * width]
    else:
        flat = leaf.to_numpy(zero_copy_only=not pat.is_boolean(leaf.type))
    return flat.reshape(rows, *spec.shape)


class ShardViews:
    """One shard's columns, ready to gather from: numpy views for tensors, Arrow arrays for lists."""

    __slots__ = ("arrays", "holes", "nbytes", "rows", "table")

    def __init__(self, table: pa.Table, arrays: dict[str, Any]) -> None:
        self.table = table  # keeps the Arrow buffers behind the views alive
        self.arrays = arrays
        self.rows = table.num_rows
        self.nbytes = table.nbytes
        self.holes: str | None = None  # a column received into its batches instead (see inplace.py)


Outputs = dict[str, tuple[torch.Tensor, np.ndarray[Any, Any]]]
Claimed = tuple[tuple[int, int], torch.Tensor]  # a pool slot and the block it lends


@dataclass
class Prepared:
    """A batch's outputs made before it is gathered (:meth:`BatchBuilder.prepare`), the shards (``id``
    of their views) already in them, and the worker pool slot they live in, if any."""

    outputs: Outputs
    done: set[int]
    claimed: Claimed | None = None
    reused: bool = False


class BufferPool:
    """Output arrays of the main process, reused once nothing outside the pool refers to them.

    A dataset keeps one across iterations, so that an epoch does not page-fault its first batches
    afresh. Of each shape it keeps ``per_key`` arrays, or more while they hold at most ``keep_bytes``
    together (at most ``MAX_PER_KEY``): the batches the training loop holds plus those the read-ahead
    is filling. A shuffled read fills the batches of a whole window or two at once (see inplace.py),
    so small batches need more than six: with 64 samples of 150 KB, about ten.
    Thread-safe.
    """

    MAX_PER_KEY = 32

    def __init__(self, per_key: int = 6, *, keep_bytes: int = 128 << 20) -> None:
        self._kept: dict[tuple[Any, ...], list[tuple[np.ndarray[Any, Any], weakref.ref[Any]]]] = {}
        self._per_key = per_key
        self._keep_bytes = keep_bytes
        self._lock = threading.Lock()

    def _room(self, kept: int, nbytes: int) -> bool:
        return kept < self._per_key or (kept < self.MAX_PER_KEY and (kept + 1) * nbytes <= self._keep_bytes)

    def get(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
        """An array of ``shape``; a kept one when the view it lent last is gone (every tensor over it)."""
        key = (shape, dtype.str)
        with self._lock:
            kept = self._kept.setdefault(key, [])
            free = next((k for k, (_, lent) in enumerate(kept) if lent() is None), None)
            array = np.empty(shape, dtype=dtype) if free is None else kept[free][0]
            view = array[...]  # what the batch holds: a view of its own, watched by a weak reference
            if free is not None:
                kept[free] = (array, weakref.ref(view))
            elif self._room(len(kept), array.nbytes):
                kept.append((array, weakref.ref(view)))
            return view


class BatchBuilder:
    """Builds batches of ``specs`` from shards; see the module docstring for the layout."""

    def __init__(
        self,
        specs: Sequence[ColumnSpec],
        *,
        dataset: str,
        slots: SlotPool | None = None,
        slot_limit: int = 0,
        pool: BufferPool | None = None,
    ) -> None:
        self.specs = tuple(specs)
        self.dataset = dataset
        self._pool = BufferPool() if pool is None else pool
        self._slots = slots
        self._slot_limit = slot_limit
        self._claimed: list[Claimed] = []
        self._reused = 0
        self._board_sent = False

    def views(self, table: pa.Table, *, shard: int) -> ShardViews:
        """Zero-copy views of one shard (run once per shard, off the training loop's path)."""
        table = table.select([s.name for s in self.specs]).combine_chunks()
        arrays: dict[str, Any] = {}
        for spec in self.specs:
            column = table.column(spec.name)
            array = column.chunk(0) if column.num_chunks else pa.array([], type=column.type)
            if spec.kind == "tensor":
                arrays[spec.name] = _view(spec, array, dataset=self.dataset, shard=shard)
            else:
                arrays[spec.name] = array
        return ShardViews(table, arrays)

    def prepare(self, size: int) -> Prepared:
        """The output tensor (and a numpy view of it) of each tensor column of a batch of ``size``, to
        fill now or ahead of :meth:`gather` (thread-safe). A prepared batch that is never gathered
        must be handed to :meth:`discard`."""
        layout = [(s.name, (size, *s.shape), s.dtype) for s in self.specs if s.kind == "tensor" and s.dtype]
        outputs: Outputs = {}
        if get_worker_info() is None:
            for name, shape, dtype in layout:
                array = self._pool.get(shape, dtype)
                outputs[name] = (torch.from_numpy(array), array)
            return Prepared(outputs, set())
        # In a worker, every column in one shared-memory block: sending the batch to the main process
        # then copies nothing and passes one file descriptor.
        offsets, total = self._block_layout(layout)
        if self._slots is not None and total >= POOL_MIN_BYTES:
            block, slot, reused = self._slots.acquire(total, limit=self._slot_limit)
        else:
            block, slot, reused = shared_bytes(max(total, 1)), None, False
        for (name, shape, dtype), offset in zip(layout, offsets, strict=True):
            tensor = block[offset : offset + math.prod(shape) * dtype.itemsize].view(_torch_dtype(dtype)).view(shape)
            outputs[name] = (tensor, tensor.numpy())
        return Prepared(outputs, set(), None if slot is None else (slot, block), reused)

    def discard(self, prepared: Prepared) -> None:
        """Give back the pool slot of a prepared batch that will not be gathered; nothing may write
        into its outputs any more."""
        if prepared.claimed is not None and self._slots is not None:
            self._slots.give_back(prepared.claimed[0])

    @staticmethod
    def _block_layout(layout: Sequence[tuple[str, tuple[int, ...], np.dtype[Any]]]) -> tuple[list[int], int]:
        """Where each column of ``layout`` starts in a batch's block, and the block's size."""
        offsets, total = [], 0
        for _, shape, dtype in layout:
            total = -(-total // _ALIGN) * _ALIGN
            offsets.append(total)
            total += math.prod(shape) * dtype.itemsize
        return offsets, total

    def reserve(self, size: int, *, batches: int, stop: threading.Event | None = None) -> int:
        """Create the pool's blocks for ``batches`` batches of ``size`` now, their pages faulted in (a
        worker calls it while its first shards load, when it has nothing else to do), until ``stop``
        is set; returns how many blocks it created."""
        if self._slots is None:
            return 0
        layout = [(s.name, (size, *s.shape), s.dtype) for s in self.specs if s.kind == "tensor" and s.dtype]
        _, total = self._block_layout(layout)
        if total < POOL_MIN_BYTES:
            return 0
        return self._slots.reserve(total, limit=min(self._slot_limit, batches), stop=stop)

    def gather(
        self,
        parts: Sequence[tuple[ShardViews, np.ndarray[Any, Any], np.ndarray[Any, Any]]],
        size: int,
        *,
        prepared: Prepared | None = None,
    ) -> dict[str, Any]:
        """The batch of ``size`` samples in which ``positions`` hold ``rows`` of each part's shard.

        ``parts`` lists ``(views, rows, positions)``: sample ``positions[k]`` of the batch is row
        ``rows[k]`` of that shard; together the positions cover ``0..size-1`` once. ``prepared``:
        the batch's outputs, made and partly filled beforehand (see inplace.py). In a worker with a
        slot pool, :meth:`take_claim` then returns the slots the batch was built in.
        """
        claimed = len(self._claimed)
        prepared = self.prepare(size) if prepared is None else prepared
        if prepared.claimed is not None:
            self._claimed.append(prepared.claimed)
            self._reused += prepared.reused
        try:
            return self._gather(parts, size, prepared)
        except BaseException:
            if self._slots is not None:
                for slot, _ in self._claimed[claimed:]:
                    self._slots.give_back(slot)
            del self._claimed[claimed:]
            raise

    def give_back(self, claim: SlotClaim | None) -> None:
        """Free the pool slots of a gathered batch that will not be sent (its transform failed)."""
        if claim is not None and self._slots is not None:
            for slot in claim.slots:
                self._slots.give_back(slot)

    def take_claim(self) -> tuple[SlotClaim | None, int]:
        """The pool slots of the batches gathered since the last call, and how many were reused buffers.

        The first claim of a builder (of an iteration) carries the pool's board.
        """
        claimed, reused = self._claimed, self._reused
        self._claimed, self._reused = [], 0
        if not claimed or self._slots is None:
            return None, reused
        with_board, self._board_sent = not self._board_sent, True
        claim = self._slots.claim([slot for slot, _ in claimed], [block for _, block in claimed], with_board=with_board)
        return claim, reused

    def _gather(
        self,
        parts: Sequence[tuple[ShardViews, np.ndarray[Any, Any], np.ndarray[Any, Any]]],
        size: int,
        prepared: Prepared,
    ) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        outputs, done = prepared.outputs, prepared.done
        for views, _, _ in parts:
            if views.holes is not None and id(views) not in done:
                raise RuntimeError(f"shard views of {self.dataset!r} lack {views.holes!r}: it went into other batches")
        for spec in self.specs:
            if spec.kind == "tensor":
                tensor, out = outputs[spec.name]
                for views, rows, positions in parts:
                    if id(views) not in done:
                        copy_rows(out, views.arrays[spec.name], rows, positions)
                batch[spec.name] = tensor
            else:
                values: list[Any] = [None] * size
                for views, rows, positions in parts:
                    taken = views.arrays[spec.name].take(pa.array(rows)).to_pylist()
                    for p, v in zip(positions.tolist(), taken, strict=True):
                        values[p] = v
                batch[spec.name] = values
        return batch


def copy_rows(
    out: np.ndarray[Any, Any], src: np.ndarray[Any, Any], rows: np.ndarray[Any, Any], positions: np.ndarray[Any, Any]
) -> None:
    """``out[positions] = src[rows]``, the fastest way for the row size.

    Fancy indexing copies each row twice (into a temporary, then into place); for image-sized rows
    one slice copy per run of consecutive rows is ~3x faster. Small rows are the other way round:
    there the Python step dominates.
    """
    if out.itemsize * math.prod(out.shape[1:]) < ROW_COPY_BYTES:
        out[positions] = src[rows]
        return
    for p, r, n in row_runs(positions, rows):
        out[p : p + n] = src[r : r + n]


def row_runs(positions: np.ndarray[Any, Any], rows: np.ndarray[Any, Any]) -> list[tuple[int, int, int]]:
    """``(position, row, length)`` of each run where both go up by one (all runs of length 1 when shuffled)."""
    if not len(positions):
        return []
    starts = np.flatnonzero((np.diff(positions) != 1) | (np.diff(rows) != 1)) + 1
    cuts = [0, *starts.tolist(), len(positions)]
    p, r = positions.tolist(), rows.tolist()
    return [(p[a], r[a], b - a) for a, b in itertools.pairwise(cuts)]


def _torch_dtype(dtype: np.dtype[Any]) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype
