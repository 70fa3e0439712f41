"""Random access: CachedMapDataset against the streaming CachedDataLoader and Parquet read by index.

``compare.py --random-access [BUDGET]`` runs it after the main rounds, against the same cluster and
data. Each system delivers ``samples`` samples in batches of ``batch_size`` (after ``warmup`` untimed
batches, so that workers are up), for each ``workers`` value, each run in a fresh child process
(``python -m comparison.random_access SPEC``), round by round like the main systems:

* ``map``: ``DataLoader(CachedMapDataset(cache_bytes=BUDGET), sampler=RandomSampler, batch_size)``:
  uniformly random indices; torch's fetcher calls ``__getitems__`` with each batch's indices;
* ``stream``: ``CachedDataLoader(shuffle=True)``, the streaming loader (its own shuffle window);
* ``parquet``: what a user writes for random access to Parquet: a map-style dataset that reads the row
  group holding each index with ``pyarrow.parquet`` and keeps row groups in an LRU of the same BUDGET
  of decoded bytes, under the same DataLoader and sampler.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .entry import run_system
from .rounds import Outcome, System, run_rounds

__all__ = ["ParquetRowGroups", "budget_of", "build", "main", "render_random_access", "run_random_access"]

KINDS = {
    "map": "CachedMapDataset, random indices",
    "stream": "CachedDataLoader shuffle=True (streaming)",
    "parquet": "pyarrow Parquet by row group, random indices",
}


# -- the measured runs (in the child) ----------------------------------------------------------------


def _measure(batches: Iterator[dict[str, Any]], *, warmup: int, samples: int) -> dict[str, Any]:
    """Samples/s over ``samples`` samples of ``batches``, after ``warmup`` untimed batches."""
    for _ in range(warmup):
        next(batches)
    began = time.perf_counter()
    got = nbytes = 0
    while got < samples:
        batch = next(batches)
        got += len(batch["label"])
        nbytes += sum(v.numel() * v.element_size() for v in batch.values() if hasattr(v, "element_size"))
    return {"seconds": time.perf_counter() - began, "samples": got, "nbytes": nbytes}


def _epochs(make: Callable[[int], Any]) -> Iterator[dict[str, Any]]:
    """The batches of ``make(epoch)`` for epoch 0, 1, ... (a loader is asked again for each epoch)."""
    epoch = 0
    while True:
        yield from make(epoch)
        epoch += 1


def _random_loader(dataset: Any, *, workers: int, batch_size: int, total: int, seed: int) -> Any:
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    sampler = RandomSampler(dataset, num_samples=total, generator=torch.Generator().manual_seed(seed))
    return DataLoader(dataset, sampler=sampler, batch_size=batch_size, num_workers=workers,
                      persistent_workers=workers > 0)


def map_access(*, url: str, dataset: str, workers: int, batch_size: int, samples: int, warmup: int,
               budget: int, seed: int = 0) -> dict[str, Any]:
    from shardcache.dataloader import CachedMapDataset

    ds = CachedMapDataset(dataset, cache=url, columns=["image", "label"], cache_bytes=budget)
    total = warmup * batch_size + samples
    loader = _random_loader(ds, workers=workers, batch_size=batch_size, total=total, seed=seed)
    result = _measure(iter(loader), warmup=warmup, samples=samples)
    if workers == 0:  # with workers, each counts its own
        stats = ds.stats()
        result["shard_loads"] = stats.hits + stats.misses
        result["lru_hits"] = stats.lru_hits
    ds.close()
    return result


def stream_access(*, url: str, dataset: str, workers: int, batch_size: int, samples: int, warmup: int,
                  seed: int = 0) -> dict[str, Any]:
    from shardcache.dataloader import CachedDataLoader

    loader = CachedDataLoader(dataset, cache=url, batch_size=batch_size, shuffle=True, seed=seed,
                              num_workers=workers, persistent_workers=workers > 0)

    def epoch(e: int) -> Any:
        loader.set_epoch(e)
        return loader

    return _measure(_epochs(epoch), warmup=warmup, samples=samples)


class ParquetRowGroups:
    """A map-style dataset over Parquet files: index ``i`` is read from the row group holding it, and
    row groups are kept in an LRU of ``budget`` decoded bytes (at least the last one read)."""

    def __init__(self, files: Sequence[str], *, budget: int, columns: Sequence[str] = ("image", "label")) -> None:
        import numpy as np
        import pyarrow.parquet as pq

        self.files = list(files)
        self.budget = budget
        self.columns = list(columns)
        groups, rows = [], []
        for f, path in enumerate(self.files):
            meta = pq.ParquetFile(path).metadata
            for g in range(meta.num_row_groups):
                groups.append((f, g))
                rows.append(meta.row_group(g).num_rows)
        self.groups = groups
        self.offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
        self._files: dict[int, Any] = {}
        self._lru: OrderedDict[int, tuple[dict[str, Any], int]] = OrderedDict()
        self._held = 0
        self.reads = 0

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}, "_lru": OrderedDict(), "_held": 0}

    def _group(self, k: int) -> dict[str, Any]:
        import numpy as np
        import pyarrow.parquet as pq

        hit = self._lru.get(k)
        if hit is not None:
            self._lru.move_to_end(k)
            return hit[0]
        f, g = self.groups[k]
        pf = self._files.get(f)
        if pf is None:
            pf = self._files[f] = pq.ParquetFile(self.files[f])
        table = pf.read_row_group(g, columns=self.columns).combine_chunks()
        self.reads += 1
        images = table.column("image").chunk(0)
        width = images.type.byte_width
        flat = np.frombuffer(images.buffers()[1], dtype=np.uint8, count=len(images) * width,
                             offset=images.offset * width).reshape(len(images), width)
        views = {"image": flat, "label": table.column("label").to_numpy()}
        self._lru[k] = (views, table.nbytes)
        self._held += table.nbytes
        while self._held > self.budget and len(self._lru) > 1:
            _, (_, dropped) = self._lru.popitem(last=False)
            self._held -= dropped
        return views

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        import numpy as np
        import torch

        ids = np.asarray(indices, dtype=np.int64)
        ks = np.searchsorted(self.offsets, ids, side="right") - 1
        out: list[dict[str, Any]] = [{} for _ in range(len(ids))]
        for k in dict.fromkeys(ks.tolist()):
            positions = np.flatnonzero(ks == k)
            views = self._group(k)
            rows = ids[positions] - self.offsets[k]
            for name, array in views.items():
                for p, value in zip(positions.tolist(), torch.from_numpy(array[rows]).unbind(0), strict=True):
                    out[p][name] = value
        return out


def parquet_access(*, files: list[str], workers: int, batch_size: int, samples: int, warmup: int, budget: int,
                   seed: int = 0) -> dict[str, Any]:
    ds = ParquetRowGroups(files, budget=budget)
    total = warmup * batch_size + samples
    loader = _random_loader(ds, workers=workers, batch_size=batch_size, total=total, seed=seed)
    result = _measure(iter(loader), warmup=warmup, samples=samples)
    if workers == 0:
        result["shard_loads"] = ds.reads
    return result


SYSTEMS: dict[str, Callable[..., dict[str, Any]]] = {"map": map_access, "stream": stream_access,
                                                     "parquet": parquet_access}


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.filterwarnings("ignore", message="The given (NumPy array|buffer) is not writable")
    return run_system(SYSTEMS, argv)


# -- the harness's side -----------------------------------------------------------------------------


def build(*, url: str, dataset: str, files: Sequence[str], workers: Sequence[int], batch_size: int, samples: int,
          warmup: int, budget: int) -> list[System]:
    """The runs, as :class:`System` specs for :func:`run_rounds`."""
    out = []
    for w in workers:
        common = {"workers": w, "batch_size": batch_size, "samples": samples, "warmup": max(warmup, 2 * w)}
        specs = {
            "map": {"url": url, "dataset": dataset, "budget": budget, **common},
            "stream": {"url": url, "dataset": dataset, **common},
            "parquet": {"files": list(files), "budget": budget, **common},
        }
        for kind, spec in specs.items():
            out.append(System(key=f"random/{kind}/w{w}", family=f"random-{kind}", name=KINDS[kind],
                              group="shardcache" if kind != "parquet" else "alternative",
                              spec={"system": kind, **spec}, python=sys.executable,
                              module="comparison.random_access", workers=w, batch_size=batch_size))
    return out


def _row(outcome: Outcome) -> dict[str, Any]:
    s = outcome.system
    rate = outcome.median("samples")
    loads = [r["shard_loads"] / r["samples"] for r in outcome.runs if "shard_loads" in r]
    return {"key": s.key, "kind": s.spec["system"], "system": s.name, "workers": s.workers,
            "batch_size": s.batch_size, "samples_per_s": rate, "rounds": len(outcome.runs),
            "loads_per_sample": statistics.median(loads) if loads else None,
            "runs": outcome.runs, "error": outcome.error}


def budget_of(arg: str, *, dataset_bytes: int) -> int:
    """``--random-access`` BUDGET: a size, or ``auto`` (a quarter of the dataset: random indices then miss
    the LRU about three times in four, as on a dataset four times larger than memory allows)."""
    from shardcache.units import parse_size

    return max(1, dataset_bytes // 4) if arg == "auto" else parse_size(arg, name="--random-access")


def _layout(url: str, dataset: str, files: Sequence[str]) -> tuple[float, float]:
    """Mean bytes of a cached shard and of a Parquet row group (uncompressed)."""
    import pyarrow.parquet as pq

    from shardcache.cache import connect

    with connect(url) as cache:
        manifest = cache.manifest(dataset)
    sizes = [pq.ParquetFile(f).metadata.row_group(g).total_byte_size
             for f in files for g in range(pq.ParquetFile(f).metadata.num_row_groups)]
    return manifest.nbytes / max(1, manifest.num_shards), statistics.mean(sizes) if sizes else 0.0


def run_random_access(*, url: str, dataset: str, files: Sequence[str], workers: Sequence[int], budget: int,
                      rounds: int, warmup_rounds: int, timeout: float, say: Callable[[str], None],
                      batch_size: int = 64, samples: int = 4096, warmup_batches: int = 4,
                      dataset_rows: int | None = None) -> dict[str, Any]:
    """Run every random-access system; returns the JSON section (settings and one row per run kind)."""
    if dataset_rows is not None:
        samples = min(samples, dataset_rows)
    shard_bytes, row_group_bytes = _layout(url, dataset, files)
    systems = build(url=url, dataset=dataset, files=files, workers=workers, batch_size=batch_size,
                    samples=samples, warmup=warmup_batches, budget=budget)
    say(f"random access: {len(systems)} runs, {samples} samples each, batch {batch_size}, LRU budget "
        f"{budget / 2**20:.0f} MiB")
    outcomes = run_rounds(systems, rounds=rounds, warmup=warmup_rounds, timeout=timeout, say=say)
    rows = [_row(o) for o in outcomes]
    by_key = {(r["kind"], r["workers"]): r for r in rows}
    for r in rows:
        mine = by_key.get(("map", r["workers"]), {}).get("samples_per_s")
        r["map_ratio"] = mine / r["samples_per_s"] if mine and r["samples_per_s"] else None
    return {"settings": {"batch_size": batch_size, "samples": samples, "warmup_batches": warmup_batches,
                         "budget_bytes": budget, "shard_bytes": shard_bytes, "row_group_bytes": row_group_bytes,
                         "sampler": "RandomSampler (uniform, without replacement)", "rounds": rounds},
            "rows": rows}


def render_random_access(section: dict[str, Any]) -> str:
    """The random-access table: samples/s (median), and CachedMapDataset's ratio to each row."""
    st = section["settings"]
    lines = [
        f"random access: batch {st['batch_size']}, {st['samples']:,} samples per run after "
        f"{st['warmup_batches']} untimed batches, medians of {st['rounds']} rounds; {st['sampler']}; LRU budget "
        f"{st['budget_bytes'] / 2**20:,.1f} MiB per process (CachedMapDataset cache_bytes, and the Parquet row-group "
        f"LRU); shards {st['shard_bytes'] / 2**20:,.1f} MiB, Parquet row groups "
        f"{st['row_group_bytes'] / 2**20:,.1f} MiB",
        "map x = CachedMapDataset samples/s / this row (same workers); loads/sample = shards (row groups) read per "
        "sample delivered, workers=0",
        f"  {'system':<46} {'workers':>7} {'samples/s':>10} {'map x':>7} {'loads/sample':>13}",
    ]
    for r in section["rows"]:
        if r["error"]:
            lines.append(f"  {r['system']:<46} {r['workers']:>7}  FAILED: {r['error'].splitlines()[0][:80]}")
            continue
        rate = f"{r['samples_per_s']:,.0f}" if r["samples_per_s"] else "-"
        ratio = f"{r['map_ratio']:.2f}" if r["map_ratio"] else "-"
        loads = f"{r['loads_per_sample']:.2f}" if r["loads_per_sample"] is not None else "-"
        lines.append(f"  {r['system']:<46} {r['workers']:>7} {rate:>10} {ratio:>7} {loads:>13}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
