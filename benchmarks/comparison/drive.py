"""Iterating a loader for a cold and a warm epoch and counting what it delivered (shared by every child).

The bare GET loop starts its clock once its processes are up and connected. A training
job that builds its loader with ``persistent_workers=True`` pays worker start-up,
connections and the first shards once, in its first epoch. So a DataLoader-based system
is measured on its last (warm) epoch over the same loader object, and its cold first
epoch, start-up included, is reported beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .rss import pss_held

__all__ = ["drive"]


def _epoch(
    loader: Iterable[Mapping[str, Any]], *, label: str, began: float,
    record: Callable[[Mapping[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """One pass over ``loader``: seconds from ``began`` to the last batch, time to the first batch, samples, bytes."""
    first: float | None = None
    samples = 0
    nbytes = 0
    for batch in loader:
        if first is None:
            first = time.perf_counter() - began
        if record is not None:
            record(batch)
        samples += len(batch[label])
        for value in batch.values():
            if hasattr(value, "element_size"):
                nbytes += value.numel() * value.element_size()
    return {"seconds": time.perf_counter() - began, "samples": samples, "nbytes": nbytes, "first_batch_s": first}


def drive(
    make_loader: Callable[[], Iterable[Mapping[str, Any]]], *, label: str = "label", epochs: int = 2,
    record: Callable[[Mapping[str, Any]], None] | None = None,
    before_epoch: Callable[[Any, int], None] | None = None,
) -> dict[str, Any]:
    """Build the loader once and run ``epochs`` epochs over it.

    ``seconds``, ``samples`` and ``nbytes`` are those of the last (warm) epoch, its clock
    started when its iteration starts. ``first_batch_s`` and ``first_epoch_s`` run from
    before the loader is built to the first batch and to the last batch of the first
    epoch, so worker start-up counts there. With ``epochs=1`` the one epoch is both.
    Bytes are those of the tensors delivered (images and labels). ``record`` is called with each
    batch of the first epoch (see :mod:`.quality`), ``before_epoch(loader, epoch)`` before each epoch
    (a CachedDataLoader's ``set_epoch``: a training loop shuffles each epoch anew).
    """
    if epochs < 1:
        raise ValueError(f"epochs={epochs!r} must be >= 1")
    with pss_held():
        began = time.perf_counter()
        loader = make_loader()
        if before_epoch is not None:
            before_epoch(loader, 0)
        first = last = _epoch(loader, label=label, began=began, record=record)
    for epoch in range(1, epochs):
        if before_epoch is not None:
            before_epoch(loader, epoch)
        last = _epoch(loader, label=label, began=time.perf_counter())
    return {
        "seconds": last["seconds"],
        "samples": last["samples"],
        "nbytes": last["nbytes"],
        "first_batch_s": first["first_batch_s"],
        "first_epoch_s": first["seconds"],
        "first_epoch_samples": first["samples"],
    }
