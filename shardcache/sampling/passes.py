"""A stream's passes as a mix's epochs read them: no sample twice in an epoch that crosses into a new pass.

A stream of ``N`` samples with a quota of ``q`` an epoch is read as the concatenation of its passes;
epoch ``e`` takes ``[e * q, (e + 1) * q)``. Pass ``p`` is a permutation ``E_p`` of the stream, made from
the raw seeded permutation ``pi_p`` (:func:`~.shuffle.shard_stream` of ``(seed, p, stream)``). With
``q <= N`` an epoch spans at most two passes; one that crosses from pass ``p - 1`` into pass ``p`` takes
the tail ``T_{p-1}`` of ``E_{p-1}`` (its last ``t_{p-1}`` samples, ``t_p = ((p + 1) * N) mod q``) and the
head of ``E_p`` (its first ``h_p = q - t_{p-1}``). ``pi_p`` may put a sample of ``T_{p-1}`` in its head,
so ``E_p`` is, by the first rule that applies:

1. ``pi_p`` when no epoch crosses into pass ``p`` (``p = 0`` or ``t_{p-1} = 0``), when ``q > N``, or
   without shuffle (passes are ``arange(N)``: tail ``[N - t, N)`` and head ``[0, h)`` are disjoint);
2. when ``q + t_p > N`` (pass ``p`` *split*: it lies in just two epochs, ``h_p + t_p = N``, which needs
   ``q > N / 2``): ``T_p`` is the last ``t_p`` samples of ``pi_k``, ``k`` the latest pass before ``p``
   that is not split, and ``E_p`` = the samples not in ``T_p``, then those in ``T_p``, each in ``pi_p``
   order;
3. otherwise: the first ``h_p`` samples of ``pi_p`` not in ``T_{p-1}`` (there are enough: ``h_p <= N -
   t_{p-1}``; all at positions ``< q`` of ``pi_p``), then the rest of ``pi_p``, both in ``pi_p`` order.

Why this holds. Every ``E_p`` is a permutation, so each pass delivers every sample once, and an epoch
inside one pass repeats nothing. Under rule 3 the head avoids ``T_{p-1}`` by construction, and the
moved samples sit at positions ``< q <= N - t_p``, so ``T_p`` is the raw tail of ``pi_p``. Along a run of
split passes ``t`` grows by ``d = N - q`` a pass (``N mod q = d`` as ``q > N / 2``), from a pass ``k``
with ``0 < t_k <= d`` whose tail is raw (rule 3, or rule 1, or ``k = 0``): the tails of the run are the
nested suffixes of ``pi_k``, ``T_{p-1}`` inside ``T_p``, so the crossing epoch ``T_{p-1}`` + (the
samples not in ``T_p``) has no repeat either. A split pass must have ``T_p`` contain ``T_{p-1}``
whatever the order (its head is the complement of ``T_p`` and must avoid ``T_{p-1}``); taking the
nested suffixes of one permutation makes ``k`` closed-form (``k = p + 1 - ceil(t_p / d)``), so a pass
costs at most two permutations in any process, with no chain through earlier passes and no cache.
(Rule 3 alone for split passes too would chain each tail to the one before, back to the run's start:
with ``q = N - 1`` a plan at epoch 50 of 1.28M samples took 4.2 s cold, growing with the epoch, and
workers that are not persistent plan cold every epoch.)

What moves. Rule 3 leaves ``pi_p`` as it is when its head misses ``T_{p-1}``, so with ``q <= N / 2`` a
pass differs from ``pi_p`` only after a crossing that overlaps; one dataset without ``epoch_size``
(``q = N``) and any ``q`` that divides ``N`` never cross, so they read the raw passes byte for byte.
Split passes (rule 2) are reordered even without an overlap. Locality: the samples moved are mostly
whole shards (a suffix of a shard order), so every pass keeps whole-shard reading except at the
straddling shards.

An oversampled stream (``q > N``) keeps its raw passes: an epoch then holds ``m`` whole passes plus a
tail and a head, so each sample appears between ``floor(q / N) - 1`` and ``ceil(q / N) + 1`` times in
an epoch, and exactly once in each pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .shuffle import IdArray, shard_stream

__all__ = ["Passes"]


class Passes:
    """The passes of one stream read ``quota`` samples an epoch; keeps the permutations and tails it computed."""

    def __init__(self, rows: Sequence[int], *, seed: int, stream: int, quota: int, shuffle: bool) -> None:
        self.rows, self.seed, self.stream, self.quota, self.shuffle = rows, seed, stream, quota, shuffle
        self.total = int(sum(rows))
        self._raw: dict[int, IdArray] = {}
        self._tails: dict[int, npt.NDArray[np.bool_]] = {}

    def raw(self, p: int) -> IdArray:
        """``pi_p``, the seeded permutation of pass ``p`` (``arange`` without shuffle)."""
        if p not in self._raw:
            self._raw[p] = (
                shard_stream(self.rows, seed=self.seed, epoch=p, stream=self.stream)
                if self.shuffle
                else np.arange(self.total, dtype=np.int64)
            )
        return self._raw[p]

    def cut(self, p: int) -> int:
        """``t_p``: the samples of pass ``p`` in the epoch that crosses into pass ``p + 1`` (0: none)."""
        return (p + 1) * self.total % self.quota

    def crossed(self, p: int) -> bool:
        """Whether an epoch crosses into pass ``p`` and rule 1 does not apply."""
        return self.shuffle and self.quota <= self.total and p > 0 and self.cut(p - 1) > 0

    def split(self, p: int) -> bool:
        """Rule 2: pass ``p`` lies in just two epochs (``q + t_p > N``)."""
        return self.crossed(p) and self.quota + self.cut(p) > self.total

    def run_start(self, p: int) -> int:
        """The latest pass before the split pass ``p`` that is not split."""
        d = self.total - self.quota
        return p + 1 - -(-self.cut(p) // d)

    def tail(self, p: int) -> npt.NDArray[np.bool_]:
        """``T_p`` (``t_p > 0``) as a mask over the stream's ids."""
        if p not in self._tails:
            source = self.raw(self.run_start(p) if self.split(p) else p)
            self._tails[p] = np.zeros(self.total, dtype=bool)
            self._tails[p][source[len(source) - self.cut(p) :]] = True
        return self._tails[p]

    def order(self, p: int) -> IdArray:
        """``E_p``, pass ``p`` as the epochs read it (see the module docstring)."""
        raw = self.raw(p)
        if not self.crossed(p):
            return raw
        if self.split(p):
            late = self.tail(p)[raw]
            return np.concatenate([raw[~late], raw[late]])
        head = self.quota - self.cut(p - 1)
        window = raw[: self.quota]
        picked = np.flatnonzero(~self.tail(p - 1)[window])[:head]
        if picked[-1] == head - 1:  # the head of pi_p misses T_{p-1}: nothing moves
            return raw
        rest = np.ones(self.total, dtype=bool)
        rest[picked] = False
        return np.concatenate([window[picked], raw[rest]])

    def tail_ids(self, p: int) -> IdArray:
        """``T_p`` sorted: the samples of pass ``p`` in the epoch that crosses into pass ``p + 1`` (empty
        when none does, or when ``q > N``)."""
        if self.quota > self.total or self.cut(p) == 0:
            return np.zeros(0, dtype=np.int64)
        if not self.shuffle:
            return np.arange(self.total - self.cut(p), self.total, dtype=np.int64)
        return np.flatnonzero(self.tail(p)).astype(np.int64)
