"""Launch a framework script as real processes and wait for them, for the framework tests.

``launch(script, args, nprocs=...)`` starts ``nprocs`` ranks with torch.distributed's environment
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), as torchrun would;
``nprocs=None`` starts one process and lets the framework start the others (Lightning's ``ddp``).
Every process runs with this worktree first on ``PYTHONPATH`` and one torch thread (two shared cores).
On a failure or timeout every process is killed and the output of each is in the assertion message.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def launch(script: str, args: list[str], *, nprocs: int | None, port: int, timeout: float = 240.0) -> list[str]:
    """Run ``tests/frameworks/<script>`` with ``args``; returns each process's output."""
    base = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [sys.executable, str(HERE / script), *args]
    ranks = range(nprocs) if nprocs is not None else [None]
    procs = []
    for rank in ranks:
        env = dict(base)
        if rank is not None:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nprocs), LOCAL_WORLD_SIZE=str(nprocs))
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + timeout
    outputs: list[str] = []
    failed = False
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            failed = True
            for p in procs:
                p.kill()
            out, _ = proc.communicate()
            out += f"\n[timed out after {timeout:.0f}s]"
        outputs.append(out)
        failed |= proc.returncode != 0
    if failed:
        for p in procs:
            if p.poll() is None:
                p.kill()
        detail = "\n".join(
            f"--- process {i} (rc {p.returncode}) ---\n{o[-4000:]}"
            for i, (p, o) in enumerate(zip(procs, outputs, strict=True))
        )
        raise AssertionError(f"{script} {' '.join(args)} failed:\n{detail}")
    return outputs
