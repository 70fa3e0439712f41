"""Running the systems round by round, each run in a fresh child process, and taking medians.

Round ``r`` runs every system once, starting at system ``r`` of the list (a rotation),
so no system always runs right after the same neighbour. The first ``warmup`` rounds
warm the page cache, Redis and the imports, and are dropped. A system whose child
fails is reported with the error and not run again.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .entry import RESULT_PREFIX

__all__ = ["Outcome", "System", "child_env", "headline", "run_child", "run_rounds"]

BENCH_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class System:
    """One measured configuration: which child runs it, with what arguments."""

    key: str  # unique, e.g. "cached/w2/b256"
    family: str  # "cached", "parquet", "s3", "mds", "litdata", "get", "set", "prefetch", "memcpy", "tcp"
    name: str  # shown in the table
    group: str  # "limit", "shardcache" or "alternative"
    spec: Mapping[str, Any]
    python: str
    module: str = "comparison.child"
    workers: int | None = None
    batch_size: int | None = None
    expected_samples: int | None = None
    shuffle: bool | None = None  # None: a reference with no order to shuffle (memcpy, GET loop...)


@dataclass
class Outcome:
    system: System
    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)

    def rate(self, run: Mapping[str, Any], what: str) -> float:
        return float(run[what]) / run["seconds"] if run["seconds"] > 0 else float("inf")

    def median(self, what: str) -> float | None:
        """Median over the measured rounds of ``nbytes``/s, ``samples``/s, or a plain field."""
        if not self.runs:
            return None
        if what in ("nbytes", "samples"):
            values = [self.rate(r, what) for r in self.runs if r.get(what) is not None]
        else:
            values = [float(r[what]) for r in self.runs if r.get(what) is not None]
        return statistics.median(values) if values else None


def headline(error: str) -> str:
    """The line of a child's error output that says what went wrong (the exception, else the last line)."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line or line.startswith("error"):
            return line
    return lines[-1] if lines else error


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: ``benchmarks/`` on PYTHONPATH so ``comparison`` imports."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_child(python: str, module: str, spec: Mapping[str, Any], *, timeout: float,
              env: Mapping[str, str] | None = None,
              wrap: Callable[[list[str]], list[str]] | None = None) -> dict[str, Any]:
    """Run one child to the end and return its RESULT; RuntimeError with its last output on failure.

    ``wrap`` turns the command into another (e.g. the same under a profiler).
    """
    argv = [python, "-m", module, json.dumps(dict(spec))]
    if wrap is not None:
        argv = wrap(argv)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=child_env(env),
                              check=False, cwd=BENCH_DIR)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{spec.get('system')} did not finish within {timeout:.0f}s") from None
    results = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not results:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-12:])
        raise RuntimeError(f"{spec.get('system')} exited with {proc.returncode}:\n{tail}")
    result: dict[str, Any] = json.loads(results[-1][len(RESULT_PREFIX) :])
    return result


def run_rounds(
    systems: Sequence[System], *, rounds: int, warmup: int, timeout: float, say: Callable[[str], None],
    wrap: Callable[[System, int], Callable[[list[str]], list[str]] | None] | None = None,
) -> list[Outcome]:
    """Every system ``warmup + rounds`` times, alternating; medians come from the last ``rounds``.

    ``wrap(system, round)`` may return a command wrapper for that run (see ``--profile``).
    """
    outcomes = {s.key: Outcome(s) for s in systems}
    total = warmup + rounds
    for r in range(total):
        label = f"warm-up {r + 1}/{warmup}" if r < warmup else f"round {r - warmup + 1}/{rounds}"
        shift = r % len(systems) if systems else 0
        for system in [*systems[shift:], *systems[:shift]]:
            outcome = outcomes[system.key]
            if outcome.error:
                continue
            began = time.monotonic()
            try:
                result = run_child(system.python, system.module, system.spec, timeout=timeout,
                                   wrap=None if wrap is None else wrap(system, r))
            except RuntimeError as exc:
                outcome.error = str(exc)
                say(f"  {label}: {system.key} FAILED: {headline(str(exc))[:200]}")
                continue
            expected = system.expected_samples
            if expected is not None and result.get("samples") not in (None, expected):
                note = f"delivered {result.get('samples')} samples per epoch, not {expected}"
                if note not in outcome.notes:
                    outcome.notes.append(note)
            if r >= warmup:
                outcome.runs.append(result)
            say(f"  {label}: {system.key:<22} {result['nbytes'] / max(result['seconds'], 1e-9) / 1e6:9.0f} MB/s"
                f"  ({time.monotonic() - began:.1f}s with start-up)")
    return [outcomes[s.key] for s in systems]
