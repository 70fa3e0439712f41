"""The work behind ``plan_op`` and ``commit_op``: a prefetch split over the pods of a ``dsl.ParallelFor``.

``plan_op`` plans the version (whole-version capacity check, manifest ``loading``) and returns
the part numbers; each ``prefetch_op(part=i, parts=N, version=V)`` loads its range of shards;
``commit_op`` commits once every shard is in, exactly once (see :mod:`shardcache.prefetcher.parts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..cache import ShardCache
from ..errors import ConfigError
from ..units import parse_duration
from .steps import PrefetchResult, _code

__all__ = ["PlanResult", "commit", "plan"]


@dataclass(frozen=True)
class PlanResult:
    """What ``plan_op`` reports: the planned version and how its shards split into parts."""

    dataset: str
    version: str
    parts: int
    shards: int
    rows: int
    state: str
    missing: int
    ranges: tuple[tuple[int, int], ...]
    cache: str

    def items(self) -> list[dict[str, object]]:
        """``plan_op``'s output: one ``{"part", "parts", "version"}`` per part, for ``dsl.ParallelFor``."""
        return [{"part": i, "parts": self.parts, "version": self.version} for i in range(self.parts)]

    def metrics(self) -> dict[str, float]:
        return {"parts": self.parts, "shards": self.shards, "rows": self.rows, "missing": self.missing}

    def markdown(self) -> str:
        lines = [
            f"# Plan of `{_code(self.dataset)}` in {self.parts} parts",
            "",
            f"Version `{self.version}` is **{self.state}** in `{_code(self.cache)}`: {self.shards} shards, "
            f"{self.rows} rows, {self.missing} to load.",
            "",
            "| part | shards |",
            "|---:|---|",
        ]
        lines += [f"| {i} | {start}-{stop - 1} |" if stop > start else f"| {i} | none |"
                  for i, (start, stop) in enumerate(self.ranges)]
        return "\n".join(lines) + "\n"


def plan(
    cache: ShardCache, *, source: str, dataset: str, parts: int, shard_size: str = "4MiB", compression: str = "",
    wait: str | float = "1h",
) -> PlanResult:
    """Plan ``source`` as a version of ``dataset`` in ``parts`` parts (begun ``loading``)."""
    from ..prefetcher import plan_prefetch

    p = plan_prefetch(source, dataset=dataset, cache=cache, parts=parts, shard_size=shard_size,
                      compression=compression or None, wait=parse_duration(wait, name="wait"))
    ranges = tuple((r.start, r.stop) for r in map(p.shards_of, p.parts_list))
    return PlanResult(dataset=dataset, version=p.version, parts=p.parts, shards=p.shards, rows=p.rows,
                      state=p.state, missing=p.missing, ranges=ranges, cache=cache.url.redacted())


def commit(
    cache: ShardCache, *, source: str, dataset: str, parts_done: Sequence[object], version: str = "",
    shard_size: str = "4MiB", compression: str = "", wait: str | float = "1h",
) -> PrefetchResult:
    """Commit the version the parts loaded once every shard is in; ``parts_done`` (the parts' outputs)
    must all name one version (``version``, when given)."""
    from ..prefetcher import commit_prefetch

    named = sorted({str(v) for v in parts_done} | ({version} if version else set()))
    if len(named) != 1:
        raise ConfigError(f"the parts loaded version(s) {', '.join(named) or 'none'}: a commit needs exactly one "
                          "(every part of one plan); plan again and run its parts")
    version = named[0]
    report = commit_prefetch(source, dataset=dataset, cache=cache, version=version or None, shard_size=shard_size,
                             compression=compression or None, wait=parse_duration(wait, name="wait"))
    return PrefetchResult(dataset=dataset, version=report.version, report=report.to_dict(),
                          cache=cache.url.redacted())
