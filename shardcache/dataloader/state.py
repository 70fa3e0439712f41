"""The loader's state dict: where an epoch stopped, per rank or for all ranks, as plain JSON-able data.

A rank's state::

    {"format": 1, "dataset": "imagenet-train", "version": "v1", "seed": 0, "shuffle": true,
     "rows": "<xxh3 of the shard row counts>", "window": 4096, "epoch": 3,
     "history": [{"world_size": 4, "batch_size": 256, "drop_last": false, "consumed": [9, 9, 9, 9]}],
     "world_size": 3, "batch_size": 256, "drop_last": false, "rank": 1, "consumed": 17}

A mix, or a dataset read with ``epoch_size``, adds ``"mix"``: each stream's name, version and
samples an epoch (and the epoch size), so a state loads only into the same mix.

The global state has ``"rank": null`` and ``"consumed"`` lists every rank's count. ``consumed`` counts
batches of the current layout (``history`` holds the finished ones), so the same layout resumes at
that batch and another layout re-plans what the history and the current layout left undelivered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import xxhash

from ..errors import ConfigError
from .checks import check_int
from .plan import PlanSegment

__all__ = ["STATE_FORMAT", "LoaderState", "merge_rank_states", "rows_digest", "segment_from_dict", "segment_to_dict"]

STATE_FORMAT = 1
_IDENTITY = ("dataset", "version", "seed", "shuffle", "rows")
_AS_SAVED = "pass what state_dict() returned"


def segment_to_dict(segment: PlanSegment) -> dict[str, Any]:
    return {
        "world_size": segment.world_size,
        "batch_size": segment.batch_size,
        "drop_last": segment.drop_last,
        "consumed": list(segment.consumed),
    }


def segment_from_dict(doc: Mapping[str, Any]) -> PlanSegment:
    return PlanSegment(
        world_size=doc["world_size"], batch_size=doc["batch_size"], drop_last=doc["drop_last"],
        consumed=tuple(doc["consumed"]),
    )  # fmt: skip


def rows_digest(rows: Sequence[int]) -> str:
    """A short fingerprint of the shard table, so a state cannot be applied to another one."""
    return xxhash.xxh3_64_hexdigest(",".join(map(str, rows)).encode())


@dataclass(frozen=True)
class LoaderState:
    """A parsed state: ``rank`` is None and ``consumed`` has one count per rank for the global form."""

    identity: Mapping[str, Any]
    window: int
    epoch: int
    history: tuple[PlanSegment, ...]
    world_size: int
    batch_size: int
    drop_last: bool
    rank: int | None
    consumed: tuple[int, ...]

    @property
    def segment(self) -> PlanSegment:
        """The current layout with every rank's count (global form only)."""
        return PlanSegment(
            world_size=self.world_size, batch_size=self.batch_size, drop_last=self.drop_last, consumed=self.consumed
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            **self.identity,
            "window": self.window,
            "epoch": self.epoch,
            "history": [segment_to_dict(s) for s in self.history],
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "rank": self.rank,
            "consumed": self.consumed[0] if self.rank is not None else list(self.consumed),
        }

    @classmethod
    def from_dict(cls, state: object, *, identity: Mapping[str, Any]) -> LoaderState:
        """Parse and validate ``state`` against this loader's ``identity``; raises ConfigError."""
        if not isinstance(state, Mapping):
            raise ConfigError(
                f"state={type(state).__name__} is not a loader state: pass what state_dict() returned, "
                "or the list of every rank's state_dict()"
            )
        if state.get("format") != STATE_FORMAT:
            raise ConfigError(
                f"state format {state.get('format')!r} is not {STATE_FORMAT}: "
                "pass what CachedDataLoader.state_dict() returned"
            )
        if state.get("mix") != identity.get("mix"):
            raise ConfigError(
                f"the state dict belongs to the mix {_shown_mix(state.get('mix'))}, this loader reads "
                f"{_shown_mix(identity.get('mix'))}: load it into a loader built with the same streams (names, "
                "versions, weights or samples) and epoch_size"
            )
        for key in _IDENTITY:
            if state.get(key) != identity[key]:
                raise ConfigError(
                    f"the state dict belongs to {key}={state.get(key)!r}, this loader reads {key}={identity[key]!r} "
                    f"(dataset {identity['dataset']!r} version {identity['version']}): load it into a loader built "
                    "with the same dataset, version, seed and shuffle"
                )
        try:
            history = tuple(segment_from_dict(s) for s in state["history"])
            rank = state["rank"]
            consumed = state["consumed"]
            consumed = (consumed,) if rank is not None else tuple(consumed)
            parsed = cls(
                identity=dict(identity), window=state["window"], epoch=state["epoch"], history=history,
                world_size=state["world_size"], batch_size=state["batch_size"], drop_last=state["drop_last"],
                rank=rank, consumed=consumed,
            )  # fmt: skip
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"the state dict is malformed ({exc!r}): pass what state_dict() returned") from None
        parsed._check()
        return parsed

    def _check(self) -> None:
        for name in ("window", "epoch", "world_size", "batch_size"):
            minimum = 0 if name == "epoch" else 1
            value = check_int(f"the state dict's {name}", getattr(self, name), minimum=minimum, fix=_AS_SAVED)
            object.__setattr__(self, name, value)
        if self.rank is not None:
            fix = f"it is not in 0..{self.world_size - 1}; {_AS_SAVED}"
            if check_int("the state dict's rank", self.rank, minimum=0, fix=fix) >= self.world_size:
                raise ConfigError(f"the state dict's rank={self.rank!r} is invalid: {fix}")
            object.__setattr__(self, "rank", int(self.rank))
            fix = f"it is not a batch count; {_AS_SAVED}"
            consumed = check_int("the state dict's consumed", self.consumed[0], minimum=0, fix=fix)
            object.__setattr__(self, "consumed", (consumed,))
        else:
            self.segment  # noqa: B018 -- validates one count per rank


def _shown_mix(mix: object) -> str:
    if not isinstance(mix, list):
        return "of one dataset read whole each epoch" if mix is None else repr(mix)
    shown = [
        f"{m.get('name')}@{m.get('version')}: {m.get('samples')}" if "name" in m else f"epoch_size={m['epoch_size']}"
        for m in mix
        if isinstance(m, Mapping)
    ]
    return "[" + ", ".join(shown) + "]"


def merge_rank_states(states: Sequence[LoaderState]) -> LoaderState:
    """The global state of every rank's own state; they must describe one epoch of one layout."""
    if not states:
        raise ConfigError("the list of rank states is empty: pass every rank's state_dict()")
    first = states[0]
    if any(s.rank is None for s in states):
        raise ConfigError("pass either one global state or a list of per-rank states, not a mix")
    same = ("identity", "window", "epoch", "history", "world_size", "batch_size", "drop_last")
    for s in states[1:]:
        for name in same:
            if getattr(s, name) != getattr(first, name):
                raise ConfigError(
                    f"the rank states disagree on {name} (rank {first.rank}: {getattr(first, name)!r}, rank {s.rank}: "
                    f"{getattr(s, name)!r}); pass states saved at the same point of one run"
                )
    ranks = sorted(s.rank for s in states)  # type: ignore[type-var]
    if ranks != list(range(first.world_size)):
        raise ConfigError(
            f"the rank states cover ranks {ranks}, not 0..{first.world_size - 1}: pass one state of every rank"
        )
    consumed = tuple(s.consumed[0] for s in sorted(states, key=lambda s: s.rank))  # type: ignore[arg-type,return-value]
    return LoaderState(
        identity=first.identity, window=first.window, epoch=first.epoch, history=first.history,
        world_size=first.world_size, batch_size=first.batch_size, drop_last=first.drop_last,
        rank=None, consumed=consumed,
    )  # fmt: skip
