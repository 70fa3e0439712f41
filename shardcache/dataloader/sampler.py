"""The sampler a CachedDataLoader shows to frameworks: ``set_epoch`` on it reaches the loader.

The loader plans its own batches, so torch gives it the constant sampler of iterable datasets. Lightning,
Accelerate and transformers.Trainer reshuffle by calling ``set_epoch`` on ``loader.sampler`` (or on
``loader.batch_sampler.sampler``, or ``loader.dataset``): this sampler forwards the call, so every
framework gets a new order each epoch without user code. It still yields ``None`` forever, as torch's.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch.utils.data.dataloader import _InfiniteConstantSampler

__all__ = ["EpochSampler"]


class EpochSampler(_InfiniteConstantSampler):
    """Yields ``None`` forever (torch's sampler of iterable datasets); ``set_epoch`` goes to the loader."""

    def __init__(self, loader: Any) -> None:
        super().__init__()
        # Weak: the loader holds this sampler, and a cycle would delay the loader's finalizer to a GC pass.
        self._loader = weakref.ref(loader)

    def set_epoch(self, epoch: int) -> None:
        loader = self._loader()
        if loader is not None:
            loader.set_epoch(epoch)

    def __reduce__(self) -> tuple[Any, ...]:
        # A copy (deepcopy, pickling for spawned processes) forwards to nothing: it is only iterated.
        return (_InfiniteConstantSampler, ())
