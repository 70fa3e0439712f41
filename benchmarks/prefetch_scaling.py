"""Parallel prefetch scaling: 1, 2 and 4 processes (parts) against the bare SET ceiling, in one run.

    .venv/bin/python benchmarks/prefetch_scaling.py [--mb 300] [--rounds 3] [--processes 1,2,4]

The source and cluster are those of ``prefetch_throughput.py`` (4 Parquet files of image-like
rows; 3 primaries). Alternating rounds of:

* ``set``: one process SETting the very payloads the prefetch writes, one at a time (the
  ceiling of ``prefetch_throughput.py``);
* ``set xN``: N processes, each SETting its part of the payloads, started together (the
  ceiling of N writers on this machine);
* ``single``: ``run_prefetch`` in this process (the unparallel path);
* ``pN``: ``parallel_prefetch(processes=N)``: plan, N processes loading a part each, commit
  (forking the parts from the forkserver included; the forkserver's own start, once per
  calling process, is timed apart before the rounds).

MB/s are payload bytes (10^6) per second; the script prints medians and ratios. On a 2-core
VM the parts share two cores with Redis: expect little gain past 2 processes.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prefetch_throughput import make_source, start_cluster

from shardcache.cache import connect, encode_table
from shardcache.prefetcher import parallel_prefetch, part_range, read_source_shard, run_prefetch


def _set_part(port: int, manifest: Any, part: int, parts: int, ready: Any, go: Any, out: Any) -> None:
    """One SET writer: encodes its part's payloads first, then SETs them once ``go`` is set."""
    payloads = [encode_table(read_source_shard(manifest, i)) for i in part_range(manifest.num_shards, part, parts)]
    client = redis.RedisCluster(host="127.0.0.1", port=port)
    ready.release()
    go.wait()
    t = time.perf_counter()
    for k, payload in enumerate(payloads):
        client.set(f"bench:setp:{part}:{k}", memoryview(payload))
    out.put((sum(len(p) for p in payloads), t, time.perf_counter()))
    client.close()


def set_processes(port: int, manifest: Any, parts: int) -> float:
    """MB/s of ``parts`` processes SETting the payloads together (first start to last end)."""
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_set_part, args=(port, manifest, p, parts, ready, go, out)) for p in range(parts)]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.acquire()
    go.set()
    results = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    nbytes = sum(r[0] for r in results)
    return nbytes / 1e6 / (max(r[2] for r in results) - min(r[1] for r in results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=300, help="source size in MB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shard-size", default="4MiB")
    parser.add_argument("--processes", default="1,2,4", help="comma-separated process counts")
    parser.add_argument("--port", type=int, default=34600)
    args = parser.parse_args()
    counts = [int(n) for n in args.processes.split(",")]

    with tempfile.TemporaryDirectory(prefix="prefetch-scaling-") as tmp:
        root = Path(tmp) / "src"
        root.mkdir()
        rows = make_source(root, args.mb)
        print(f"source: {rows} rows in 4 parquet files")
        cluster = start_cluster(Path(tmp) / "cluster", args.port)
        try:
            cache = connect(cluster.url)
            # The first parallel call starts the forkserver (it imports the prefetcher once, for every
            # later part): a one-off cost, timed here and kept out of the rounds.
            t = time.perf_counter()
            first = parallel_prefetch(root, dataset="scale-0", processes=max(counts), cache=cluster.url,
                                      shard_size=args.shard_size)
            print(f"first parallel call, forkserver start included: {time.perf_counter() - t:.2f}s")
            manifest = first.manifest
            assert manifest is not None
            payloads = [encode_table(read_source_shard(manifest, i)) for i in range(manifest.num_shards)]
            total_mb = sum(len(p) for p in payloads) / 1e6
            client = redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
            results: dict[str, list[float]] = {}

            def record(name: str, mbps: float) -> None:
                results.setdefault(name, []).append(mbps)

            for r in range(args.rounds):
                t = time.perf_counter()
                for i, payload in enumerate(payloads):
                    client.set(f"bench:set:{i}", memoryview(payload))
                record("set", total_mb / (time.perf_counter() - t))
                client.delete(*[f"bench:set:{i}" for i in range(len(payloads))])
                for n in counts:
                    if n > 1:
                        record(f"set x{n}", set_processes(cluster.ports[0], manifest, n))
                        for part in range(n):
                            for k in range(len(part_range(manifest.num_shards, part, n))):
                                client.delete(f"bench:setp:{part}:{k}")

                name = f"single-{r}"
                t = time.perf_counter()
                report = run_prefetch(root, dataset=name, cache=cache, shard_size=args.shard_size)
                record("single", report.bytes / 1e6 / (time.perf_counter() - t))
                assert report.written == report.shards
                cache.delete(name, force=True)
                for n in counts:
                    name = f"p{n}-{r}"
                    t = time.perf_counter()
                    report = parallel_prefetch(root, dataset=name, processes=n, cache=cluster.url,
                                               shard_size=args.shard_size)
                    record(f"p{n}", report.bytes / 1e6 / (time.perf_counter() - t))
                    assert report.state == "complete"
                    assert report.written == report.shards
                    cache.delete(name, force=True)
                print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in results.items()) + " MB/s",
                      flush=True)

            med = {k: statistics.median(v) for k, v in results.items()}
            print(f"\n{manifest.num_shards} shards, {total_mb:.0f} MB of payload, shard_size {args.shard_size}, "
                  f"{args.rounds} rounds, medians (MB/s):")
            for k, v in med.items():
                print(f"  {k:8s} {v:8.0f}")
            print("ratios:")
            for n in counts:
                ceiling = med["set"] if n == 1 else med[f"set x{n}"]
                print(f"  p{n} / set = {med[f'p{n}'] / med['set']:.2f}x;  p{n} / set x{n} = "
                      f"{med[f'p{n}'] / ceiling:.2f}x;  p{n} / p1 = {med[f'p{n}'] / med['p1']:.2f}x;  "
                      f"p{n} / single = {med[f'p{n}'] / med['single']:.2f}x")
            client.close()
            cache.close()
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
