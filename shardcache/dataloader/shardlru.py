"""ShardLRU: decoded shards kept for random access, least recently used out first, within a byte budget.

>>> lru = ShardLRU(budget=100)
>>> lru.put(0, "shard 0", nbytes=60); lru.put(1, "shard 1", nbytes=60)
>>> lru.get(0), lru.get(1), lru.evictions, lru.nbytes
(None, 'shard 1', 1, 60)

The shard put last is always kept, even alone over the budget: the caller is about to read it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["ShardLRU"]

V = TypeVar("V")


class ShardLRU(Generic[V]):
    """Shard index -> value, at most ``budget`` bytes of values (as their ``nbytes`` were given). Thread-safe."""

    def __init__(self, *, budget: int) -> None:
        if budget < 1:
            raise ValueError(f"budget={budget!r} must be at least 1 byte")
        self.budget = budget
        self.evictions = 0
        self._items: OrderedDict[int, tuple[V, int]] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    def get(self, index: int) -> V | None:
        """The value of shard ``index`` (now the most recently used), or None."""
        with self._lock:
            item = self._items.get(index)
            if item is None:
                return None
            self._items.move_to_end(index)
            return item[0]

    def put(self, index: int, value: V, *, nbytes: int) -> None:
        """Keep ``value`` as shard ``index``, evicting the least recently used shards beyond the budget."""
        with self._lock:
            old = self._items.pop(index, None)
            if old is not None:
                self._nbytes -= old[1]
            self._items[index] = (value, nbytes)
            self._nbytes += nbytes
            while self._nbytes > self.budget and len(self._items) > 1:
                _, (_, dropped) = self._items.popitem(last=False)
                self._nbytes -= dropped
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._nbytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the shards held."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, index: object) -> bool:
        return index in self._items
