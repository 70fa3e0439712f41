"""``compare.py --random-access`` on tiny data: the Parquet baseline returns the right samples, every run kind
delivers what it is asked for, and the table renders (never a timed assertion)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from shardcache.cache import connect
from shardcache.prefetcher import prefetch

from .conftest import COMPARE

ROWS = 300
SHAPE = (3, 4, 4)


@pytest.fixture(scope="module")
def tiny(compare: ModuleType, tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Any]:
    from comparison.dataset import generate

    ds = generate(workdir=tmp_path_factory.mktemp("random-access"), rows=ROWS, image_shape=SHAPE, seed=1)
    name = "test-bench-random-access"
    prefetch(str(ds.parquet_dir), dataset=name, cache=redis_url, shard_size="2KiB")
    yield ds, name
    with connect(redis_url) as cache:
        cache.delete(name, force=True)


def _raw(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    images = np.fromfile(ds.raw_dir / "images.u8", dtype=np.uint8).reshape(ROWS, -1)
    return images, np.fromfile(ds.raw_dir / "labels.i64", dtype=np.int64)


def test_parquet_baseline_returns_the_samples_at_the_indices(tiny: Any) -> None:
    from comparison.random_access import ParquetRowGroups

    ds, _ = tiny
    images, labels = _raw(ds)
    budget = 1  # one row group at a time: every change of group reads again
    data = ParquetRowGroups([str(f) for f in ds.parquet_files], budget=budget)
    assert len(data) == ROWS
    order = np.random.default_rng(0).permutation(ROWS)[:100].tolist()
    got = data.__getitems__(order)
    assert [int(s["label"]) for s in got] == labels[order].tolist()
    assert all(torch.equal(s["image"], torch.from_numpy(images[i])) for s, i in zip(got, order, strict=True))
    assert data.reads == len(data.groups), "one read per row group per call"
    assert len(data._lru) == 1
    for i in order[:10]:
        assert int(data[i]["label"]) == labels[i]
    assert data.reads > len(data.groups), "evicted groups are read again"
    assert len(data._lru) == 1


@pytest.mark.parametrize("kind", ["map", "stream", "parquet"])
def test_each_kind_delivers_the_samples_asked_for(tiny: Any, redis_url: str, kind: str) -> None:
    from comparison.random_access import SYSTEMS

    ds, name = tiny
    spec: dict[str, Any] = {"workers": 0, "batch_size": 16, "samples": 200, "warmup": 2}
    if kind == "parquet":
        spec.update(files=[str(f) for f in ds.parquet_files], budget=4096)
    else:
        spec.update(url=redis_url, dataset=name, **({"budget": 4096} if kind == "map" else {}))
    result = SYSTEMS[kind](**spec)
    assert 200 <= result["samples"] <= 208  # whole batches, up to the first that reaches 200
    assert result["seconds"] > 0
    assert result["nbytes"] == result["samples"] * (int(np.prod(SHAPE)) + 8)
    if kind != "stream":
        assert 0 < result["shard_loads"] <= 208 + 32


@pytest.mark.slow
def test_the_section_runs_in_children_and_renders(tiny: Any, redis_url: str) -> None:
    from comparison.random_access import budget_of, render_random_access, run_random_access

    ds, name = tiny
    lines: list[str] = []
    section = run_random_access(
        url=redis_url, dataset=name, files=[str(f) for f in ds.parquet_files], workers=[0], budget=budget_of(
            "auto", dataset_bytes=ROWS * 56), rounds=1, warmup_rounds=0, timeout=300, say=lines.append,
        batch_size=16, samples=1000, warmup_batches=1, dataset_rows=ROWS,
    )
    assert section["settings"]["samples"] == ROWS
    assert section["settings"]["budget_bytes"] == ROWS * 56 // 4
    rows = {r["kind"]: r for r in section["rows"]}
    assert set(rows) == {"map", "stream", "parquet"}
    assert all(r["error"] is None and r["samples_per_s"] > 0 for r in rows.values())
    assert rows["map"]["map_ratio"] == pytest.approx(1.0)
    table = render_random_access(section)
    assert "CachedMapDataset, random indices" in table
    assert "LRU budget" in table
    assert budget_of("8MiB", dataset_bytes=1) == 8 << 20


def test_help_names_the_flag() -> None:
    out = subprocess.run([sys.executable, str(COMPARE), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--random-access" in out
    assert Path(COMPARE).exists()
