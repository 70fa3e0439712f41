"""``--profile DIR``: record measured runs with py-spy and say where the time goes.

Each run of a profiled system is started under ``py-spy record --threads --idle
--subprocesses --format raw`` (DataLoader workers included). :func:`summarize` then
adds the samples up per thread role (main thread, read-ahead threads, workers...)
and lists, for each role, the functions that hold the most samples, including waits:
a consumer waiting on its read-ahead and a read-ahead busy in ``recv`` tell different
stories.
"""

from __future__ import annotations

import collections
import re
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["find_py_spy", "summarize", "wrap"]

_LINE_NO = re.compile(r":\d+\)$")
_PID = re.compile(r"\((\d+)\)|process \d+:|pid \d+")


def find_py_spy() -> str | None:
    """py-spy next to this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def wrap(argv: Sequence[str], *, py_spy: str, out: Path, rate: int = 100) -> list[str]:
    """``argv`` run under py-spy, writing collapsed stacks to ``out``."""
    return [py_spy, "record", "--threads", "--idle", "--subprocesses", "--nonblocking", "-r", str(rate),
            "-f", "raw", "-o", str(out), "--", *argv]


def _role(frames: list[str]) -> str:
    """Thread role without pids: 'main', 'worker MainThread', 'worker shardcache-readahead-1-0'..."""
    process, thread = frames[0], frames[1] if len(frames) > 1 else ""
    kind = "worker" if process.count("process ") > 1 or ";process " in process else "main process"
    name = thread.split(":", 1)[1].strip() if ":" in thread else "thread"
    name = re.sub(r"-\d+$", "", name)  # readahead-0-1 -> readahead-0
    return f"{kind} / {name}"


def _where(frames: list[str]) -> str:
    """The leaf function, and the innermost shardcache frame that led to it (the context of a wait)."""
    leaf = _LINE_NO.sub(")", frames[-1])
    ours = [f for f in frames[2:-1] if "shardcache/" in f]
    return leaf if not ours else f"{leaf}  <-  {ours[-1]}"


def summarize(files: Iterable[Path], *, top: int = 12) -> str:
    """Per thread role: its samples, and the functions where they sat (self time, waits included)."""
    roles: collections.Counter[str] = collections.Counter()
    leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for path in files:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = stack.split(";")
            # With --subprocesses a worker's stack starts with the parent's process frame, then its own.
            if len(frames) > 2 and frames[1].startswith("process "):
                frames = [frames[0] + ";" + frames[1], *frames[2:]]
            role = _role(frames)
            roles[role] += int(count)
            leaves[role][_where(frames)] += int(count)
    lines = []
    for role, total in roles.most_common():
        lines.append(f"{role}: {total} samples")
        for func, n in leaves[role].most_common(top):
            lines.append(f"  {100 * n / total:5.1f}%  {func}")
    return "\n".join(lines)
