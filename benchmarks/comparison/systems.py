"""The measured systems of one run, as child-process specs (see :class:`comparison.rounds.System`).

The grid: ``CachedDataLoader`` and the plain Parquet DataLoader run every
``workers x batch_sizes`` pair; MosaicML Streaming, LitData and direct S3, whose runs
cost more (a 7 s CUDA-torch import, or a slow S3 server), run each ``workers`` value at
the largest batch size, as does the minimal hand-written loop. The other limits
(memcpy, TCP, bare GET/SET) need no batch size.

Every loader runs both ways, shuffled (the headline: what training runs) and unshuffled:

* CachedDataLoader ``shuffle=True``: shards and rows permuted, then a window of four shards' worth
  of samples (rounded up to a multiple of the batch) shuffled across shards;
* the Parquet DataLoader (local disk and S3): row groups in a new random order each epoch, through
  a shuffle buffer of as many samples as CachedDataLoader's window (the same memory), per worker;
* MosaicML Streaming ``shuffle=True`` with its defaults (``py1e``, its default block size);
* LitData ``shuffle=True``.

Shuffled runs also report the shuffle's quality (:mod:`.quality`).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import BenchConfig
from .dataset import Dataset
from .peers import Peers
from .rounds import Outcome, System
from .services import S3Endpoint

__all__ = ["Context", "NAMES", "build_systems"]

NAMES = {
    "memcpy": "memcpy (reference)",
    "tcp": "loopback TCP (reference)",
    "get": "bare redis-py GET loop (ceiling)",
    "handloop": "minimal hand-written Redis -> DataLoader loop (reference)",
    "cached": "CachedDataLoader",
    "parquet": "torch DataLoader + pyarrow, Parquet on local disk",
    "mds": "MosaicML Streaming, MDS on local disk",
    "litdata": "LitData StreamingDataset, local disk",
    "s3": "torch DataLoader + pyarrow, Parquet on S3 (no cache)",
    "prefetch": "shardcache prefetch, Parquet -> Redis",
    "set": "bare redis-py SET loop (ceiling)",
}


@dataclass(frozen=True)
class Context:
    """What the systems run against: the data, the cache, S3 and the peers interpreter."""

    config: BenchConfig
    dataset: Dataset
    url: str
    host: str
    port: int
    cached_name: str
    keys_file: Path
    s3: S3Endpoint | None
    s3_files: tuple[str, ...]
    peers: Peers | None
    peers_reason: str
    mds_dir: Path | None
    litdata_dir: Path | None
    shard_rows: tuple[int, ...] = ()  # rows of each cached shard: the shuffle window, the quality's blocks

    def window(self, batch_size: int) -> int:
        """CachedDataLoader's default shuffle window for ``batch_size`` (CachedDataset.window_for)."""
        rows = self.shard_rows or (max(1, self.config.shard_size // self.dataset.sample_bytes),)
        base = max(1, 4 * math.ceil(sum(rows) / len(rows)))
        return math.ceil(base / batch_size) * batch_size

    def quality(self) -> dict[str, object]:
        """Where a child finds the source order, to measure its shuffle (see :mod:`.quality`)."""
        rows = self.shard_rows or (max(1, self.config.shard_size // self.dataset.sample_bytes),)
        return {"raw": str(self.dataset.raw_dir / "images.u8"), "sample_bytes": self.dataset.sample_bytes,
                "block_rows": max(1, round(sum(rows) / len(rows)))}


def build_systems(ctx: Context) -> tuple[list[System], list[Outcome]]:
    """The systems to run, and the ones skipped (with the reason) for the table."""
    cfg, ds = ctx.config, ctx.dataset
    py = sys.executable
    rows = ds.rows
    shape = list(ds.image_shape)
    run: list[System] = []
    skipped: list[Outcome] = []

    def key_of(family: str, workers: int | None, batch: int | None, shuffle: bool | None) -> str:
        return (family + ("" if workers is None else f"/w{workers}") + ("" if batch is None else f"/b{batch}")
                + ("" if shuffle is None else ("/shuffled" if shuffle else "/unshuffled")))

    def add(family: str, group: str, spec: dict[str, object], *, workers: int | None = None,
            batch: int | None = None, python: str = py, module: str = "comparison.child",
            expected: int | None = None, shuffle: bool | None = None) -> None:
        if not cfg.wants(family):
            return
        if shuffle is not None:
            spec = {**spec, "shuffle": shuffle, **({"quality": ctx.quality()} if shuffle else {})}
        run.append(System(key=key_of(family, workers, batch, shuffle), family=family, name=NAMES[family],
                          group=group, spec=spec, python=python, module=module, workers=workers, batch_size=batch,
                          expected_samples=expected, shuffle=shuffle))

    def skip(family: str, reason: str, *, workers: int | None = None, batch: int | None = None,
             shuffle: bool | None = None) -> None:
        if not cfg.wants(family):
            return
        system = System(key=key_of(family, workers, batch, shuffle), family=family, name=NAMES[family],
                        group="alternative", spec={}, python=py, workers=workers, batch_size=batch, shuffle=shuffle)
        skipped.append(Outcome(system, skipped=reason))

    add("memcpy", "limit", {"system": "memcpy", "nbytes": ds.tensor_bytes})
    add("tcp", "limit", {"system": "tcp", "nbytes": ds.tensor_bytes})
    for w in cfg.workers:
        add("get", "limit", {"system": "get", "host": ctx.host, "port": ctx.port, "keys_file": str(ctx.keys_file),
                             "workers": w}, workers=w)
    big = cfg.largest_batch
    for w in cfg.workers:
        add("handloop", "limit", {"system": "handloop", "host": ctx.host, "port": ctx.port,
                                  "keys_file": str(ctx.keys_file), "workers": w, "batch_size": big, "shape": shape},
            workers=w, batch=big, expected=rows)
    files = [str(f) for f in ds.parquet_files]
    # Each loader's shuffled and unshuffled runs are neighbours in a round, so that their ratio is taken
    # over runs made at about the same time (see report.py: paired per round).
    both = (True, False)
    for w in cfg.workers:
        for b in cfg.batch_sizes:
            for shuffle in both:
                add("cached", "shardcache", {"system": "cached", "url": ctx.url, "dataset": ctx.cached_name,
                                             "workers": w, "batch_size": b}, workers=w, batch=b, expected=rows,
                    shuffle=shuffle)
    for w in cfg.workers:
        for b in cfg.batch_sizes:
            for shuffle in both:
                add("parquet", "alternative", {"system": "parquet", "files": files, "workers": w, "batch_size": b,
                                               "shape": shape, "buffer": ctx.window(b)},
                    workers=w, batch=b, expected=rows, shuffle=shuffle)
    for family, module_name, data_dir in (("mds", "streaming", ctx.mds_dir), ("litdata", "litdata", ctx.litdata_dir)):
        problem = ctx.peers_reason if ctx.peers is None else ctx.peers.problem(module_name)
        if problem is None and data_dir is None:
            problem = "its dataset could not be written"
        for w in cfg.workers:
            for shuffle in both:
                if problem is not None:
                    skip(family, problem, workers=w, batch=big, shuffle=shuffle)
                    continue
                assert ctx.peers is not None
                add(family, "alternative", {"system": family, "data": str(data_dir), "workers": w,
                                            "batch_size": big},
                    workers=w, batch=big, python=str(ctx.peers.python), module="comparison.peer_child",
                    expected=rows, shuffle=shuffle)
    for w in cfg.workers:
        for shuffle in both:
            if ctx.s3 is None:
                skip("s3", "no S3 server", workers=w, batch=big, shuffle=shuffle)
                continue
            add("s3", "alternative", {"system": "parquet", "files": list(ctx.s3_files), "workers": w,
                                      "batch_size": big, "shape": shape, "s3": ctx.s3.child_spec(),
                                      "buffer": ctx.window(big)},
                workers=w, batch=big, expected=rows, shuffle=shuffle)
    add("prefetch", "shardcache", {"system": "prefetch", "source": str(ds.parquet_dir), "url": ctx.url,
                                   "dataset": ctx.cached_name + "-prefetch", "shard_size": cfg.shard_size,
                                   "keep": False})
    add("set", "limit", {"system": "set", "host": ctx.host, "port": ctx.port, "raw_file": str(ds.raw_dir / "images.u8"),
                         "nbytes": ds.image_bytes, "value_size": cfg.shard_size, "rows": rows})
    return run, skipped
