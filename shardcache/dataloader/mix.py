"""A mix of cached datasets read as one virtual version: its streams' shards concatenated.

Global shard ``g`` of a mix is shard ``g - first_shard[s]`` of stream ``s``; flat sample ids stay unique
(``dataloader.plan``'s ``rows`` are the streams' row counts one after the other). :func:`resolve_mix`
reads each stream's manifest, checks that the streams give the same columns of the same types, and
fixes each stream's quota (``stream.py``). :class:`MixSource` loads a global shard from its stream's
version (each stream's own :class:`ShardSource`, so read-through rebuilds it from that version's
source), counting per stream too. A lone dataset is a mix of one stream, planned as before unless
``epoch_size`` is given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa

from ..cache import Manifest, ShardCache
from ..cache.bulk import Into
from ..errors import ConfigError
from ..sampling import row_offsets
from .checks import check_prefetch_transform
from .source import ShardSource, Transform
from .stats import Counters
from .stream import Stream, stream_quotas
from .tensors import ColumnSpec, column_specs

__all__ = ["Mix", "MixPart", "MixSource", "resolve_mix"]


@dataclass(frozen=True)
class MixPart:
    """One stream of a mix: its label in stats and errors, its version's manifest, its quota an epoch."""

    label: str
    manifest: Manifest
    quota: int
    first_shard: int
    prefetch_transform: Transform | None = field(default=None, compare=False)  # the stream's own, if given

    @property
    def rows(self) -> tuple[int, ...]:
        return tuple(s.rows for s in self.manifest.shards)


@dataclass(frozen=True)
class Mix:
    """The streams of a dataset (one for a lone dataset) and the epoch size that fixed their quotas."""

    parts: tuple[MixPart, ...]
    epoch_size: int | None

    @property
    def single(self) -> bool:
        """One stream read whole each epoch: planned exactly as a lone dataset always was."""
        return len(self.parts) == 1 and self.epoch_size is None

    @property
    def epoch_samples(self) -> int:
        """Samples an epoch plans, before the split across ranks: the streams' quotas together."""
        return sum(p.quota for p in self.parts)

    @cached_property
    def rows(self) -> tuple[int, ...]:
        return tuple(n for part in self.parts for n in part.rows)

    @property
    def plan_parts(self) -> tuple[tuple[int, int], ...]:
        """The plan's ``mix`` argument: ``(shards, quota)`` per stream; empty for the lone-dataset plan."""
        return () if self.single else tuple((len(p.manifest.shards), p.quota) for p in self.parts)

    @property
    def name(self) -> str:
        return "+".join(p.label for p in self.parts) if len(self.parts) > 1 else self.parts[0].manifest.name

    @property
    def version(self) -> str:
        return "+".join(p.manifest.version for p in self.parts)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(p.label for p in self.parts)

    @property
    def versions(self) -> tuple[tuple[str, str], ...]:
        """``(name, version)`` of each stream: a reader holds a lease on each."""
        return tuple((p.manifest.name, p.manifest.version) for p in self.parts)

    @cached_property
    def stream_of_shard(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.parts)), [len(p.manifest.shards) for p in self.parts])

    def identity(self) -> list[dict[str, Any]] | None:
        """What a state dict records of the mix (JSON-able); None for the lone-dataset plan."""
        if self.single:
            return None
        return [
            {"name": p.manifest.name, "version": p.manifest.version, "samples": p.quota} for p in self.parts
        ] + ([{"epoch_size": self.epoch_size}] if self.epoch_size is not None else [])

    def check_prefetch_transform(self, transform: Any) -> None:
        """ConfigError unless each stream's prefetch transform (its own, else ``transform``; none given: not
        checked) is the one its version was prefetched with."""
        for part in self.parts:
            given = part.prefetch_transform if part.prefetch_transform is not None else transform
            if given is not None:
                check_prefetch_transform(given, part.manifest)

    def prefetch_transform_of(self, stream: int, transform: Transform | None) -> Transform | None:
        """The transform that rebuilds stream ``stream``'s shards: its own, else the dataset's ``transform``."""
        own = self.parts[stream].prefetch_transform
        return own if own is not None else transform

    def with_manifests(self, manifests: Sequence[Manifest]) -> Mix:
        """The same mix over re-read manifests (of a still-loading version): the shard tables must not change."""
        parts = []
        for part, manifest in zip(self.parts, manifests, strict=True):
            if tuple(s.rows for s in manifest.shards) != part.rows:
                raise ConfigError(
                    f"the shard table of {manifest.name!r} version {manifest.version} changed while loading; "
                    "build the dataset again"
                )
            parts.append(dataclasses.replace(part, manifest=manifest))
        return dataclasses.replace(self, parts=tuple(parts))

    def batch_stream_counts(self, shard_of: Any, samples: np.ndarray, batch_size: int) -> np.ndarray:
        """``counts[j, s]``: samples of stream ``s`` in batch ``j`` of a rank's ``samples``."""
        streams = self.stream_of_shard[shard_of(samples)]
        batches = np.arange(len(samples)) // batch_size
        size = len(self.parts)
        flat = np.bincount(batches * size + streams, minlength=(-(-len(samples) // batch_size)) * size)
        return flat.reshape(-1, size)


def resolve_mix(
    cache: ShardCache, streams: Sequence[Stream], *, columns: Sequence[str] | None, epoch_size: int | None
) -> tuple[Mix, tuple[ColumnSpec, ...]]:
    """The mix of ``streams`` and its batch layout; ConfigError for a mix that cannot be read as one."""
    if not streams:
        raise ConfigError("the list of streams is empty: pass at least one Stream")
    for s in streams:
        if not isinstance(s, Stream):
            raise ConfigError(f"{s!r} is not a Stream: pass Stream(name, weight=...) objects or one dataset name")
    manifests = [cache.manifest(s.name, s.version) for s in streams]
    keys = [(m.name, m.version) for m in manifests]
    names = [m.name for m in manifests]
    labels = [m.name if names.count(m.name) == 1 else f"{m.name}@{m.version}" for m in manifests]
    for label, key in zip(labels, keys, strict=True):
        if keys.count(key) > 1:
            raise ConfigError(
                f"stream {label!r} ({key[0]!r} version {key[1]}) is in the mix twice: give it once, with the "
                "samples or weight of both"
            )
    rows = [sum(s.rows for s in m.shards) for m in manifests]
    for m, n, label in zip(manifests, rows, labels, strict=True):
        if n:
            continue
        if len(streams) == 1:
            raise ConfigError(f"dataset {m.name!r} version {m.version} has no rows; prefetch a non-empty source")
        raise ConfigError(
            f"stream {label!r} ({m.name!r} version {m.version}) has no rows, so it cannot give a sample an epoch: "
            "drop it from the mix, or prefetch a non-empty source into it"
        )
    layouts = [_columns(s, m, label, columns) for s, m, label in zip(streams, manifests, labels, strict=True)]
    first = layouts[0]
    for label, layout in zip(labels[1:], layouts[1:], strict=True):
        _check_same(labels[0], first, label, layout)
    quota = stream_quotas(streams, rows, epoch_size=epoch_size, labels=[repr(x) for x in labels])
    starts = row_offsets([len(m.shards) for m in manifests])
    parts = tuple(
        MixPart(label=label, manifest=m, quota=q, first_shard=int(start), prefetch_transform=stream.prefetch_transform)
        for label, m, q, start, stream in zip(labels, manifests, quota, starts[:-1], streams, strict=True)
    )
    order = list(first)
    return Mix(parts=parts, epoch_size=epoch_size), column_specs(manifests[0].schema, order)


def _columns(stream: Stream, manifest: Manifest, label: str, columns: Sequence[str] | None) -> dict[str, pa.DataType]:
    chosen = stream.columns if stream.columns is not None else columns
    try:
        specs = column_specs(manifest.schema, chosen)
    except ConfigError as exc:
        raise ConfigError(f"stream {label!r}: {exc}") from None
    return {s.name: manifest.schema.field(s.name).type for s in specs}


def _check_same(first: str, a: dict[str, pa.DataType], label: str, b: dict[str, pa.DataType]) -> None:
    differ = sorted(c for c in set(a) | set(b) if a.get(c) != b.get(c))
    if differ:
        shown = ", ".join(f"{c} ({a.get(c, 'absent')} vs {b.get(c, 'absent')})" for c in differ)
        raise ConfigError(
            f"stream {label!r} does not have the columns of stream {first!r}: {shown}; give each stream the "
            "same columns with Stream(..., columns=[...]) (a projection), or mix datasets of one schema"
        )


class _StreamCounters(Counters):
    """Counts into the totals and into stream ``stream``'s own counters."""

    def __init__(self, counters: Counters, stream: int) -> None:
        super().__init__()
        self._counters, self._stream = counters, stream

    def add(self, **deltas: float) -> None:
        self._counters.add(**deltas)
        self._counters.add_stream(self._stream, **deltas)


class MixSource:
    """Global shards of a mix, each loaded by its stream's :class:`ShardSource`."""

    def __init__(
        self, *, cache: ShardCache, mix: Mix, counters: Counters, read_through: bool, write_back: bool,
        prefetch_transform: Transform | None,
    ) -> None:  # fmt: skip
        self.counters = counters
        self._mix = mix
        self._sources = [
            ShardSource(
                cache=cache, manifest=p.manifest, counters=_StreamCounters(counters, s), read_through=read_through,
                write_back=write_back, prefetch_transform=mix.prefetch_transform_of(s, prefetch_transform),
            )
            for s, p in enumerate(mix.parts)
        ]

    def _locate(self, index: int) -> tuple[ShardSource, int]:
        s = int(self._mix.stream_of_shard[index])
        return self._sources[s], index - self._mix.parts[s].first_shard

    def shard_rows(self, index: int) -> int:
        source, local = self._locate(index)
        return source.shard_rows(local)

    def load(self, index: int) -> pa.Table:
        return self.load_into(index)[0]

    def load_into(self, index: int, into: Into = ()) -> tuple[pa.Table, pa.Buffer | None]:
        source, local = self._locate(index)
        return source.load_into(local, into)
