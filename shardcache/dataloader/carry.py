"""The first shards of a persistent worker's next epoch, read while the current epoch ends.

Every epoch a worker's first batch waits for the shards it mixes: the whole first shuffle window of a
shuffled read (five shards at batch 64), one or two of an unshuffled one. A worker that PyTorch keeps
between epochs (``persistent_workers=True``) knows what it will most likely read next: the same
iteration one epoch later (or the same epoch again, in a loop that does not call ``set_epoch``), from
its start. So once its read-ahead has every shard of this epoch loading, it starts loading the first
shards of that iteration on a few daemon threads (:func:`carry_next`), while it builds its last batches
and the training loop takes them. When the next iteration starts, :func:`take_carried` hands the loads
over if that iteration is the one predicted (same plan, spec, worker and dataset version); otherwise
they are dropped. Carried shards are loaded the ordinary way (checked, counted), and gathered into
their batches; a load that failed is simply loaded again by the iteration.

>>> carry_next(key, shards, load, counters=Counters())     # doctest: +SKIP
>>> carried = take_carried(key)                           # doctest: +SKIP
>>> table = carried.pop(shard) if carried else None       # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

import pyarrow as pa

from .stats import Counters

__all__ = ["Carried", "carry_next", "drop_carried", "take_carried"]

CARRY_THREADS = 2


class Carried:
    """Shards loaded for an iteration before it started; thread-safe."""

    def __init__(
        self, key: object, shards: Sequence[int], load: Callable[[int], pa.Table], *, counters: Counters,
        threads: int = CARRY_THREADS, name: str = "shardcache-carry",
    ) -> None:  # fmt: skip
        self.key = key
        self.counters = counters  # what the loads counted, handed to the iteration that takes them
        self._load = load
        self._todo = list(shards)
        self._wanted = set(shards)
        self._done: dict[int, pa.Table | None] = {}  # None: the load failed, the iteration loads it again
        self._cond = threading.Condition()
        self._stop = False
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
            for i in range(max(1, min(threads, len(self._todo))))
        ]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stop or not self._todo:
                    return
                shard = self._todo.pop(0)
            try:
                table: pa.Table | None = self._load(shard)
            except Exception:  # the iteration loads it again, and raises then if it must
                table = None
            with self._cond:
                if not self._stop:
                    self._done[shard] = table
                self._cond.notify_all()

    def pop(self, shard: int) -> pa.Table | None:
        """Shard ``shard``'s table, waiting for its load; None when it is not carried or its load failed."""
        with self._cond:
            if shard not in self._wanted:
                return None
            self._wanted.discard(shard)
            while shard not in self._done and not self._stop:
                self._cond.wait()
            return self._done.pop(shard, None)

    def close(self) -> None:
        """Stop loading and drop what was loaded; loads under way finish in the background."""
        with self._cond:
            self._stop = True
            self._todo.clear()
            self._done.clear()
            self._wanted.clear()
            self._cond.notify_all()


_held: tuple[int, Carried] | None = None  # (the process that started it, the loads)
_held_lock = threading.Lock()


def carry_next(
    key: object, shards: Sequence[int], load: Callable[[int], pa.Table], *, counters: Counters,
) -> Carried:  # fmt: skip
    """Start loading ``shards`` for the iteration ``key`` names; replaces what this process carried."""
    global _held
    carried = Carried(key, shards, load, counters=counters)
    with _held_lock:
        old, _held = _held, (os.getpid(), carried)
    if old is not None and old[0] == os.getpid():
        old[1].close()
    return carried


def take_carried(key: object) -> Carried | None:
    """The loads carried for iteration ``key``, or None (what was carried for another one is dropped)."""
    global _held
    with _held_lock:
        held, _held = _held, None
    if held is None or held[0] != os.getpid():  # a forked child's copy: its threads did not follow it
        return None
    carried = held[1]
    if carried.key != key:
        carried.close()
        return None
    return carried


def drop_carried() -> None:
    """Drop what this process carries (nothing when it carries nothing)."""
    take_carried(object())
