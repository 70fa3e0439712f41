"""Read throughput of ShardCache.get_shards against a bare redis-py GET loop, in one run.

    python benchmarks/store_throughput.py                    # 3 primaries, no replicas
    python benchmarks/store_throughput.py --replicas 1 --rounds 9

It starts its own LocalCluster (ports from --port, default 45000), writes --mib1 shards of
1 MiB and --mib4 shards of 4 MiB through ``put_shard``, then runs the readers in alternating
rounds over the same keys:

* ``get_shards``: the cache's read path (default ``read_concurrency``, checksums verified);
* ``bare xN``: a RedisCluster client, N threads (N = read_concurrency), one GET at a time each;
* ``bare x1``: the same client, one thread, one GET at a time.

It prints the median MB/s (MB = 10^6 bytes) and client CPU time per MiB of each reader, and
the ratio of ``get_shards`` to each baseline. The goal is at least 0.9x the baseline with the
same number of threads. ``get_shards`` also verifies every xxh3-64 checksum; the bare loops
do not.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
from redis.cluster import ClusterNode, RedisCluster

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from shardcache.cache import Manifest, ShardCache, ShardInfo, connect, encode_table  # noqa: E402
from shardcache.cache.urls import parse_url  # noqa: E402
from shardcache.localcluster import LocalCluster, port_free  # noqa: E402

MIB = 1 << 20


def free_block(n: int, lo: int = 40000, hi: int = 55000) -> int:
    """First of ``n`` consecutive free ports whose bus ports (+10000) are free too."""
    for base in random.sample(range(lo, hi - n, n), k=(hi - lo) // n - 1):
        wanted = [*range(base, base + n), *range(base + 10000, base + 10000 + n)]
        if all(port_free(p) for p in wanted):
            return base
    raise SystemExit(f"no {n} free consecutive ports in {lo}-{hi}; pass --port")


def shard_payload(size: int) -> pa.Buffer:
    """An Arrow IPC payload of about ``size`` bytes: 16 rows of random binary."""
    rows = 16
    return encode_table(pa.table({"blob": pa.array([os.urandom(size // rows) for _ in range(rows)], pa.binary())}))


def write(cache: ShardCache, name: str, count: int, size: int) -> Manifest:
    payload_schema = pa.ipc.open_stream(shard_payload(1024)).schema
    shards = tuple(ShardInfo(index=i, key=cache.keys.shard(name, "v1", i), rows=16) for i in range(count))
    manifest = cache.begin(Manifest(name=name, version="v1", schema=payload_schema, shards=shards))
    for i in range(count):
        manifest = manifest.with_shard(cache.put_shard(manifest, i, shard_payload(size)))
    return cache.commit(manifest)


def read_cache(cache: ShardCache, manifest: Manifest) -> int:
    return sum(buf.size for _, buf in cache.get_shards(manifest, range(manifest.num_shards)))


def read_bare(client: RedisCluster, keys: Sequence[str], threads: int) -> int:
    if threads == 1:
        return sum(len(client.get(k)) for k in keys)
    with ThreadPoolExecutor(threads) as pool:  # one GET at a time per thread
        return sum(pool.map(lambda k: len(client.get(k)), keys))


Results = dict[str, list[tuple[float, float]]]


def rounds(readers: dict[str, Callable[[], int]], count: int) -> Results:
    """(MB/s, client CPU µs per MiB) of every reader, ``count`` rounds, the readers alternating.

    The CPU figure (all threads of this process) is the steadier one on a shared machine.
    """
    for read in readers.values():  # warm-up: connections opened, pages touched
        read()
    results: Results = {name: [] for name in readers}
    for r in range(count):
        order = list(readers.items())
        if r % 2:
            order.reverse()
        for name, read in order:
            began, cpu = time.perf_counter(), time.process_time()
            nbytes = read()
            wall, cpu = time.perf_counter() - began, time.process_time() - cpu
            results[name].append((nbytes / wall / 1e6, cpu / (nbytes / MIB) * 1e6))
    return results


def report(title: str, results: Results) -> None:
    medians = {name: statistics.median(mb for mb, _ in v) for name, v in results.items()}
    print(f"\n{title}")
    for name, value in medians.items():
        speeds = [mb for mb, _ in results[name]]
        cpu = statistics.median(c for _, c in results[name])
        print(f"  {name:<12} {value:8.0f} MB/s   (min-max {min(speeds):6.0f} - {max(speeds):6.0f}, "
              f"{len(speeds)} rounds)   client CPU {cpu:5.0f} us/MiB")
    ours = medians["get_shards"]
    for name, value in medians.items():
        if name != "get_shards":
            print(f"  get_shards / {name:<8} = {ours / value:.2f}x")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=None,
                        help="first port (<= 55530; bus ports are +10000); default: a free block in 40000-55000")
    parser.add_argument("--replicas", type=int, default=0, choices=(0, 1))
    parser.add_argument("--mib1", type=int, default=192, help="number of 1 MiB shards")
    parser.add_argument("--mib4", type=int, default=48, help="number of 4 MiB shards")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--read-concurrency", type=int, default=None, help="default: ShardCache's default")
    args = parser.parse_args(argv)
    if args.rounds < 5:
        parser.error("--rounds must be >= 5: the figures are medians")

    nodes = 3 * (1 + args.replicas)
    port = args.port if args.port is not None else free_block(nodes)
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp, \
            LocalCluster(masters=3, replicas=args.replicas, port=port, dir=tmp, maxmemory="2gb") as cluster:
        options = {} if args.read_concurrency is None else {"read_concurrency": args.read_concurrency}
        cache = connect(cluster.url, env={}, **options)
        threads = cache.read_concurrency
        seeds = [ClusterNode(h, p) for h, p in parse_url(cluster.url).seeds]
        bare = RedisCluster(startup_nodes=seeds, max_connections=64)
        print(f"cluster: 3 primaries, {args.replicas} replica(s) each, {cluster.url}")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, read_concurrency={threads}")
        for count, size in ((args.mib1, MIB), (args.mib4, 4 * MIB)):
            manifest = write(cache, f"bench-{size // MIB}mib", count, size)
            keys = [s.key for s in manifest.shards]
            assert all(s.chunks == 1 for s in manifest.shards)
            results = rounds(
                {
                    "get_shards": lambda m=manifest: read_cache(cache, m),
                    f"bare x{threads}": lambda k=keys: read_bare(bare, k, threads),
                    "bare x1": lambda k=keys: read_bare(bare, k, 1),
                },
                args.rounds,
            )
            report(f"{count} shards of {manifest.nbytes / count / MIB:.2f} MiB "
                   f"({manifest.nbytes / 1e6:.0f} MB per round)", results)
            cache.delete(manifest.name, force=True)
        bare.close()
        cache.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
