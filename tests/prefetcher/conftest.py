"""Helpers for the prefetcher tests: small sources with a row id, and checks that every row is cached once."""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardcache.cache import ShardCache, checksum, connect, encode_table
from shardcache.cache.manifest import Manifest
from shardcache.prefetcher import read_source_shard


def image_table(start: int, n: int, *, width: int = 256, seed: int = 0) -> pa.Table:
    """Rows ``id`` = start..start+n, an image-like fixed-size binary column and a string."""
    rng = np.random.default_rng(seed + start)
    pixels = pa.py_buffer(rng.integers(0, 255, n * width, dtype=np.uint8).tobytes())
    img = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pixels])
    ids = np.arange(start, start + n, dtype=np.int64)
    return pa.table({"id": ids, "img": img, "name": [f"row-{i}" for i in ids]})


def write_parquet_files(root: Path, *, files: int = 3, rows: int = 400, row_group_size: int = 150,
                        width: int = 256) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(files):
        path = root / f"part-{k:03d}.parquet"
        pq.write_table(image_table(k * rows, rows, width=width), path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def cached_ids(cache: ShardCache, manifest: Manifest) -> list[int]:
    """Every ``id`` held in the cache for ``manifest``, in shard order."""
    out: list[int] = []
    for index in range(manifest.num_shards):
        out += cache.get_table(manifest, index).column("id").to_pylist()
    return out


def assert_rebuilds(cache: ShardCache, manifest: Manifest, **kwargs: object) -> None:
    """Every shard rebuilt from the source equals the cached one, checksum included."""
    for index, shard in enumerate(manifest.shards):
        table = read_source_shard(manifest, index, **kwargs)  # type: ignore[arg-type]
        assert checksum(encode_table(table, compression=manifest.compression)) == shard.checksum
        assert table.equals(cache.get_table(manifest, index))


KILL_POINT_TIMEOUT_S = 120.0  # interpreter start, imports and the first shards, on two busy cores


def kill_at(proc: subprocess.Popen[str], kill_after: int) -> int:
    """SIGKILL ``proc`` once it prints ``done N`` with N >= ``kill_after``; return that N.

    The child is a prefetcher whose progress callback prints ``done N`` and, from ``kill_after`` on,
    blocks reading stdin: it reads and submits nothing more while the kill is on its way.
    """
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, name="prefetcher-stdout", daemon=True)
    reader.start()
    seen: list[str] = []
    deadline = time.monotonic() + KILL_POINT_TIMEOUT_S
    try:
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                pytest.fail(f"the prefetcher printed no 'done N' with N >= {kill_after} within "
                            f"{KILL_POINT_TIMEOUT_S:.0f} s; its output: {seen}")
            if line is None:
                pytest.fail(f"the prefetcher exited (code {proc.wait(timeout=30)}) before {kill_after} shards "
                            f"were written; its output: {seen}")
            seen.append(line.strip())
            assert line.startswith("done"), seen
            done = int(line.split()[1])
            if done >= kill_after:
                break
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL, seen
        return done
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        reader.join(timeout=30)  # EOF once the child is gone; before Popen's exit closes the pipe


@pytest.fixture
def cache(redis_url: str) -> Iterator[ShardCache]:
    with connect(redis_url) as c:
        yield c


@pytest.fixture
def dataset_name(cache: ShardCache) -> Iterator[str]:
    name = f"pf-{uuid.uuid4().hex[:10]}"
    yield name
    try:
        cache.delete(name, force=True)
    except Exception:
        pass


@pytest.fixture
def parquet_source(tmp_path: Path) -> Callable[..., Path]:
    def make(**kwargs: int) -> Path:
        root = tmp_path / "src"
        write_parquet_files(root, **kwargs)
        return root

    return make
