"""The sample stream of an epoch of a mix: integer quotas, each stream's endless passes, the interleave.

A mix concatenates its streams' shards (stream ``s`` owns a contiguous range of shards, hence of flat
ids). Each stream is read as an endless sequence of *passes*: pass ``p`` is every sample of the stream
once, in the seeded shard-then-row order of ``(seed, p, s)`` (:func:`~.shuffle.shard_stream`; in source
order without shuffle). Epoch ``e`` takes the stream's samples ``[e * q, (e + 1) * q)`` of that sequence,
``q`` its quota: an undersampled stream continues next epoch where this one stopped, without
replacement, and an oversampled one wraps into its next pass. With ``q`` up to the stream's rows, no
epoch holds a sample twice: an epoch that crosses into pass ``p`` takes from pass ``p`` only samples
that the end of pass ``p - 1`` did not give it (:mod:`.passes`: every pass is still each sample once,
computed in closed form, and a pass keeps its raw order unless such a crossing overlaps or, with ``q``
over half the rows, the pass lies in just two epochs). An oversampled stream (``q``
over its ``N`` rows) keeps its raw passes: each sample ``floor(q / N) - 1`` to ``ceil(q / N) + 1`` times
an epoch, once a pass. Every stream's chunk keeps its shard order (one shard of a stream live at a
time); :func:`interleave` spreads the chunks evenly, so every part of the epoch has the mix's ratio.

>>> quotas(10, [7, 3])
(7, 3)
>>> quotas(10, [1, 1, 1])
(4, 3, 3)
>>> interleave((2, 1)).tolist()
[0, 1, 0]
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError
from .passes import Passes
from .shuffle import IdArray, row_offsets

__all__ = ["interleave", "mix_stream", "quotas", "stream_take"]


def quotas(total: int, weights: Sequence[float | int | Fraction]) -> tuple[int, ...]:
    """``total`` split in proportion to ``weights`` by largest remainder: integers that sum to ``total``.

    Each share is ``floor(total * w / sum(w))``; the samples left go one each to the largest fractional
    remainders, ties to the earlier stream. Exact (rational) arithmetic, so every process agrees.
    """
    if total < 0 or not weights:
        raise ConfigError(f"cannot split {total} samples over {len(weights)} weights")
    exact = [Fraction(w) for w in weights]
    whole = sum(exact)
    if whole <= 0 or any(w < 0 for w in exact):
        raise ConfigError(f"weights={list(weights)!r} are invalid: pass positive weights")
    shares = [total * w / whole for w in exact]
    floors = [int(s) for s in shares]  # Fraction >= 0: int() is the floor
    left = total - sum(floors)
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(shares[i] - floors[i]), i))
    for i in by_remainder[:left]:
        floors[i] += 1
    return tuple(floors)


def stream_take(
    rows: Sequence[int], *, seed: int, stream: int, start: int, count: int, shuffle: bool, quota: int | None = None
) -> IdArray:
    """Samples ``[start, start + count)`` of a stream's endless sequence of passes (the stream's own flat ids),
    read ``quota`` (default ``count``) samples an epoch: the passes are :class:`~.passes.Passes`."""
    total = int(sum(rows))
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    if total <= 0:
        raise ConfigError(
            f"stream {stream} has no rows but is asked for {count} samples: drop it from the mix, or give it rows"
        )
    quota = count if quota is None else quota
    first, last = start // total, (start + count - 1) // total
    order = Passes(rows, seed=seed, stream=stream, quota=quota, shuffle=shuffle)
    passes = [order.order(p) for p in range(first, last + 1)]
    sequence = passes[0] if len(passes) == 1 else np.concatenate(passes)
    begin = start - first * total
    return sequence[begin : begin + count]


def interleave(counts: Sequence[int]) -> npt.NDArray[np.int64]:
    """The stream of each position of a mixed stream: stream ``s``'s ``k``-th sample sits at the rank of
    ``(k + 1/2) / counts[s]`` among all (ties to the earlier stream), so every prefix holds each stream
    in its ratio, within one sample."""
    owners = np.empty(sum(int(n) for n in counts), dtype=np.int64)
    for s, position in enumerate(positions(counts)):
        owners[position] = s
    return owners


def positions(counts: Sequence[int]) -> list[npt.NDArray[np.int64]]:
    """Where each stream's samples sit in the mixed stream (see :func:`interleave`), stream by stream."""
    counts = [int(n) for n in counts]
    out = []
    for s, q in enumerate(counts):
        position = np.arange(q, dtype=np.int64)
        k2 = position * 2 + 1  # (k + 1/2) / q, doubled: exact integer comparisons
        for t, n in enumerate(counts):
            if t == s or n <= 0 or q <= 0:
                continue
            # Samples j of stream t before: (2j + 1) * q < (2k + 1) * n, or <= for an earlier stream.
            before = k2 * n
            before -= q + (1 if t > s else 0)
            before //= 2 * q
            before += 1
            np.clip(before, 0, n, out=before)
            position += before
        out.append(position)
    return out


def mix_stream(
    rows: Sequence[int], parts: Sequence[tuple[int, int]], *, seed: int, epoch: int, shuffle: bool
) -> IdArray:
    """Epoch ``epoch``'s flat ids of a mix: ``parts[s] = (shards, quota)`` of stream ``s``, whose shards
    follow those of the streams before it in ``rows``."""
    if sum(shards for shards, _ in parts) != len(rows) or any(n < 1 or q < 0 for n, q in parts):
        raise ConfigError(
            f"the mix's parts {list(parts)!r} are invalid for the {len(rows)} shards of its rows: pass one "
            "(shards >= 1, quota >= 0) per stream, the shards summing to the shards of rows"
        )
    offsets = row_offsets(rows)
    if len(parts) == 1:
        return stream_take(rows, seed=seed, stream=0, start=epoch * parts[0][1], count=parts[0][1], shuffle=shuffle)
    out = np.empty(sum(quota for _, quota in parts), dtype=np.int64)
    first = 0
    for s, ((shards, quota), position) in enumerate(zip(parts, positions([q for _, q in parts]), strict=True)):
        local = rows[first : first + shards]
        chunk = stream_take(local, seed=seed, stream=s, start=epoch * quota, count=quota, shuffle=shuffle)
        chunk += offsets[first]
        out[position] = chunk
        first += shards
    return out
