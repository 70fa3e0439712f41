"""Helpers of the Accelerate and torchrun tests: a small cached dataset of unique ids, and torchrun launches.

The scripts the tests launch (``accelerate_*.py``, ``torchrun_*.py``) write what each rank delivered
as JSON; the tests count the ids.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardcache.cache import connect
from shardcache.prefetcher import prefetch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ROWS = 1000  # even: two ranks split it without padding, so every id is delivered exactly once
LAUNCH_TIMEOUT_S = 120.0  # two shared cores: a launch of two ranks takes 10-40 s; two fit pytest's 300 s


def write_ids_source(root: Path, rows: int) -> Path:
    """Two Parquet files of rows ``id`` (0..rows-1) and ``x`` (a float vector, so a model has an input)."""
    root.mkdir(parents=True, exist_ok=True)
    ids = np.arange(rows, dtype=np.int64)
    x = pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ids, 4).astype(np.float32) / rows), 4)
    table = pa.table({"id": pa.array(ids), "x": x})
    half = rows // 2
    pq.write_table(table.slice(0, half), root / "part-0.parquet")
    pq.write_table(table.slice(half), root / "part-1.parquet")
    return root


@pytest.fixture(scope="module")
def ids_dataset(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The name of a cached dataset of ROWS unique ids in about 20 shards, removed afterwards."""
    name = f"test-fw-b-{uuid.uuid4().hex[:8]}"
    root = write_ids_source(tmp_path_factory.mktemp("ids-source"), ROWS)
    with connect(redis_url) as cache:
        manifest = prefetch(str(root), dataset=name, cache=cache, shard_size="2KiB")
        assert manifest.num_shards >= 8
        yield name
        cache.delete(name, force=True)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a launched script: this checkout first on the path, one thread per process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHELASTIC_", "ACCELERATE_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def torchrun_command(script: str, args: Sequence[str], *, nproc: int, launcher: Sequence[str] = ()) -> list[str]:
    launch = list(launcher) or ["--standalone", f"--nproc-per-node={nproc}"]
    return [sys.executable, "-m", "torch.distributed.run", *launch, str(HERE / script), *args]


def torchrun(
    script: str, args: Sequence[str], *, nproc: int = 2, timeout: float = LAUNCH_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` on ``nproc`` local ranks (gloo); fails the test with the output on error or timeout."""
    command = torchrun_command(script, args, nproc=nproc)
    process = subprocess.Popen(
        command, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process)
        stdout, stderr = process.communicate()
        pytest.fail(f"{script} did not finish in {timeout:.0f} s (a hang?):\n{_tail(stdout)}\n{_tail(stderr)}")
    finally:
        kill_tree(process)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (from /proc): torchrun starts each worker in a session of its own."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(process: subprocess.Popen[Any]) -> None:
    """SIGKILL a launcher and its workers at once (for an elastic agent: a node dying, no clean leave)."""
    if process.poll() is None:
        for pid in [process.pid, *descendants(process.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(timeout=30)


def expect_ok(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"exit {done.returncode}:\n{_tail(done.stdout)}\n{_tail(done.stderr)}"


def _tail(text: str | bytes | None, n: int = 6000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-n:]


def read_ranks(out: Path, prefix: str, world_size: int) -> list[dict[str, Any]]:
    return [json.loads((out / f"{prefix}-rank{r}.json").read_text()) for r in range(world_size)]


def assert_exactly_once(ids: Sequence[int], rows: int = ROWS, *, what: str = "the epoch") -> None:
    counts = Counter(ids)
    missing = sorted(set(range(rows)) - set(counts))
    repeated = sorted(i for i, c in counts.items() if c > 1)
    summary = (
        f"{what}: {len(ids)} ids delivered, {len(missing)} missing (e.g. {missing[:5]}), "
        f"{len(repeated)} repeated (e.g. {repeated[:5]})"
    )
    assert not missing, summary
    assert not repeated, summary
    assert len(ids) == rows, summary
