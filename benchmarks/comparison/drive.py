"""Iterating a loader to the end and counting what it delivered (shared by every child)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["drive"]


def drive(make_loader: Callable[[], Iterable[Mapping[str, Any]]], *, label: str = "label") -> dict[str, Any]:
    """Build the loader, run one epoch, and return seconds, samples, bytes and time to first batch.

    The clock starts before the loader is built, so worker start-up counts, as it does
    for a training job. Bytes are those of the tensors delivered (images and labels).
    """
    began = time.perf_counter()
    first: float | None = None
    samples = 0
    nbytes = 0
    for batch in make_loader():
        if first is None:
            first = time.perf_counter() - began
        samples += len(batch[label])
        for value in batch.values():
            if hasattr(value, "element_size"):
                nbytes += value.numel() * value.element_size()
    return {
        "seconds": time.perf_counter() - began,
        "samples": samples,
        "nbytes": nbytes,
        "first_batch_s": first,
    }
