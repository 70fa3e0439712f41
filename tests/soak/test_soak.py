"""Soak: 4 loader processes (ranks of one job) and 1 prefetcher on a 3+3 cluster; a primary is
killed while they run, then restarted empty. Zero errors, and every epoch delivers every sample
exactly once across the ranks (plus at most world_size - 1 padding samples, the loader's
equal-batch rule). Prints the figures README's Reliability section quotes.

Bounded to about two minutes on two cores: ``EPOCHS`` passes over a 40,000-row, 41 MB dataset.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from faults.harness import unique_name, write_source

from shardcache.cache import connect
from shardcache.localcluster import LocalCluster

pytestmark = [pytest.mark.soak, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
PREFETCH_JOB = HERE.parent / "faults" / "prefetch_job.py"
LOADER_JOB = HERE / "loader_job.py"
RANKS = 4
EPOCHS = 36
ROWS = 40_000
PAYLOAD_BYTES = 1024  # 41 MB in all: about 80 shards of 512 KiB
BOUND_S = 240.0  # far above the expected ~1-2 minutes: beyond it the soak has hung


def test_soak_four_loaders_one_prefetcher_primary_killed(
    cluster_factory: Callable[..., LocalCluster], tmp_path: Path,
) -> None:
    cluster = cluster_factory(masters=3, replicas=1, node_timeout_ms=500, maxmemory="64mb")
    source = write_source(tmp_path / "source", rows=ROWS, files=4, row_group=1000, payload_bytes=PAYLOAD_BYTES)
    dataset = unique_name("soak")
    out = tmp_path / "out"
    out.mkdir()
    started = time.monotonic()

    # stderr goes to files: a pipe nobody reads until the end could fill up and block a process.
    logs = [(tmp_path / f"{name}.err").open("w") for name in ("prefetcher", *(f"rank-{r}" for r in range(RANKS)))]
    prefetcher = subprocess.Popen(
        [sys.executable, str(PREFETCH_JOB), cluster.url, str(source), dataset, "--shard-size", "512KiB",
         "--deadline", "15"],
        stdout=subprocess.PIPE, stderr=logs[0], text=True,
    )
    loaders = [
        subprocess.Popen(
            [sys.executable, str(LOADER_JOB), cluster.url, dataset, str(rank), str(RANKS), str(EPOCHS), str(out)],
            stdout=subprocess.PIPE, stderr=logs[1 + rank], text=True,
        )
        for rank in range(RANKS)
    ]
    faults = []
    try:
        # Fault 1 once the ranks are about a third through; fault 2 (restart the node empty) at two thirds.
        _wait_epochs(loaders[0], EPOCHS // 3, started)
        with connect(cluster.url, env={}) as cache:
            manifest = cache.manifest(dataset)
            counts = Counter(cluster.primary_for_key(s.key) for s in manifest.shards)
        victim = counts.most_common(1)[0][0]
        cluster.kill_node(victim)
        faults.append(f"SIGKILL primary {victim} (holding {counts[victim]} of {manifest.num_shards} shards)")
        _wait_epochs(loaders[0], EPOCHS // 3, started)
        cluster.restart_node(victim, empty=True)
        faults.append(f"restart {victim} empty (rejoins as a replica)")

        for proc in loaders:
            proc.communicate(timeout=max(BOUND_S - (time.monotonic() - started), 1))
        prefetch_out, _ = prefetcher.communicate(timeout=30)
    finally:
        for proc in (*loaders, prefetcher):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        for log in logs:
            log.close()
    wall = time.monotonic() - started

    def tail(name: str) -> str:
        return (tmp_path / f"{name}.err").read_text()[-2000:]

    errors = [f"rank {r}: exit {p.returncode}: {tail(f'rank-{r}')}" for r, p in enumerate(loaders) if p.returncode]
    if prefetcher.returncode != 0:
        errors.append(f"prefetcher: exit {prefetcher.returncode}: {prefetch_out[-500:]} {tail('prefetcher')}")
    assert errors == [], "\n".join(errors)
    report = json.loads(prefetch_out.strip().splitlines()[-1].removeprefix("done "))
    assert report["state"] == "complete"
    assert report["failed"] == []

    summaries = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(RANKS)]
    delivered = lost = duplicated = padding = 0
    for epoch in range(EPOCHS):
        per_rank = [np.load(out / f"rank-{r}-epoch-{epoch}.npy") for r in range(RANKS)]
        assert len({s["batches"][epoch] for s in summaries}) == 1, "ranks yielded unequal batch counts"
        ids = np.concatenate(per_rank)
        counts_ = np.bincount(ids, minlength=ROWS)
        delivered += len(ids)
        lost += int((counts_[:ROWS] == 0).sum())
        extra = int((counts_ - 1).clip(min=0).sum())
        assert extra <= RANKS - 1, f"epoch {epoch}: {extra} repeats, more than the padding allows"
        padding += extra
        duplicated += extra - (len(ids) - ROWS)  # repeats that are not the equal-batch padding
    stats = [s["stats"] for s in summaries]
    seconds = max(s["seconds"] for s in summaries)
    figures = {
        "samples_delivered": delivered,
        "faults_injected": len(faults),
        "faults": faults,
        "samples_lost": lost,
        "samples_duplicated": duplicated,
        "padding_samples": padding,
        "epochs": EPOCHS,
        "ranks": RANKS,
        "read_throughs": sum(s["read_throughs"] for s in stats),
        "hits": sum(s["hits"] for s in stats),
        "samples_per_s": round(delivered / seconds),
        "mb_per_s": round(sum(s["bytes_read"] for s in stats) / seconds / 1e6, 1),
        "wall_seconds": round(wall, 1),
        "prefetch": {k: report[k] for k in ("shards", "rows", "bytes", "seconds")},
    }
    print("\nSOAK " + json.dumps(figures, indent=1))
    assert (lost, duplicated) == (0, 0)


def _wait_epochs(proc: subprocess.Popen[str], count: int, started: float) -> None:
    """Read ``count`` ``epoch N`` lines from ``proc`` (rank 0 paces the faults)."""
    assert proc.stdout is not None
    for _ in range(count):
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"rank 0 exited early with status {proc.wait()}")
        assert line.startswith("epoch"), line
        assert time.monotonic() - started < BOUND_S, "the soak is not progressing"
