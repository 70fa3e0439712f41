"""The scaling run: dataset x1, x2, x4 (at the configured shard size) and shard size 1, 4, 8 MiB (at x1).

The larger datasets are hard links to the base files under new names, so they cost
no disk and no generation time, yet the prefetcher sees distinct files. For each
point: prefetch time, then ``CachedDataLoader`` runs (largest batch size, each
``workers`` value) in fresh processes: the time of the warm epoch (persistent workers,
start-up already paid in the first) and peak memory. Time should grow linearly with
data, and loader memory should not grow at all.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from typing import Any

from shardcache.cache import connect

from .dataset import generate, replicate
from .rounds import run_child
from .systems import Context

__all__ = ["render_scaling", "run_scaling"]


def run_scaling(ctx: Context, *, say: Callable[[str], None]) -> dict[str, Any]:
    cfg = ctx.config
    base = generate(workdir=cfg.workdir / "data", rows=max(2, cfg.scaling_base // ctx.dataset.sample_bytes),
                    image_shape=ctx.dataset.image_shape, seed=cfg.seed + 1)
    points = [(factor, cfg.shard_size) for factor in (1, 2, 4)]
    points += [(1, s) for s in cfg.scaling_shard_sizes if s != cfg.shard_size]
    batch = cfg.largest_batch
    results = []
    for factor, shard_size in points:
        source = replicate(base, factor=factor, out=cfg.workdir / "scaling" / f"x{factor}")
        name = f"bench-scaling-x{factor}-{shard_size >> 10}k"
        say(f"scaling: x{factor} ({base.tensor_bytes * factor / 1e6:,.0f} MB), shards of {shard_size >> 10} KiB")
        pre = run_child(sys.executable, "comparison.child", {
            "system": "prefetch", "source": str(source), "url": ctx.url, "dataset": name,
            "shard_size": shard_size, "keep": True}, timeout=cfg.child_timeout)
        point: dict[str, Any] = {
            "factor": factor, "shard_size": shard_size, "rows": base.rows * factor,
            "bytes": base.tensor_bytes * factor, "prefetch_s": pre["seconds"],
            "prefetch_mb_per_s": pre["nbytes"] / pre["seconds"] / 1e6, "loader": {},
        }
        try:
            for w in cfg.workers:
                runs = []
                for r in range(min(cfg.warmup, 1) + cfg.rounds):
                    result = run_child(sys.executable, "comparison.child", {
                        "system": "cached", "url": ctx.url, "dataset": name, "workers": w, "batch_size": batch,
                    }, timeout=cfg.child_timeout)
                    if r >= min(cfg.warmup, 1):
                        runs.append(result)
                seconds = statistics.median(r["seconds"] for r in runs)
                point["loader"][str(w)] = {
                    "batch_size": batch,
                    "seconds": seconds,  # the warm epoch: no start-up, which would not scale with the data
                    "mb_per_s": statistics.median(r["nbytes"] / r["seconds"] for r in runs) / 1e6,
                    "peak_rss_mb": statistics.median(r["peak_rss"] for r in runs) / 1e6,
                    # Exact, from the kernel, but the main process only (RSS, not PSS).
                    "main_vmhwm_mb": statistics.median(r.get("peak_rss_main") or 0 for r in runs) / 1e6,
                }
                say(f"  workers={w}: {seconds:.2f}s, peak RSS {point['loader'][str(w)]['peak_rss_mb']:,.0f} MB")
        finally:
            with connect(ctx.url) as cache:
                cache.delete(name, force=True)
        results.append(point)
    return {"base_bytes": base.tensor_bytes, "points": results, **_summary(results, cfg.shard_size)}


def _summary(points: list[dict[str, Any]], shard_size: int) -> dict[str, Any]:
    by = {(p["factor"], p["shard_size"]): p for p in points}
    one, four = by.get((1, shard_size)), by.get((4, shard_size))
    if one is None or four is None:
        return {}
    growth = {w: four["loader"][w]["peak_rss_mb"] / one["loader"][w]["peak_rss_mb"] for w in one["loader"]}
    time_ratio = {w: four["loader"][w]["seconds"] / one["loader"][w]["seconds"] for w in one["loader"]}
    return {
        "rss_growth_x4": max(growth.values()),
        "rss_growth_x4_by_workers": growth,
        "time_ratio_x4_by_workers": time_ratio,  # 4.0 is exactly linear
        "prefetch_time_ratio_x4": four["prefetch_s"] / one["prefetch_s"],
    }


def render_scaling(scaling: dict[str, Any]) -> str:
    """The scaling table as text."""
    lines = ["data  shard KiB      MB  prefetch s  " + "  ".join(
        f"w={w} s  w={w} MB/s  w={w} RSS MB" for w in scaling["points"][0]["loader"])]
    for p in scaling["points"]:
        cells = [f"x{p['factor']:<3}", f"{p['shard_size'] >> 10:>9}", f"{p['bytes'] / 1e6:>7,.0f}",
                 f"{p['prefetch_s']:>10.2f}"]
        for loader in p["loader"].values():
            cells += [f"{loader['seconds']:>6.2f}", f"{loader['mb_per_s']:>9,.0f}", f"{loader['peak_rss_mb']:>11,.0f}"]
        lines.append("  ".join(cells))
    if "time_ratio_x4_by_workers" in scaling:
        ratios = ", ".join(f"w={w}: {v:.2f}" for w, v in scaling["time_ratio_x4_by_workers"].items())
        growth = ", ".join(f"w={w}: {v:.2f}" for w, v in scaling["rss_growth_x4_by_workers"].items())
        lines.append(f"loader time x4/x1 (linear = 4.00): {ratios}; "
                     f"prefetch x4/x1: {scaling['prefetch_time_ratio_x4']:.2f}")
        lines.append(f"loader peak RSS x4/x1 (flat = 1.00): {growth}")
    return "\n".join(lines)
