"""What planning a mix costs: EpochPlan.build for one dataset against a mix of its rows in two streams.

    python benchmarks/mix_plan.py [--samples 1280000] [--shards 5000] [--repeat 5] [--epoch 50]

Prints the median seconds (repetitions round-robin) of one rank's plan (world size 8, batch 256,
shuffled) for: the dataset alone, the dataset with ``epoch_size`` (one stream, 1.5x its rows), and a
two-stream mix (weights 0.7 / 0.3, the second stream upsampled), and each ratio against the dataset
alone, measured in the same run. Then one stream with ``epoch_size`` = its rows - 1 (every epoch crosses
into a new pass, and every pass is split between two epochs: ``sampling.passes`` rule 2) and = rows / 2 + 1
(rule 3), at epoch ``--epoch`` and 100 times later: a pass costs the same at any epoch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from shardcache.dataloader.plan import EpochPlan
from shardcache.sampling import quotas


def seconds(epoch: int = 3, **plan: object) -> float:
    started = time.perf_counter()
    EpochPlan.build(seed=0, epoch=epoch, world_size=8, rank=3, batch_size=256, drop_last=False, **plan)  # type: ignore[arg-type]
    return time.perf_counter() - started


def split_passes(rows: list[int], epoch: int, repeat: int, alone: float) -> None:
    """One stream whose quota is its rows - 1 (every pass split) or its rows / 2 + 1, at ``epoch``."""
    total, shards = sum(rows), len(rows)
    for label, quota in (("rows - 1", total - 1), ("rows / 2 + 1", total // 2 + 1)):
        for at in (epoch, epoch * 100):
            took = statistics.median(seconds(at, rows=rows, mix=((shards, quota),)) for _ in range(repeat))
            print(f"epoch_size = {label:12} epoch {at:6}: {took * 1e3:8.1f} ms  {took / alone:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_280_000)
    parser.add_argument("--shards", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--epoch", type=int, default=50, help="the epoch of the chain's worst case")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = rng.multinomial(args.samples, np.full(args.shards, 1 / args.shards)).tolist()
    cut = args.shards * 3 // 4
    first, second = sum(rows[:cut]), sum(rows[cut:])
    mix = tuple(zip((cut, args.shards - cut), quotas(args.samples, [0.7, 0.3]), strict=True))
    variants = {"alone": {}, "epoch_size": {"mix": ((args.shards, args.samples * 3 // 2),)}, "mix": {"mix": mix}}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeat):  # round-robin, so that a noisy moment hits every variant alike
        for name, extra in variants.items():
            times[name].append(seconds(rows=rows, **extra))
    alone, sized, mixed = (statistics.median(times[name]) for name in variants)
    print(f"{args.samples:,} samples in {args.shards:,} shards (streams of {first:,} and {second:,} rows)")
    print(f"alone      {alone * 1e3:8.1f} ms")
    print(f"epoch_size {sized * 1e3:8.1f} ms  {sized / alone:.2f}x")
    print(f"mix 70/30  {mixed * 1e3:8.1f} ms  {mixed / alone:.2f}x")
    split_passes(rows, args.epoch, args.repeat, alone)


if __name__ == "__main__":
    main()
