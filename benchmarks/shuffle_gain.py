"""Shuffled against unshuffled CachedDataLoader, paired epoch by epoch in one process.

    python benchmarks/shuffle_gain.py                         # 2,400 samples of 3x224x224, batch 64
    python benchmarks/shuffle_gain.py --workers 2             # DataLoader workers (persistent)
    python benchmarks/shuffle_gain.py --gather                # in-place receiving off in both

Two loaders over the same cached dataset run one epoch each in turn (the order alternating), after
one warm-up epoch each: ``shuffled`` (``shuffle=True``, the default window) and ``unshuffled``.
It prints each one's median samples/s and the median of the paired per-epoch ratios
shuffled / unshuffled, which holds up better than absolute figures on a noisy machine (the goal of
issue 17 is >= 0.95). The dataset is compare.py's (``--workdir``, default bench-out/compare); the
cluster (3 primaries) is started afresh for this run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from comparison.config import REPO_ROOT  # noqa: E402
from comparison.dataset import generate  # noqa: E402
from comparison.services import preferred_server, redis_cluster  # noqa: E402


def _epoch(loader: Any) -> float:
    began, samples = time.perf_counter(), 0
    for batch in loader:
        samples += len(batch["label"])
    return samples / (time.perf_counter() - began)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2400, help="samples of 3x224x224 uint8 (default 2,400)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8, help="measured epochs of each loader (default 8)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of both loaders (default 0)")
    parser.add_argument("--gather", action="store_true", help="turn in-place receiving off in both loaders")
    parser.add_argument("--only", choices=["shuffled", "unshuffled"], help="run one loader only (for profiles)")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "bench-out" / "compare")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="The given (NumPy array|buffer) is not writable")

    from shardcache.dataloader import CachedDataLoader
    from shardcache.dataloader import inplace as inplace_module
    from shardcache.prefetcher import prefetch

    if args.gather:
        inplace_module.InPlace._into = lambda self, rows, uses: (None, [])  # type: ignore[method-assign]

    shape = (3, 224, 224)
    data = generate(workdir=args.workdir / "data", rows=args.samples, image_shape=shape, seed=0)
    with redis_cluster(workdir=args.workdir / "shuffle-cluster", maxmemory=3 * data.tensor_bytes + (64 << 20),
                       server_bin=preferred_server()) as cluster:  # fmt: skip
        prefetch(str(data.parquet_dir), dataset="shuffle-gain", cache=cluster.url, shard_size="4MiB")
        workers = {"num_workers": args.workers, "persistent_workers": args.workers > 0}
        names = [args.only] if args.only else ["shuffled", "unshuffled"]
        loaders = {
            name: CachedDataLoader("shuffle-gain", cache=cluster.url, batch_size=args.batch_size,
                                   shuffle=name == "shuffled", **workers)
            for name in names
        }  # fmt: skip
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        for epoch in range(args.epochs + 1):
            order = list(loaders) if epoch % 2 else list(reversed(loaders))
            for name in order:
                rate = _epoch(loaders[name])
                if epoch:  # the first epoch of each is a warm-up
                    rates[name].append(rate)

    print(f"{data.rows:,} samples of {'x'.join(map(str, shape))} uint8, batch {args.batch_size}, "
          f"{args.workers} workers, {args.epochs} epochs each after a warm-up"
          f"{', in-place receiving off' if args.gather else ''}")
    for name, values in rates.items():
        print(f"{name:10s} median {statistics.median(values):8,.0f} samples/s")
    if len(rates) == 2:
        paired = statistics.median(x / y for x, y in zip(rates["shuffled"], rates["unshuffled"], strict=True))
        print(f"shuffled / unshuffled: median of paired epoch ratios {paired:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
