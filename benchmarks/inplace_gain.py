"""What receiving shards straight into the batches (dataloader/inplace.py) gains, paired epoch by epoch.

    python benchmarks/inplace_gain.py                        # 1 GB of 3x224x224 images, batch 256, 12 epochs
    python benchmarks/inplace_gain.py --batch-size 64 --epochs 16
    python benchmarks/inplace_gain.py --workers 2            # DataLoader workers (persistent)

Unshuffled, three loaders run in one process over the same data, one epoch each in turn (the order
alternating), after one warm-up epoch each:

* ``inplace``: ``CachedDataLoader`` as shipped: each shard's image column received into the batches;
* ``gather``: the same loader with in-place receiving turned off: shards received into their own
  buffers, rows then copied into the batches (what the loader did before inplace.py);
* ``parquet``: the plain ``torch.utils.data.DataLoader`` over the same Parquet files that
  ``compare.py`` measures, with as many workers.

In-place receiving is turned off by replacing ``InPlace._into`` around the ``gather`` loader's
epochs; its persistent workers are forked during its warm-up epoch, with the replacement in place.

It prints each one's median samples/s and the medians of the paired per-epoch ratios, which hold up
better than absolute figures on a noisy machine. The dataset and the cluster are compare.py's
(``--workdir``, default bench-out/compare), the cluster started afresh for this run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from comparison.child import _parquet_dataset  # noqa: E402
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
    parser.add_argument("--size", type=int, default=10**9, help="dataset bytes (default 1 GB)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of every loader (default 0)")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "bench-out" / "compare")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="The given (NumPy array|buffer) is not writable")

    import torch.utils.data

    from shardcache.dataloader import CachedDataLoader
    from shardcache.dataloader import inplace as inplace_module
    from shardcache.prefetcher import prefetch

    shape = (3, 224, 224)
    data = generate(workdir=args.workdir / "data", rows=args.size // (3 * 224 * 224), image_shape=shape, seed=0)
    files = sorted(str(p) for p in data.parquet_dir.glob("*.parquet"))
    receive: Callable[..., Any] = inplace_module.InPlace._into

    def gathered(self: Any, rows: int, uses: Any) -> tuple[None, list[Any]]:
        return None, []  # never received in place: every shard is read into its own buffer, then gathered

    with redis_cluster(workdir=args.workdir / "inplace-cluster", maxmemory=3 * args.size,
                       server_bin=preferred_server()) as cluster:  # fmt: skip
        prefetch(str(data.parquet_dir), dataset="inplace-gain", cache=cluster.url, shard_size="4MiB")
        workers = {"num_workers": args.workers, "persistent_workers": args.workers > 0}
        loaders = {
            "inplace": CachedDataLoader("inplace-gain", cache=cluster.url, batch_size=args.batch_size, shuffle=False,
                                        **workers),
            "gather": CachedDataLoader("inplace-gain", cache=cluster.url, batch_size=args.batch_size, shuffle=False,
                                       **workers),
            "parquet": torch.utils.data.DataLoader(
                _parquet_dataset(files, args.batch_size, None, list(shape)), batch_size=None, **workers
            ),
        }  # fmt: skip
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        for epoch in range(args.epochs + 1):
            order = list(loaders) if epoch % 2 else list(reversed(loaders))
            for name in order:
                inplace_module.InPlace._into = gathered if name == "gather" else receive  # type: ignore[method-assign]
                rate = _epoch(loaders[name])
                if epoch:  # the first epoch of each is a warm-up
                    rates[name].append(rate)
        inplace_module.InPlace._into = receive  # type: ignore[method-assign]

    print(f"{data.rows:,} samples of {'x'.join(map(str, shape))} uint8, batch {args.batch_size}, "
          f"{args.workers} workers, unshuffled, {args.epochs} epochs each after a warm-up")  # fmt: skip
    for name, values in rates.items():
        print(f"{name:8s} median {statistics.median(values):8,.0f} samples/s")
    for a, b in (("inplace", "gather"), ("inplace", "parquet"), ("gather", "parquet")):
        paired = statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))
        print(f"{a} / {b}: median of paired epoch ratios {paired:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
