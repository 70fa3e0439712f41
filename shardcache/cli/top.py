"""``shardcache top`` (a live terminal view of the cluster) and ``shardcache exporter`` (its Prometheus side)."""

from __future__ import annotations

import threading
import time
import unicodedata
from collections.abc import Sequence

import click

from ..cache import ShardCache
from ..errors import ShardCacheError
from ..metrics import ClusterView, Snapshots, serve_cluster
from ..units import format_bytes
from .options import open_cache, redis_options

__all__ = ["exporter", "render", "top"]


@click.command()
@redis_options
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.2), help="Seconds per refresh.")
@click.option("--once", is_flag=True, help="Print one frame and exit.")
def top(
    redis_url: str | None, state_dir: str, k8s_service: str | None, k8s_secret: str | None, interval: float,
    once: bool,
) -> None:
    """A live view of the cache: memory per node, datasets, versions, leases, and readers with their hit
    ratio and data-wait fraction (Ctrl-C to quit)."""
    with open_cache(redis_url, state_dir, k8s_service, k8s_secret) as cache:
        snapshots = Snapshots(cache)
        if once:
            click.echo(render(snapshots.take(), cache=cache))
            return
        try:
            while True:
                try:
                    frame = render(snapshots.take(), cache=cache)
                except ShardCacheError as exc:  # a failover: keep watching
                    frame = f"shardcache top: {cache.url.redacted()}  {_now()}\n\n{' '.join(str(exc).split())}"
                click.clear()
                click.echo(frame)
                time.sleep(interval)
        except KeyboardInterrupt:
            pass


@click.command()
@redis_options
@click.option("--port", default=9410, show_default=True, type=click.IntRange(0, 65535), help="Port of /metrics.")
@click.option("--addr", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds a scrape waits for the cluster before reporting shardcache_up 0.")
def exporter(
    redis_url: str | None, state_dir: str, k8s_service: str | None, k8s_secret: str | None, port: int, addr: str,
    timeout: float,
) -> None:
    """Serve the cache's dataset-level metrics for Prometheus: memory per node, datasets, leases, readers
    (run it as one Deployment next to the cluster; loaders and prefetches export their own)."""
    with open_cache(redis_url, state_dir, k8s_service, k8s_secret) as cache:
        server = serve_cluster(cache, port=port, addr=addr, timeout=timeout)
        click.echo(f"serving shardcache metrics of {cache.url.redacted()} on http://{addr}:{server.server_port}/metrics",
                   err=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()


def render(view: ClusterView, *, cache: ShardCache) -> str:
    """One frame of ``top``."""
    lines = [f"shardcache top: {cache.url.redacted()}  {_now()}", ""]
    nodes = [("NODE", "USED", "MAX", "USED%", "POLICY")]
    for n in view.nodes:
        share = f"{100 * n.used / n.maxmemory:.1f}%" if n.maxmemory else "-"
        nodes.append((n.node, format_bytes(n.used), format_bytes(n.maxmemory) if n.maxmemory else "none", share,
                      n.policy))
    lines += _table(nodes, right={1, 2, 3})
    used, limit = sum(n.used for n in view.nodes), sum(n.maxmemory for n in view.nodes)
    lines.append(f"total {format_bytes(used)}" + (f" of {format_bytes(limit)}" if limit else ""))
    lines.append("")
    if not view.datasets:
        lines.append("no datasets")
        return "\n".join(lines)
    datasets = [("DATASET", "VERSION", "STATE", "SHARDS", "ROWS", "SIZE", "VERSIONS", "LEASES")]
    errors = []
    for d in view.datasets:
        if d.error is not None:
            errors.append(f"{_shown(d.name)}: {d.error}")
            continue
        datasets.append((_shown(d.name), d.version or "-", d.state or "-", f"{d.cached}/{d.shards}", str(d.rows),
                         format_bytes(d.nbytes), str(len(d.versions)), str(len(d.readers))))
    lines += _table(datasets, right={3, 4, 5, 6, 7}) + errors
    readers = [("READER", "DATASET", "VERSION", "RANK", "EPOCH", "HIT%", "WAIT%", "SAMPLES/S", "LEASE")]
    for d in view.datasets:
        for r in d.readers:
            beat = r.beat
            rank = f"{beat['rank']}/{beat.get('world_size', '?')}" if "rank" in beat else "-"
            readers.append((
                r.holder, _shown(d.name), r.version, rank, str(beat.get("epoch", "-")),
                _percent(beat.get("hit_ratio")), _percent(beat.get("wait_fraction")),
                _rate(beat.get("samples_per_second")),
                f"{max(r.expires_in, 0):.0f}s",
            ))
    lines.append("")
    lines += _table(readers, right={3, 4, 5, 6, 7, 8}) if len(readers) > 1 else ["no readers"]
    return "\n".join(lines)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def _percent(value: object) -> str:
    return f"{100 * float(value):.1f}" if isinstance(value, (int, float)) else "-"


def _shown(name: str) -> str:
    return name if name.isprintable() and not any(c.isspace() for c in name) else repr(name)


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _table(rows: Sequence[Sequence[str]], *, right: set[int]) -> list[str]:
    widths = [max(_width(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = []
        for i, (cell, width) in enumerate(zip(row, widths, strict=True)):
            pad = " " * (width - _width(cell))
            cells.append(pad + cell if i in right else cell + pad)
        out.append("  ".join(cells).rstrip())
    return out


def _rate(value: object) -> str:
    """A heartbeat's samples/s; anything but a number (a heartbeat is data from Redis) shows as "-"."""
    return f"{value:.0f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"
