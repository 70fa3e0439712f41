"""Shared-memory batch buffers that a DataLoader worker reuses once the main process lets go of them.

A worker hands a batch to the main process through shared memory. A fresh segment per batch costs
more than the copy that fills it: every page is faulted in and zero-filled, 5-9x the copy itself
for a 38 MB batch on a small machine (``benchmarks/worker_handoff.py``). So each worker keeps a
:class:`SlotPool` of segments and builds batches in them again, but only once the main process has
dropped every tensor that views one.

The pool's *board* is a small shared tensor of one generation number per slot. The worker writes a
new generation when it fills a slot and sends a :class:`SlotClaim` with the batch. Unpickling the
claim in the main process (whether the batch is then delivered, pinned, or discarded by PyTorch)
registers a finalizer on each slot's storage, which resets the board entry to 0 once the storage is
freed, and only if the entry still holds that generation. The worker reuses a slot only at 0. A slot
that never comes back (a batch still queued when the workers stop) is simply not reused; when every
slot is busy the worker allocates a fresh segment, as PyTorch would.

Passing a file descriptor costs a round trip to the worker (a connection, an authentication and a
``sendmsg``), about 0.7 ms per batch, so a pool block crosses over by its descriptor only once. In
the worker, a reducer registered on ``ForkingPickler`` sends a pool block as ``(token, slot,
incarnation)``, with its descriptor the first time only; the main process keeps that descriptor
and maps the block afresh for each batch, so every batch still has a storage of its own for the
release to watch. The main process forgets a pool's descriptors once its worker is gone
(:func:`forget_gone`, at the end of each iteration of a CachedDataLoader) or when the loader is
garbage (:func:`forget`). The board travels once per iteration (with the first claim) and the main
process keeps it by the pool's token too; later claims name the token only.

Worker-side code must not keep references to batch tensors after it returns the batch: the memory
behind them is rewritten once the main process is done with it. Nor may it send them to any other
process than the loader's: they are pickled for that one.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from multiprocessing.reduction import DupFd, ForkingPickler
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.multiprocessing.reductions import reduce_storage

__all__ = ["Acquired", "SlotClaim", "SlotPool", "forget", "forget_gone", "shared_bytes", "worker_pool"]

log = logging.getLogger(__name__)

POOL_SLOTS = 16
POOL_MIN_BYTES = 1 << 20  # smaller outputs are cheap to allocate afresh
_PAGE = 4096


def shared_bytes(nbytes: int) -> torch.Tensor:
    """A fresh uint8 tensor of ``nbytes`` in shared memory (sending it to another process copies nothing)."""
    storage = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty(0, dtype=torch.uint8).set_(storage)


class SlotClaim:
    """The slots a batch was built in; travels with the batch to the main process.

    Pickled, it carries the pool's token, the board (with the first claim of an iteration) and the slot
    tensors themselves (views of the batch's storage, which pickling shares with the batch); unpickled,
    it arms the release of each slot (see the module docstring) and keeps no tensor.
    """

    __slots__ = ("board", "slots", "tensors", "token")

    def __init__(
        self, *, token: str, board: torch.Tensor | None, slots: Sequence[tuple[int, int]],
        tensors: Sequence[torch.Tensor],
    ) -> None:  # fmt: skip
        self.token = token
        self.board = board
        self.slots = tuple(slots)
        self.tensors = tuple(tensors)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_arrive, (self.token, self.board, self.slots, self.tensors))

    def __repr__(self) -> str:
        return f"SlotClaim(token={self.token!r}, slots={list(self.slots)})"


# The boards of the pools whose batches this process received, by token (the most recent few).
_boards: OrderedDict[str, np.ndarray[Any, Any]] = OrderedDict()
_BOARDS_KEPT = 64


def _arrive(
    token: str, board: torch.Tensor | None, slots: tuple[tuple[int, int], ...], tensors: tuple[torch.Tensor, ...]
) -> SlotClaim:
    if board is not None:
        _boards[token] = board.numpy()  # the array keeps the board's shared memory mapped
        _boards.move_to_end(token)
        while len(_boards) > _BOARDS_KEPT:
            _boards.popitem(last=False)
    flags = _boards.get(token)
    if flags is None:
        log.debug("no board for slot pool %s: its slots are not given back", token)
    else:
        for (slot, generation), tensor in zip(slots, tensors, strict=True):
            try:
                release = weakref.finalize(tensor.untyped_storage(), _release, flags, slot, generation)
            except TypeError:  # a torch whose storages take no weak references: the slot stays busy
                log.debug("slot %d of pool %s cannot be given back by this torch", slot, token)
                continue
            release.atexit = False  # nothing to give back once the process exits
    return SlotClaim(token=token, board=None, slots=slots, tensors=())


def _release(flags: np.ndarray[Any, Any], slot: int, generation: int) -> None:
    if flags[slot] == generation:
        flags[slot] = 0


# The main process's descriptors of the pool blocks it received: token -> slot -> (incarnation, fd).
_descriptors: dict[str, dict[int, tuple[int, int]]] = {}
_descriptors_lock = threading.Lock()  # unpickling runs on the pin-memory thread too


def _map_block(token: str, slot: int, incarnation: int, nbytes: int, df: Any) -> torch.UntypedStorage:
    """Unpickling a pool block in the main process: a new mapping of it, from the descriptor kept
    since its first batch (``df`` brings it, that first time)."""
    with _descriptors_lock:
        blocks = _descriptors.setdefault(token, {})
        if df is not None:
            old = blocks.get(slot)
            blocks[slot] = (incarnation, df.detach())
            if old is not None:
                os.close(old[1])  # the worker replaced that block: batches already mapped keep theirs
        held = blocks.get(slot)
        if held is None or held[0] != incarnation:
            raise RuntimeError(
                f"a batch names block {slot}.{incarnation} of worker pool {token}, whose descriptor this process "
                "does not hold; this is a bug in shardcache, please report it"
            )
        return torch.UntypedStorage._new_shared_fd_cpu(held[1], nbytes)  # type: ignore[attr-defined]


def forget(tokens: Iterable[str]) -> None:
    """Close the descriptors and drop the boards of these pools (their workers are gone). Batches
    already delivered keep their memory."""
    with _descriptors_lock:
        for token in list(tokens):
            for _, fd in _descriptors.pop(token, {}).values():
                os.close(fd)
            _boards.pop(token, None)


def forget_gone(tokens: set[str]) -> None:
    """:func:`forget` the pools of ``tokens`` whose worker process has exited, and discard them from ``tokens``."""
    gone = {token for token in tokens if not _alive(int(token.split("-", 1)[0]))}
    forget(gone)
    tokens -= gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now: ours is gone
        return False
    return True


class Acquired(NamedTuple):
    """A buffer from :meth:`SlotPool.acquire`: ``slot`` is ``(index, generation)``, or None when unpooled."""

    tensor: torch.Tensor
    slot: tuple[int, int] | None
    reused: bool


class SlotPool:
    """Up to ``slots`` shared-memory buffers of one worker process, each free, or busy with a generation.

    Thread-safe: the worker's read-ahead threads take blocks for the batches they receive shards into,
    and the queue's feeder thread pickles them.
    """

    def __init__(self, slots: int = POOL_SLOTS) -> None:
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.board = torch.zeros(slots, dtype=torch.int64).share_memory_()
        self._flags = self.board.numpy()
        self._buffers: list[torch.Tensor | None] = [None] * slots
        self._generations = itertools.count(1)
        self._blocks: dict[int, tuple[int, int]] = {}  # storage (its _cdata) -> (slot, incarnation)
        self._announced = [0] * slots  # the incarnation whose descriptor was sent, per slot
        self._lock = threading.Lock()

    def _drop(self, index: int) -> None:
        buffer = self._buffers[index]
        if buffer is not None:
            self._blocks.pop(buffer.untyped_storage()._cdata, None)
        self._buffers[index] = None

    @staticmethod
    def _make_block(nbytes: int) -> torch.Tensor:
        # Always backed by a file descriptor, whatever the sharing strategy: describe() sends that.
        storage = torch.UntypedStorage._new_using_fd_cpu(nbytes)
        return torch.empty(0, dtype=torch.uint8).set_(storage)

    def _new_block(self, index: int, nbytes: int, generation: int, block: torch.Tensor | None = None) -> None:
        block = self._make_block(nbytes) if block is None else block
        self._buffers[index] = block
        # The generation that made it: its incarnation.
        self._blocks[block.untyped_storage()._cdata] = (index, generation)

    def describe(self, storage: torch.UntypedStorage) -> tuple[Any, ...] | None:
        """How to pickle ``storage`` if it is one of this pool's blocks (see the module docstring), else None."""
        with self._lock:
            found = self._blocks.get(storage._cdata)
            if found is None:
                return None
            slot, incarnation = found
            df = None
            if self._announced[slot] != incarnation:
                fd, _ = storage._share_fd_cpu_()
                df = DupFd(fd)
                self._announced[slot] = incarnation
        return (_map_block, (self.token, slot, incarnation, storage.nbytes(), df))

    def acquire(self, nbytes: int, *, limit: int | None = None) -> Acquired:
        """A shared uint8 tensor of ``nbytes``, from a free buffer of the same size (or up to twice it);
        else from a new buffer in an empty slot, or in place of a free buffer of another size; else,
        every slot being busy, a fresh unpooled one. Only the first ``limit`` slots are used; free
        buffers beyond it are dropped."""
        with self._lock:
            return self._acquire(nbytes, limit)

    def _acquire(self, nbytes: int, limit: int | None) -> Acquired:
        flags, buffers = self._flags, self._buffers
        used = len(buffers) if limit is None else max(0, min(limit, len(buffers)))
        for i in range(used, len(buffers)):
            if buffers[i] is not None and flags[i] == 0:
                self._drop(i)
        free = [i for i in range(used) if flags[i] == 0]
        fits = [i for i in free if (b := buffers[i]) is not None and nbytes <= b.numel() <= 2 * nbytes]
        if fits:
            index = min(fits, key=lambda i: buffers[i].numel())  # type: ignore[union-attr]
            reused = True
        elif free:
            empty = [i for i in free if buffers[i] is None]
            index = empty[0] if empty else free[0]
            self._drop(index)  # unmap the old buffer before mapping the new one
            reused = False
        else:
            return Acquired(shared_bytes(nbytes), None, False)
        generation = next(self._generations)
        if not reused:
            self._new_block(index, nbytes, generation)
        flags[index] = generation
        buffer = buffers[index]
        assert buffer is not None
        return Acquired(buffer[:nbytes], (index, generation), reused)

    def reserve(self, nbytes: int, *, limit: int, stop: threading.Event | None = None) -> int:
        """Fill the empty slots among the first ``limit`` with blocks of ``nbytes``, every page faulted
        in (the kernel zero-fills a shared page when it is first touched); returns how many were made.
        Stops early once ``stop`` is set (the iteration that asked for them ended).

        Blocks are made outside the lock, from the last slot down: the read-ahead threads take the
        first ones meanwhile (an empty slot gets a block made on the spot), so the first batches need
        not wait for the whole pool."""
        made = 0
        for index in reversed(range(min(limit, len(self._buffers)))):
            if stop is not None and stop.is_set():
                break
            with self._lock:
                if self._buffers[index] is not None or self._flags[index] != 0:
                    continue
            block = self._make_block(nbytes)
            block.numpy()[::_PAGE] = 0
            with self._lock:
                if self._buffers[index] is None and self._flags[index] == 0:
                    self._new_block(index, nbytes, next(self._generations), block)
                    made += 1
        return made

    def give_back(self, slot: tuple[int, int]) -> None:
        """Free a slot whose batch was never sent (an error while building it)."""
        index, generation = slot
        _release(self._flags, index, generation)

    def claim(
        self, slots: Sequence[tuple[int, int]], tensors: Sequence[torch.Tensor], *, with_board: bool
    ) -> SlotClaim:
        """The claim to send with a batch built in ``slots`` (``tensors``: a view of each);
        ``with_board`` for the first claim of an iteration."""
        return SlotClaim(token=self.token, board=self.board if with_board else None, slots=slots, tensors=tensors)


_pools: dict[int, SlotPool] = {}  # by process id: a forked child starts its own


def worker_pool() -> SlotPool:
    """This process's pool (one per worker process); its blocks are pickled by descriptor from now on."""
    pid = os.getpid()
    pool = _pools.get(pid)
    if pool is None:
        _pools.clear()  # the parent's, inherited through fork
        pool = _pools[pid] = SlotPool()
        ForkingPickler.register(torch.UntypedStorage, _reduce_storage)
    return pool


def _reduce_storage(storage: torch.UntypedStorage) -> tuple[Any, ...]:
    """ForkingPickler's reducer for storages in a worker: a pool block by descriptor, others as torch does."""
    pool = _pools.get(os.getpid())
    described = None if pool is None else pool.describe(storage)
    return reduce_storage(storage) if described is None else described
