"""Stream: one cached dataset in a mix, and the rule that turns a mix's weights into per-epoch quotas.

>>> mix = [Stream("web", weight=0.7), Stream("books", weight=0.3)]        # doctest: +SKIP
>>> loader = CachedDataLoader(mix, cache=url, batch_size=256, epoch_size=100_000)  # doctest: +SKIP

The quota rule (:func:`stream_quotas`), one epoch of ``E`` samples:

* weighted mix (every stream has ``weight=``): ``E`` is ``epoch_size``, by default the rows of all the
  streams together; it is split in proportion to the weights by largest remainder, so the quotas are
  integers summing exactly to ``E`` (Mosaic's ``proportion``, LitData's weights);
* unweighted mix: a stream with ``samples=n`` gives ``n`` (Mosaic's ``choose``; ``n`` above its rows
  upsamples, like ``repeat``), one with neither gives its rows once. With ``epoch_size``, the streams
  without ``samples=`` share what the ``samples=`` streams leave, in proportion to their rows (so one
  dataset with ``epoch_size`` reads ``epoch_size`` samples an epoch).

Every stream must get at least one sample an epoch: ``weight=0``, ``samples=0``, a share rounded down
to nothing and a stream whose version has no rows are each a ConfigError at construction (to leave a
stream out, drop it from the list). An epoch too small to give every rank one whole batch with
``drop_last=True`` is refused too (see :class:`~.dataset.CachedDataset`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import numpy as np

from ..cache.keys import check_dataset_name, validate_version
from ..errors import ConfigError
from ..sampling import quotas
from .checks import check_int

__all__ = ["Stream", "as_streams", "stream_quotas"]


@dataclass(frozen=True)
class Stream:
    """One dataset (version) of a mix.

    Args:
        name: the dataset's name in the cache.
        version: the version to read (default: the newest).
        weight: its share of each epoch, relative to the other streams' weights (all or none have one).
        samples: exactly this many samples an epoch: fewer than its rows continue where the previous
            epoch stopped, more wrap into another pass (an upsampled stream repeats samples).
        columns: the columns to read from this stream (default: the dataset's ``columns=``, else all);
            every stream must give the same columns of the same types.
        prefetch_transform: the transform this stream's version was prefetched with, to rebuild its shards
            on a miss (default: the dataset's ``prefetch_transform=``); checked against its manifest.

    Neither ``weight`` nor ``samples``: all its rows once an epoch.

    A stream always gives at least one sample an epoch: ``weight`` must be positive and ``samples`` at
    least 1, and a version with no rows cannot be mixed (it would give nothing, or could not give what is
    asked of it); these are ConfigErrors. To leave a dataset out of a mix, drop its Stream from the list.
    """

    name: str
    _: KW_ONLY
    version: str | None = None
    weight: float | None = None
    samples: int | None = None
    columns: tuple[str, ...] | None = None
    prefetch_transform: Callable[[Any], Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_dataset_name(self.name, argument="Stream name")
        if self.prefetch_transform is not None and not callable(self.prefetch_transform):
            raise ConfigError(
                f"Stream({self.name!r}) prefetch_transform={self.prefetch_transform!r} is invalid: pass the "
                "prefetch's RecordBatch -> RecordBatch function"
            )
        if self.version is not None:
            validate_version(self.version)
        if self.weight is not None and self.samples is not None:
            raise ConfigError(
                f"Stream({self.name!r}) has weight={self.weight!r} and samples={self.samples!r}: pass one of them "
                "(a share of the epoch, or an exact count)"
            )
        if self.weight is not None:
            weight = self.weight
            bad = isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating))
            if bad or not (math.isfinite(weight) and weight > 0):
                raise ConfigError(
                    f"Stream({self.name!r}) weight={weight!r} is invalid: pass a positive number (to leave the "
                    "stream out, drop it from the mix)"
                )
            object.__setattr__(self, "weight", float(weight))
        fix = "pass the samples it gives each epoch, at least 1 (to leave the stream out, drop it from the mix)"
        object.__setattr__(self, "samples", check_int("samples", self.samples, minimum=1, fix=fix, optional=True))
        if self.columns is not None:
            if isinstance(self.columns, str) or not all(isinstance(c, str) for c in self.columns):
                raise ConfigError(
                    f"Stream({self.name!r}) columns={self.columns!r} is invalid: pass a list of column names"
                )
            object.__setattr__(self, "columns", tuple(self.columns))


def stream_quotas(
    streams: Sequence[Stream], rows: Sequence[int], *, epoch_size: int | None, labels: Sequence[str]
) -> tuple[int, ...]:
    """Samples each stream gives an epoch (the rule: module docstring); ``rows[s]`` are stream ``s``'s rows."""
    weighted = [s.weight is not None for s in streams]
    if any(weighted) and not all(weighted):
        some = ", ".join(label for label, w in zip(labels, weighted, strict=True) if not w)
        raise ConfigError(
            f"streams {some} have no weight while others do: give every stream a weight, or none "
            "(then samples= or all its rows)"
        )
    if all(weighted):
        total = sum(rows) if epoch_size is None else epoch_size
        out = quotas(total, [s.weight for s in streams])  # type: ignore[misc]
    else:
        fixed = sum(s.samples for s in streams if s.samples is not None)
        free = [s for s, stream in enumerate(streams) if stream.samples is None]
        out_list = [s.samples or 0 for s in streams]
        if epoch_size is None:
            for s in free:
                out_list[s] = rows[s]
        elif not free:
            if epoch_size != fixed:
                raise ConfigError(
                    f"epoch_size={epoch_size} differs from the {fixed} samples the streams ask for together: "
                    "drop epoch_size, or leave samples= off the streams it should scale"
                )
        else:
            if epoch_size < fixed + len(free):
                raise ConfigError(
                    f"epoch_size={epoch_size} leaves {epoch_size - fixed} samples for the streams without "
                    f"samples= after the {fixed} the others ask for: raise epoch_size"
                )
            for s, n in zip(free, quotas(epoch_size - fixed, [rows[s] for s in free]), strict=True):
                out_list[s] = n
        out = tuple(out_list)
    for label, n in zip(labels, out, strict=True):
        if n < 1:
            raise ConfigError(
                f"stream {label} gets no sample in an epoch of {sum(out)}: raise epoch_size or its weight"
            )
    return out


def as_streams(name: object, version: str | None) -> tuple[Stream, ...]:
    """The streams of a CachedDataset's ``name`` argument: one dataset name (and its ``version``), or Streams."""
    if isinstance(name, str):
        check_dataset_name(name, argument="name")
        return (Stream(name, version=version),)
    streams = (name,) if isinstance(name, Stream) else name
    if not isinstance(streams, Sequence) or not streams or not all(isinstance(s, Stream) for s in streams):
        raise ConfigError(f"name={name!r} is invalid: pass a dataset name, or a list of Stream(name, ...) to mix")
    if version is not None:
        raise ConfigError(f"version={version!r} given with streams: give each Stream its version= instead")
    return tuple(streams)
