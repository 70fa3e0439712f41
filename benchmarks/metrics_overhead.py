"""What exporting metrics costs a loader: epochs with metrics off against epochs served, scraped and
heart-beating hard, paired in one process, and the latency of a scrape and of a lease renewal.

    python benchmarks/metrics_overhead.py                       # 16,000 images of 12 KiB, 10 paired epochs
    python benchmarks/metrics_overhead.py --epochs 12 --workers 2

It starts its own LocalCluster (3 primaries, no replicas), prefetches a synthetic dataset (``image``:
fixed_size_binary(``--image-bytes``), ``label``), and runs two loaders one epoch each in turn (the order
alternating), after a warm-up epoch each:

* ``off``: ``CachedDataLoader(metrics=False, lease_ttl=60)``: nothing served, no renewal within an epoch;
* ``on``: the same loader exported on a port that a thread scrapes every 0.25 s (loader metrics and the
  cluster exporter), with ``lease_ttl=0.3``: a heartbeat written every 0.1 s, 200 times the default rate.

It prints each one's median samples/s, the median of the paired ratios on/off, and the median latency of
a ``/metrics`` scrape of the loader, of the cluster exporter, and of a lease renewal with and without a
heartbeat (the EVAL alone).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def free_block(n: int, lo: int = 40000, hi: int = 55000) -> int:
    from shardcache.localcluster import port_free

    for base in random.sample(range(lo, hi - n, n), k=(hi - lo) // n - 1):
        if all(port_free(p) for p in [*range(base, base + n), *range(base + 10000, base + 10000 + n)]):
            return base
    raise SystemExit(f"no {n} free consecutive ports in {lo}-{hi}")


def get(port: int) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        response.read()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=16000)
    parser.add_argument("--image-bytes", type=int, default=12 * 1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shardcache.cache import connect
    from shardcache.dataloader import CachedDataLoader
    from shardcache.localcluster import LocalCluster
    from shardcache.metrics import serve, serve_cluster
    from shardcache.prefetcher import prefetch

    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(masters=3, replicas=0, port=free_block(3), dir=Path(tmp) / "cluster", maxmemory="1gb") as cl:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (args.samples, args.image_bytes), dtype=np.uint8)
        table = pa.table({
            "image": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(args.image_bytes), args.samples, [None, pa.py_buffer(images.tobytes())]),
            "label": pa.array(np.arange(args.samples) % 10),
        })
        pq.write_table(table, Path(tmp) / "data.parquet")
        with connect(cl.url) as cache:
            prefetch(str(Path(tmp) / "data.parquet"), dataset="bench-metrics", cache=cache, shard_size="2MiB")
            common = {"cache": cache, "batch_size": args.batch_size, "num_workers": args.workers,
                      "persistent_workers": args.workers > 0, "shuffle": True}
            loaders = {
                "off": CachedDataLoader("bench-metrics", metrics=False, lease_ttl=60, **common),
                "on": CachedDataLoader("bench-metrics", metrics=0, lease_ttl=0.3, **common),
            }
            port = serve(0)
            cluster_server = serve_cluster(cache, port=0)
            scrapes: dict[str, list[float]] = {"loader": [], "cluster": []}
            stop, active = threading.Event(), threading.Event()

            def scraper() -> None:  # scrapes during the "on" loader's epochs only
                while not stop.wait(0.25):
                    if not active.is_set():
                        continue
                    scrapes["loader"].append(get(port))
                    scrapes["cluster"].append(get(cluster_server.server_port))

            rates: dict[str, list[float]] = {"off": [], "on": []}
            for loader in loaders.values():  # warm-up
                for _ in loader:
                    pass
            thread = threading.Thread(target=scraper, daemon=True)
            for epoch in range(args.epochs):
                order = ["off", "on"] if epoch % 2 == 0 else ["on", "off"]
                for name in order:
                    loader = loaders[name]
                    loader.set_epoch(epoch + 1)
                    if not thread.is_alive():
                        thread.start()
                    if name == "on":
                        active.set()
                    started = time.perf_counter()
                    samples = sum(len(batch["label"]) for batch in loader)
                    rates[name].append(samples / (time.perf_counter() - started))
                    active.clear()
            stop.set()
            thread.join()
            cluster_server.shutdown()

            lease = cache.lease("bench-metrics", "*", ttl=60)
            plain = cache.lease("bench-metrics", "*", ttl=60)
            plain.readers_key = None
            lease.heartbeat(loaders["on"]._observer.heartbeat)
            renew = {"with heartbeat": lease, "without": plain}
            renewals: dict[str, list[float]] = {k: [] for k in renew}
            for _ in range(200):
                for what, held in renew.items():
                    started = time.perf_counter()
                    held._put()
                    renewals[what].append(time.perf_counter() - started)
            lease.release()
            plain.release()
            cache.delete("bench-metrics", force=True)

    ratios = [on / off for on, off in zip(rates["on"], rates["off"], strict=True)]
    print(f"samples/s median: off {statistics.median(rates['off']):.0f}, on {statistics.median(rates['on']):.0f}; "
          f"paired on/off median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}, "
          f"{len(ratios)} pairs, workers={args.workers})")
    for what, times in scrapes.items():
        print(f"scrape of the {what} /metrics: median {1e3 * statistics.median(times):.2f} ms ({len(times)} scrapes)")
    for what, times in renewals.items():
        print(f"lease renewal {what}: median {1e3 * statistics.median(times):.3f} ms")


if __name__ == "__main__":
    main()
