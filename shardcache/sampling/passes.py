"""A stream's passes as a mix's epochs read them: no sample twice in an epoch that crosses into a new pass.

A stream of ``N`` samples with a quota of ``q`` a epoch is read as the concatenation of its passes; epoch
``e`` takes ``[e * q, (e + 1) * q)``. Pass ``p`` is a permutation ``E_p`` of the stream. With ``q <= N``
an epoch spans at most two passes; one that crosses from pass ``p - 1`` into pass ``p`` takes the tail
``T_{p-1}`` (the last ``t = (p * N) mod q`` samples of ``E_{p-1}``) and the head (the first ``h = q - t``)
of ``E_p``. The raw seeded permutation ``pi_p`` (:func:`~.shuffle.shard_stream` of ``(seed, p, stream)``)
may put a sample of ``T_{p-1}`` in its head, so:

* ``E_0 = pi_0``, and ``E_p = pi_p`` when no epoch crosses into pass ``p`` (``t = 0``) or ``q > N``;
* otherwise ``E_p`` = the first ``h`` samples of ``pi_p`` that are not in ``T_{p-1}`` (in ``pi_p``
  order), then the rest of ``pi_p`` in ``pi_p`` order. There are enough (``h <= N - t``), and they all
  sit at positions ``< h + t = q`` of ``pi_p``: outside the crossing, passes keep their whole-shard order.

Hence each ``E_p`` is a permutation (each pass delivers every sample once), the crossing epoch
``T_{p-1} + head`` has no repeat, and every other epoch lies inside one pass. ``E_p = pi_p`` exactly
when the head of ``pi_p`` misses ``T_{p-1}``: a plan whose epochs never cross a pass with an overlap
(one dataset without ``epoch_size``: ``q = N``) is byte-identical to the raw passes.

The chain. ``E_p`` needs ``T_{p-1}``. Since the head of ``E_p`` lies in positions ``< q`` of ``pi_p``,
``T_p`` is the raw tail of ``pi_p`` whenever ``q + t_p <= N`` (always when ``q <= N / 2``); else it
depends on ``T_{p-1}``, and :func:`pass_tail` walks back to the latest pass whose tail is raw (or is
cached), then forward. The dependency is inherent, not an artefact of this rule: when ``q + t_p > N``
pass ``p`` is split between just two epochs, so ``T_p`` is the complement of the head of pass ``p``,
which must avoid ``T_{p-1}``: ``T_p`` contains ``T_{p-1}``, whatever the order. The worst case is ``q``
just under ``N`` (``q = N - 1``: raw only at pass 0, so a cold plan of pass ``p`` permutes ``p`` passes);
a small per-process cache of tails (packed bit masks, keyed by the exact rows, seed, stream, quota and
pass) makes consecutive epochs cost one pass each. Every process computes the same ``E_p``.

Without shuffle the passes are ``arange(N)``: tail ``[N - t, N)`` and head ``[0, h)`` are disjoint
when ``q <= N``, so the rule leaves them as they are (:func:`effective_pass` skips the work).

An oversampled stream (``q > N``) keeps its raw passes: an epoch then holds ``m`` whole passes plus a
tail and a head, so each sample appears between ``floor(q / N) - 1`` and ``ceil(q / N) + 1`` times in
an epoch, and exactly once in each pass.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .shuffle import IdArray, shard_stream

__all__ = ["clear_tail_cache", "effective_pass", "pass_tail"]

_CACHE_SIZE = 32  # tails kept per process: N / 8 bytes each (160 kB for 1.28M samples)
_tails: OrderedDict[tuple[object, ...], npt.NDArray[np.uint8]] = OrderedDict()
_lock = threading.Lock()


def clear_tail_cache() -> None:
    """Forget the tails this process has computed (benchmarks and tests; plans never need it)."""
    with _lock:
        _tails.clear()


def _raw(rows: Sequence[int], *, seed: int, stream: int, p: int, shuffle: bool) -> IdArray:
    if shuffle:
        return shard_stream(rows, seed=seed, epoch=p, stream=stream)
    return np.arange(int(sum(rows)), dtype=np.int64)


def _avoid(raw: IdArray, taken: npt.NDArray[np.bool_], head: int) -> IdArray:
    """``raw`` with its first ``head`` samples not in ``taken`` moved, in order, to the front."""
    window = raw[: head + int(np.count_nonzero(taken))]
    picked = np.flatnonzero(~taken[window])[:head]
    if len(picked) == 0 or picked[-1] == head - 1:  # the first ``head`` miss ``taken``: nothing moves
        return raw
    rest = np.ones(len(raw), dtype=bool)
    rest[picked] = False
    return np.concatenate([window[picked], raw[rest]])


def _mask(ids: IdArray, total: int) -> npt.NDArray[np.bool_]:
    out = np.zeros(total, dtype=bool)
    out[ids] = True
    return out


class _Passes:
    """The passes of one stream at one quota (``q <= N``, shuffled)."""

    def __init__(self, rows: Sequence[int], *, seed: int, stream: int, quota: int) -> None:
        self.rows, self.seed, self.stream, self.quota = tuple(int(n) for n in rows), seed, stream, quota
        self.total = sum(self.rows)

    def cut(self, p: int) -> int:
        """``t_p``: the samples of pass ``p`` in the epoch that crosses into pass ``p + 1`` (0: none)."""
        return (p + 1) * self.total % self.quota

    def key(self, p: int) -> tuple[object, ...]:
        return (self.rows, self.seed, self.stream, self.quota, p)

    def cached(self, p: int) -> npt.NDArray[np.bool_] | None:
        with _lock:
            packed = _tails.get(self.key(p))
            if packed is not None:
                _tails.move_to_end(self.key(p))
        return None if packed is None else np.unpackbits(packed, count=self.total).astype(bool)

    def keep(self, p: int, order: IdArray) -> npt.NDArray[np.bool_]:
        """Cache and return ``T_p``, the last ``t_p`` samples of ``order = E_p``, as a mask."""
        taken = _mask(order[len(order) - self.cut(p) :], self.total)
        with _lock:
            _tails[self.key(p)] = np.packbits(taken)
            _tails.move_to_end(self.key(p))
            while len(_tails) > _CACHE_SIZE:
                _tails.popitem(last=False)
        return taken

    def order(self, p: int, before: npt.NDArray[np.bool_] | None) -> IdArray:
        """``E_p`` given ``before = T_{p-1}`` (None when no epoch crosses into pass ``p``)."""
        raw = _raw(self.rows, seed=self.seed, stream=self.stream, p=p, shuffle=True)
        if before is None:
            return raw
        return _avoid(raw, before, self.quota - self.cut(p - 1))

    def crossing(self, p: int) -> bool:
        return p > 0 and self.cut(p - 1) > 0

    def tail(self, p: int) -> npt.NDArray[np.bool_]:
        """``T_p`` (``t_p > 0``): walk back to a cached or raw tail, then forward."""
        chain = []
        k = p
        while True:
            taken = self.cached(k)
            if taken is not None:
                break
            if not self.crossing(k) or self.quota + self.cut(k) <= self.total:
                raw = _raw(self.rows, seed=self.seed, stream=self.stream, p=k, shuffle=True)
                taken = self.keep(k, raw)
                break
            chain.append(k)
            k -= 1
        for k in reversed(chain):
            taken = self.keep(k, self.order(k, taken))
        return taken


def pass_tail(rows: Sequence[int], *, seed: int, stream: int, quota: int, p: int) -> IdArray:
    """``T_p`` of a shuffled stream with ``quota <= N``: the samples of pass ``p`` in the epoch that crosses
    into pass ``p + 1``, sorted (empty when no epoch crosses)."""
    passes = _Passes(rows, seed=seed, stream=stream, quota=quota)
    if quota > passes.total or passes.cut(p) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(passes.tail(p)).astype(np.int64)


def effective_pass(rows: Sequence[int], *, seed: int, stream: int, quota: int, p: int, shuffle: bool) -> IdArray:
    """``E_p``, pass ``p`` of a stream read ``quota`` samples an epoch (see the module docstring)."""
    total = int(sum(rows))
    if not shuffle or quota > total:
        return _raw(rows, seed=seed, stream=stream, p=p, shuffle=shuffle)
    passes = _Passes(rows, seed=seed, stream=stream, quota=quota)
    order = passes.order(p, passes.tail(p - 1) if passes.crossing(p) else None)
    if passes.cut(p) > 0:
        passes.keep(p, order)  # an epoch crosses out of this pass: the next pass finds its tail cached
    return order
