"""Prefetch throughput: local Parquet -> local Redis Cluster, against a bare SET loop and the source read alone.

    .venv/bin/python benchmarks/prefetch_throughput.py [--mb 300] [--rounds 3] [--shard-size 4MiB]

In one run, alternating rounds of:

* ``read``: reading the Parquet source alone (every row group, decoded to Arrow);
* ``set``: a bare redis-py loop that SETs the very payloads the prefetch writes, one at a
  time, on one cluster client (the shard bytes are prepared before the clock starts);
* ``prefetch``: ``run_prefetch`` of the source into a fresh dataset (list, plan, read,
  encode, checksum, write, commit).

MB/s are payload bytes (10^6) per second; the script prints medians and the ratios. The
goal is prefetch >= 0.7x the bare SET loop.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import redis

from shardcache.cache import connect, encode_table
from shardcache.errors import ConfigError
from shardcache.localcluster import LocalCluster
from shardcache.prefetcher import read_source_shard, run_prefetch

ROW_BYTES = 110_000  # an image-like fixed-size binary value per row


def make_source(root: Path, total_mb: int) -> int:
    rows = total_mb * 1_000_000 // ROW_BYTES
    files = 4
    per_file = rows // files
    rng = np.random.default_rng(0)
    for k in range(files):
        pixels = rng.integers(0, 255, per_file * ROW_BYTES, dtype=np.uint8)
        img = pa.FixedSizeBinaryArray.from_buffers(pa.binary(ROW_BYTES), per_file, [None, pa.py_buffer(pixels)])
        ids = np.arange(k * per_file, (k + 1) * per_file, dtype=np.int64)
        labels = (ids % 1000).astype(np.int32)
        pq.write_table(pa.table({"id": ids, "label": labels, "image": img}), root / f"part-{k}.parquet",
                       row_group_size=256)
    return per_file * files


def read_source(root: Path) -> int:
    total = 0
    for path in sorted(root.glob("*.parquet")):
        f = pq.ParquetFile(path)
        for i in range(f.num_row_groups):
            total += f.read_row_group(i).nbytes
    return total


def set_loop(client: redis.RedisCluster, payloads: list[pa.Buffer]) -> int:
    total = 0
    for i, payload in enumerate(payloads):
        client.set(f"bench:set:{i}", memoryview(payload))
        total += len(payload)
    return total


def start_cluster(where: Path, port: int) -> LocalCluster:
    """3 primaries on the first free block of ports from ``port`` on."""
    for base in range(port, 55_000, 10):
        cluster = LocalCluster(masters=3, replicas=0, port=base, dir=where / str(base), maxmemory="4gb")
        try:
            cluster.start(timeout=60)
        except ConfigError as exc:
            if "in use" in str(exc):
                continue
            raise
        return cluster
    raise RuntimeError(f"no free ports from {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=300, help="source size in MB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shard-size", default="4MiB")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--port", type=int, default=34500)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="prefetch-bench-") as tmp:
        root = Path(tmp) / "src"
        root.mkdir()
        t0 = time.perf_counter()
        rows = make_source(root, args.mb)
        print(f"source: {rows} rows of {ROW_BYTES} B in 4 parquet files ({time.perf_counter() - t0:.1f}s to make)")
        cluster = start_cluster(Path(tmp) / "cluster", args.port)
        try:
            cache = connect(cluster.url)
            # The bare loop writes exactly the payloads the prefetch writes.
            first = run_prefetch(root, dataset="bench-0", cache=cache, shard_size=args.shard_size)
            m = first.manifest
            payloads = [encode_table(read_source_shard(m, i)) for i in range(m.num_shards)]
            cache.delete("bench-0", force=True)
            client = redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
            results: dict[str, list[float]] = {"read": [], "set": [], "prefetch": []}
            for r in range(args.rounds):
                t = time.perf_counter()
                n = read_source(root)
                results["read"].append(n / 1e6 / (time.perf_counter() - t))

                t = time.perf_counter()
                n = set_loop(client, payloads)
                results["set"].append(n / 1e6 / (time.perf_counter() - t))
                client.delete(*[f"bench:set:{i}" for i in range(len(payloads))])

                name = f"bench-{r + 1}"
                t = time.perf_counter()
                report = run_prefetch(root, dataset=name, cache=cache, shard_size=args.shard_size,
                                      workers=args.workers)
                results["prefetch"].append(report.bytes / 1e6 / (time.perf_counter() - t))
                assert report.written == report.shards
                assert not report.failed
                cache.delete(name, force=True)
                print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} MB/s" for k, v in results.items()))
            med = {k: statistics.median(v) for k, v in results.items()}
            total_mb = sum(len(p) for p in payloads) / 1e6
            print(f"\n{m.num_shards} shards, {total_mb:.0f} MB of payload, shard_size {args.shard_size}, "
                  f"{args.rounds} rounds, medians:")
            for k, v in med.items():
                print(f"  {k:9s} {v:8.0f} MB/s")
            per_round = [p / s for p, s in zip(results["prefetch"], results["set"], strict=True)]
            print(f"  prefetch / set loop   = {med['prefetch'] / med['set']:.2f}x (goal >= 0.70x); "
                  f"median of per-round ratios {statistics.median(per_round):.2f}x")
            print(f"  prefetch / read alone = {med['prefetch'] / med['read']:.2f}x")
            client.close()
            cache.close()
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
