"""CachedDataLoader against a minimal hand-written Redis -> Arrow -> tensor loop, same data, same run.

    python benchmarks/loader_throughput.py                       # 16,000 images of 12 KiB, x1 and x4
    python benchmarks/loader_throughput.py --rounds 5 --workers 0 2 4

It starts its own LocalCluster (3 primaries, no replicas), writes a synthetic dataset of
``--samples`` rows (``image``: fixed_size_binary(``--image-bytes``), ``label``: int64) and the same
``--rss-scale`` times larger, and prefetches both. Each measurement runs in a fresh child process,
one epoch, rounds alternating between the readers:

* ``cached``: ``CachedDataLoader(name, batch_size=B, num_workers=W)``: shuffled across shards,
  read ahead, whole batches built in the workers, batches in plan order;
* ``hand``: a ``DataLoader(batch_size=None, num_workers=W)`` over an IterableDataset that, per worker,
  GETs its shards from a RedisCluster client, opens them with Arrow and yields batches of rows of one
  shard at a time (shuffled within the shard) as zero-copy numpy -> torch views.

It prints the median MB/s (image bytes, MB = 10^6 bytes) and samples/s of each, the ratio cached/hand
(goal >= 0.8) and the peak RSS of the cached loader's main process and of its largest worker for the
x1 and the x``--rss-scale`` dataset (goal: no growth with the dataset's size).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def free_block(n: int, lo: int = 40000, hi: int = 55000) -> int:
    """First of ``n`` consecutive free ports whose bus ports (+10000) are free too."""
    from shardcache.localcluster import port_free

    for base in random.sample(range(lo, hi - n, n), k=(hi - lo) // n - 1):
        if all(port_free(p) for p in [*range(base, base + n), *range(base + 10000, base + 10000 + n)]):
            return base
    raise SystemExit(f"no {n} free consecutive ports in {lo}-{hi}; pass --port")


# -- the two readers, each run in a child process ----------------------------------------------------


def _hand_dataset(url: str, keys: list[list[str]], batch_size: int, seed: int) -> Any:
    import numpy as np
    import pyarrow as pa
    import torch
    from redis.cluster import ClusterNode, RedisCluster
    from torch.utils.data import IterableDataset, get_worker_info

    nodes = [ClusterNode(*hp.split(":")) for hp in url.removeprefix("redis://").split(",")]

    class HandDataset(IterableDataset):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            info = get_worker_info()
            worker, workers = (info.id, info.num_workers) if info else (0, 1)
            client = RedisCluster(startup_nodes=nodes)
            rng = np.random.default_rng(seed + worker)
            for chunks in keys[worker::workers]:  # a shard over the chunk size is stored in several keys
                payload = b"".join(client.get(key) for key in chunks) if len(chunks) > 1 else client.get(chunks[0])
                table = pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
                column = table.column("image").chunk(0)
                images = np.frombuffer(column.buffers()[1], dtype=np.uint8).reshape(len(column), -1)
                labels = table.column("label").chunk(0).to_numpy()
                order = rng.permutation(len(images))
                for start in range(0, len(order), batch_size):
                    rows = order[start : start + batch_size]
                    yield {"image": torch.from_numpy(images[rows]), "label": torch.from_numpy(labels[rows])}

    return HandDataset()


def _peak_rss(pid: int | str = "self") -> int:
    """VmHWM of a process in bytes: its peak RSS (unlike ru_maxrss, not inherited across exec)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _watch_workers(peak: dict[str, int], stop: threading.Event) -> None:
    """Sample the peak RSS of this process's children (the DataLoader workers) until stopped."""
    me = os.getpid()
    while not stop.wait(0.02):
        for task in Path(f"/proc/{me}/task").iterdir():
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for pid in children:
                peak["worker"] = max(peak["worker"], _peak_rss(pid))


def child(args: argparse.Namespace) -> None:
    """One epoch of one reader; prints a JSON line with what it measured."""
    from torch.utils.data import DataLoader

    from shardcache.cache import connect
    from shardcache.dataloader import CachedDataLoader

    stats: dict[str, Any] = {}
    if args.system == "cached":
        loader: Any = CachedDataLoader(args.dataset, cache=args.url, batch_size=args.batch_size,
                                       num_workers=args.num_workers)  # fmt: skip
    else:
        cache = connect(args.url)
        keys = [[cache.keys.chunk(s.key, c) for c in range(s.chunks)] for s in cache.manifest(args.dataset).shards]
        cache.close()
        loader = DataLoader(_hand_dataset(args.url, keys, args.batch_size, 0), batch_size=None,
                            num_workers=args.num_workers)  # fmt: skip
    samples = nbytes = 0
    peak = {"worker": 0}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_workers, args=(peak, stop), name="rss-watch", daemon=True)
    watcher.start()
    started = time.perf_counter()
    for batch in loader:
        samples += len(batch["label"])
        nbytes += batch["image"].numel()
    seconds = time.perf_counter() - started
    stop.set()
    watcher.join()
    if args.system == "cached":
        stats = loader.stats().as_dict()
    print(json.dumps({
        "seconds": seconds, "samples": samples, "bytes": nbytes, "stats": stats,
        "rss_main": _peak_rss(), "rss_worker": peak["worker"],
    }))  # fmt: skip


def run_child(system: str, dataset: str, url: str, num_workers: int, batch_size: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", system, "--dataset", dataset, "--url", url,
           "--num-workers", str(num_workers), "--batch-size", str(batch_size)]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{system} with {num_workers} workers failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the driver ------------------------------------------------------------------------------------------


def write_dataset(root: Path, *, samples: int, image_bytes: int) -> Path:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("image", pa.binary(image_bytes)), ("label", pa.int64())])
    rng = np.random.default_rng(0)
    path = root / f"images-{samples}.parquet"
    with pq.ParquetWriter(path, schema, compression="none") as writer:
        for start in range(0, samples, 4096):
            rows = min(4096, samples - start)
            images = rng.integers(0, 256, (rows, image_bytes), dtype=np.uint8)
            column = pa.FixedSizeBinaryArray.from_buffers(pa.binary(image_bytes), rows, [None, pa.py_buffer(images)])
            writer.write_table(pa.table({"image": column, "label": pa.array(np.arange(start, start + rows))}))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=16_000)
    parser.add_argument("--image-bytes", type=int, default=3 * 64 * 64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shard-size", default="4MiB")
    parser.add_argument("--rss-scale", type=int, default=4)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--child", choices=["cached", "hand"], help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--num-workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.system = args.child
        child(args)
        return 0

    from shardcache.localcluster import LocalCluster
    from shardcache.prefetcher import prefetch

    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        cluster = LocalCluster(masters=3, replicas=0, port=args.port or free_block(3), dir=Path(tmp) / "cluster",
                               maxmemory="3gb")  # fmt: skip
        cluster.start(timeout=60)
        try:
            names = {}
            for scale in sorted({1, args.rss_scale}):
                path = write_dataset(Path(tmp), samples=args.samples * scale, image_bytes=args.image_bytes)
                names[scale] = f"bench-x{scale}"
                prefetch(str(path), dataset=names[scale], cache=cluster.url, shard_size=args.shard_size)
                path.unlink()
            report(args, cluster.url, names)
        finally:
            cluster.stop()
    return 0


def report(args: argparse.Namespace, url: str, names: dict[int, str]) -> None:
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for _ in range(args.rounds):
        for workers in args.workers:
            for system in ("cached", "hand"):
                result = run_child(system, names[1], url, workers, args.batch_size)
                runs.setdefault((system, workers), []).append(result)
    mb = args.samples * args.image_bytes / 1e6
    print(f"{args.samples} samples of {args.image_bytes} B ({mb:.0f} MB), batch size {args.batch_size}, "
          f"shards of {args.shard_size}, median of {args.rounds} rounds")  # fmt: skip
    print(f"{'reader':<10}{'workers':>8}{'MB/s':>10}{'samples/s':>12}{'ratio':>8}{'peak RSS main/worker':>24}")
    for workers in args.workers:
        medians = {}
        for system in ("hand", "cached"):
            seconds = statistics.median(r["seconds"] for r in runs[(system, workers)])
            medians[system] = seconds
            last = runs[(system, workers)][-1]
            ratio = f"{medians['hand'] / seconds:.2f}x" if system == "cached" else ""
            rss = f"{last['rss_main'] / 2**20:,.0f} / {last['rss_worker'] / 2**20:,.0f} MiB"
            print(f"{system:<10}{workers:>8}{last['bytes'] / seconds / 1e6:>10,.0f}"
                  f"{last['samples'] / seconds:>12,.0f}{ratio:>8}{rss:>24}")  # fmt: skip
    print(f"peak RSS of the cached loader (main / largest worker), x1 vs x{args.rss_scale} dataset:")
    for workers in args.workers:
        cells = []
        for scale in sorted(names):
            r = run_child("cached", names[scale], url, workers, args.batch_size)
            cells.append(f"x{scale}: {r['rss_main'] / 2**20:,.0f} / {r['rss_worker'] / 2**20:,.0f} MiB")
        print(f"  workers={workers}: " + ", ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
