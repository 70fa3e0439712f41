"""How well a loader shuffled: which source sample each delivered sample is, and two summaries.

Speed is not to be bought with a worse shuffle, so every shuffled run reports, beside its speed:

* ``mean_move``: the mean distance between where a sample is delivered in the epoch and where it
  sits in the source, as a share of the epoch: 0 unshuffled, about 1/3 for a uniform shuffle;
* ``shards_per_batch``: the mean number of distinct source blocks a batch mixes, a block being
  ``block_rows`` consecutive source samples (one shard's worth: the cache's mean rows per shard).
  Unshuffled, a batch of B holds about ``B / block_rows + 1``; a uniform shuffle, about
  ``min(B, blocks)``.

Samples are recognised by their first 8 image bytes (the synthetic images are random bytes),
recorded per batch during the cold first epoch (a few microseconds a batch) and looked up in the
raw image file after the clock stops. Needs numpy only: both child kinds import it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["Recorder", "measure", "with_quality"]

FINGERPRINT_BYTES = 8


class Recorder:
    """Called with each batch of an epoch: keeps the fingerprint of each sample and the batch sizes."""

    def __init__(self, column: str = "image") -> None:
        self.column = column
        self._parts: list[np.ndarray[Any, Any]] = []
        self.batch_sizes: list[int] = []

    def __call__(self, batch: Mapping[str, Any]) -> None:
        images = batch[self.column]
        n = len(images)
        head = np.asarray(images.reshape(n, -1)[:, :FINGERPRINT_BYTES])  # a torch tensor or an array
        self._parts.append(np.ascontiguousarray(head, dtype=np.uint8).copy())
        self.batch_sizes.append(n)

    def fingerprints(self) -> np.ndarray[Any, Any]:
        if not self._parts:
            return np.empty(0, dtype=np.uint64)
        return np.concatenate(self._parts).view(np.uint64).ravel()

    def measure(self, *, raw: str, sample_bytes: int, block_rows: int) -> dict[str, float]:
        return measure(self.fingerprints(), self.batch_sizes, raw=raw, sample_bytes=sample_bytes,
                       block_rows=block_rows)


def _source_fingerprints(raw: str, sample_bytes: int) -> np.ndarray[Any, Any]:
    """The first bytes of each source sample, read with ``pread``: mapping the file would count the
    pages the kernel reads ahead around each sample (most of the file) in the run's peak memory."""
    fd = os.open(raw, os.O_RDONLY)
    try:
        rows = os.fstat(fd).st_size // sample_bytes
        heads = b"".join(os.pread(fd, FINGERPRINT_BYTES, k * sample_bytes) for k in range(rows))
    finally:
        os.close(fd)
    return np.frombuffer(heads, dtype=np.uint64).copy()


def measure(
    delivered: np.ndarray[Any, Any], batch_sizes: list[int], *, raw: str, sample_bytes: int, block_rows: int
) -> dict[str, float]:
    """``mean_move``, ``shards_per_batch`` (see the module docstring), and ``unmatched``: delivered
    samples that are no source sample (0 unless a loader delivered a wrong row)."""
    source = _source_fingerprints(raw, sample_bytes)
    order = np.argsort(source, kind="stable")
    ranked = source[order]
    at = np.minimum(np.searchsorted(ranked, delivered), len(ranked) - 1)
    found = ranked[at] == delivered
    index = np.where(found, order[at], -1)
    positions = np.arange(len(delivered))
    rows = max(1, len(source))
    known = index >= 0
    move = float(np.abs(positions[known] - index[known]).mean() / rows) if known.any() else 0.0
    blocks = np.where(known, index // max(1, block_rows), -1)
    cuts = np.cumsum([0, *batch_sizes])
    distinct = [len(np.unique(blocks[a:b][blocks[a:b] >= 0])) for a, b in itertools.pairwise(cuts)]
    return {
        "mean_move": round(move, 4),
        "shards_per_batch": round(float(np.mean(distinct)) if distinct else 0.0, 2),
        "unmatched": int((~known).sum()),
    }


def with_quality(run: Callable[[Any], dict[str, Any]], quality: dict[str, Any] | None) -> dict[str, Any]:
    """``run(record)``, plus the shuffle quality of its first epoch when ``quality`` says where the source is."""
    recorder = Recorder() if quality else None
    result = run(recorder)
    if recorder is not None and quality:
        result["quality"] = recorder.measure(**quality)
    return result
