"""What one iteration of a dataset reads, and how it reaches workers that outlive an iteration.

With ``persistent_workers=True`` PyTorch keeps the worker processes, and their copy of the dataset,
from one epoch to the next: an epoch set in the main process afterwards would never reach them.
:class:`SharedSpec` therefore keeps the current :class:`IterSpec` in a small shared-memory tensor
that the workers read when an iteration starts. The main process publishes before it starts or
resumes the workers, and workers only read, so no lock is needed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..errors import ConfigError
from .plan import PlanSegment
from .state import segment_from_dict, segment_to_dict

__all__ = ["IterSpec", "SharedSpec"]

SPEC_CAPACITY = 256 * 1024  # bytes; a history segment of 1,024 ranks takes about 8 KB


@dataclass(frozen=True)
class IterSpec:
    """The batches of one iteration: the epoch plan, where this rank starts, and how workers split it.

    ``chunk`` consecutive batches go to one worker (chunk ``c`` to worker ``c % num_workers``), so a
    worker reads the shards of its own window. ``tagged`` batches carry their index and counters for
    the CachedDataLoader, which puts them back in order; ``lease`` makes the iterator hold a lease
    itself (the loader holds one for all its workers instead). ``pool_slots`` bounds each worker's
    pool of reused batch blocks (see ``slots.py``): about the batches a worker has in flight. Workers that
    outlive the iteration (``persistent_workers``) read the first shards of epoch ``next_epoch`` (from its
    start) while it ends (see ``carry.py``); None: they do not.
    """

    epoch: int
    history: tuple[PlanSegment, ...]
    start: int
    rank: int
    world_size: int
    batch_size: int
    drop_last: bool
    window: int
    chunk: int
    tagged: bool
    lease: bool
    pool_slots: int = 0
    next_epoch: int | None = None

    def to_bytes(self) -> bytes:
        doc = asdict(self)
        doc["history"] = [segment_to_dict(s) for s in self.history]
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> IterSpec:
        doc: dict[str, Any] = json.loads(data)
        doc["history"] = tuple(segment_from_dict(s) for s in doc["history"])
        return cls(**doc)


class SharedSpec:
    """An :class:`IterSpec` in shared memory: ``publish`` in the main process, ``read`` in workers."""

    def __init__(self, capacity: int = SPEC_CAPACITY) -> None:
        self._length = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._data = torch.zeros(capacity, dtype=torch.uint8).share_memory_()

    def publish(self, spec: IterSpec) -> None:
        data = spec.to_bytes()
        if len(data) > len(self._data):
            raise ConfigError(
                f"the resume history has {len(spec.history)} segments ({len(data)} bytes), more than the "
                f"{len(self._data)} bytes workers can receive; start a new epoch to clear it"
            )
        self._data[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        self._length[0] = len(data)

    def read(self) -> IterSpec | None:
        length = int(self._length[0])
        if length == 0:
            return None
        return IterSpec.from_bytes(self._data[:length].numpy().tobytes())
