"""What a prefetch reports: progress while it runs, and a final report with every failure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..cache.manifest import Manifest
from ..errors import PrefetchFailed
from ..units import format_bytes

__all__ = ["PrefetchReport", "Progress", "ProgressCallback", "ShardFailure"]


@dataclass(frozen=True)
class Progress:
    """Handed to the ``progress`` callback after each shard is written or skipped."""

    shards_done: int
    shards_total: int
    bytes_done: int
    bytes_total: int  # an estimate until the last shard is written
    skipped: int


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class ShardFailure:
    shard: int
    source: str
    reason: str


@dataclass
class PrefetchReport:
    """The final account of one prefetch; ``--json`` prints :meth:`to_dict`."""

    dataset: str
    version: str
    shards: int = 0
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0
    written: int = 0
    skipped: int = 0
    uncached: int = 0
    failed: list[ShardFailure] = field(default_factory=list)
    state: str = "loading"
    noop: bool = False
    part: int | None = None  # a part of a parallel prefetch: which one (0-based) of ``parts``
    parts: int = 1
    manifest: Manifest | None = field(default=None, repr=False)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def failure(self, *, rerun: str = "run again") -> PrefetchFailed:
        """The error for a prefetch with failed shards: how many, the first one and why, and ``rerun``."""
        first = self.failed[0]
        where = "" if self.part is None else f" (part {self.part} of {self.parts})"
        if self.part is not None and rerun == "run again":
            rerun = f"run part {self.part} of {self.parts} again (--part {self.part} --parts {self.parts})"
        return PrefetchFailed(
            f"{len(self.failed)} of {self.shards} shards of {self.dataset!r}{where} failed (first: shard {first.shard} "
            f"from {first.source}: {first.reason}); fix the source and {rerun}: the cached shards are kept",
            report=self,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("manifest", None)
        data["mb_per_s"] = round(self.mb_per_s, 1)
        data["seconds"] = round(self.seconds, 3)
        return data

    def summary(self) -> str:
        """A few lines for people."""
        lines = [
            f"dataset {self.dataset!r} version {self.version}: {self.state}"
            + (f" (part {self.part} of {self.parts})" if self.part is not None else "")
            + (" (already cached, nothing to do)" if self.noop else ""),
            f"  {self.shards} shards, {self.rows} rows, {format_bytes(self.bytes)} written in "
            f"{self.seconds:.2f}s ({self.mb_per_s:.0f} MB/s)",
            f"  written {self.written}, skipped as already cached {self.skipped}, "
            f"left uncached {self.uncached}, failed {len(self.failed)}",
        ]
        lines += [f"  failed shard {f.shard} from {f.source}: {f.reason}" for f in self.failed]
        return "\n".join(lines)
