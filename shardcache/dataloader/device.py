"""Host-to-device copies that overlap compute: the next batch is copied on a side CUDA stream.

>>> for batch in DevicePrefetcher(loader, "cuda"):   # doctest: +SKIP
...     loss = model(batch["image"]).sum()

On a CUDA device, batch ``k + 1`` is copied on a side stream (``non_blocking``, from pinned memory when
the loader pins it) while the caller computes on batch ``k``; the compute stream waits for the copy
before it gets the batch, and each tensor is recorded on the compute stream so its memory is not
reused early. On any other device the batches are just moved with :func:`to_device`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

__all__ = ["DevicePrefetcher", "to_device"]


def to_device(batch: Any, device: torch.device | str, *, non_blocking: bool = False) -> Any:
    """``batch`` with every tensor inside (dicts, lists, tuples, named tuples) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return type(batch)({k: to_device(v, device, non_blocking=non_blocking) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(to_device(v, device, non_blocking=non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, non_blocking=non_blocking) for v in batch)
    return batch


def _record(batch: Any, stream: torch.cuda.Stream) -> None:
    if isinstance(batch, torch.Tensor):
        batch.record_stream(stream)
    elif isinstance(batch, Mapping):
        for v in batch.values():
            _record(v, stream)
    elif isinstance(batch, (list, tuple)):
        for v in batch:
            _record(v, stream)


class DevicePrefetcher:
    """Iterate ``batches`` on ``device``, copying one batch ahead on a side stream (see the module doc)."""

    def __init__(self, batches: Iterable[Any], device: torch.device | str) -> None:
        self.batches = batches
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        if self.device.type != "cuda":
            for batch in self.batches:
                yield to_device(batch, self.device)
            return
        side = torch.cuda.Stream(device=self.device)
        source = iter(self.batches)

        def copy_next() -> Any:
            try:
                host = next(source)
            except StopIteration:
                return _END
            with torch.cuda.stream(side):
                return to_device(host, self.device, non_blocking=True)

        upcoming = copy_next()
        while upcoming is not _END:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(side)
            batch = upcoming
            _record(batch, compute)
            upcoming = copy_next()
            yield batch


_END = object()
