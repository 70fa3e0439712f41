"""``shardcache prefetch``: load a source into the cache, with a progress bar on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from ..cache.keys import check_dataset_name
from ..prefetcher.parts import MAX_PARTS
from ..units import parse_size
from .options import echo_json, open_cache, redis_options

__all__ = ["prefetch"]


@click.command()
@click.argument("source")
@click.option("--dataset", required=True, help="Name of the dataset in the cache.")
@redis_options
@click.option("--format", "fmt", default=None,
              type=click.Choice(["parquet", "arrow", "feather", "ipc", "csv", "tsv", "jsonl", "json", "files"]),
              help="Source format (default: from the file extensions; tsv is tab-separated csv; files is one "
                   "{path, bytes} row per file, path relative to SOURCE).")
@click.option("--shard-size", default="4MiB", show_default=True, metavar="SIZE",
              help="The most Arrow bytes per shard, e.g. 512KiB, 4MiB, 64MiB; shards stay a little under it.")
@click.option("--compression", default="none", show_default=True, type=click.Choice(["none", "lz4", "zstd"]),
              help="Arrow IPC buffer compression of the shards: less memory in Redis, more CPU to read.")
@click.option("--columns", default=None, help="Comma-separated columns to keep (default: all).")
@click.option("--workers", default=4, show_default=True, type=click.IntRange(min=1), metavar="N",
              help="Writer threads sending shards to Redis.")
@click.option("--allow-partial", is_flag=True, help="Cache what fits; the loader reads the rest from the source.")
@click.option("--order", default="source", show_default=True, type=click.Choice(["source", "epoch0"]),
              help="Load order: source order, or epoch0 (the shards a loader with --seed and --world-size "
                   "reads first are cached first, so training can start before the prefetch ends).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="With --order epoch0.")
@click.option("--world-size", default=1, show_default=True, type=click.IntRange(min=1),
              help="With --order epoch0: the number of training ranks.")
@click.option("--label", is_flag=True, help="With --format files: add a label column from the parent folder.")
@click.option("--wait", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to wait for another prefetcher of the same dataset.")
@click.option("--endpoint-override", default=None, help="S3-compatible endpoint, e.g. http://127.0.0.1:9000.")
@click.option("--processes", default=None, type=click.IntRange(min=1, max=MAX_PARTS), metavar="N",
              help="Load in N worker processes, one part each (plan, the parts, then one commit).")
@click.option("--parts", default=None, type=click.IntRange(min=1, max=MAX_PARTS), metavar="N",
              help="With --plan-only, --part or --commit: the number of parts the version loads in.")
@click.option("--part", default=None, type=click.IntRange(min=0), metavar="I",
              help="Load only part I (0-based) of a version planned in --parts N parts; no commit.")
@click.option("--plan-only", is_flag=True, help="Plan the version in --parts N parts (begin it 'loading') and stop.")
@click.option("--commit", "commit_only", is_flag=True,
              help="Commit a version loaded in parts, once every part is in.")
@click.option("--version", "pinned", default=None, metavar="V",
              help="The planned version id: a part or commit refuses if the source now lists as another.")
@click.option("--json", "as_json", is_flag=True, help="Print the final report as JSON.")
def prefetch(
    source: str, dataset: str, redis_url: str | None, state_dir: str, k8s_service: str | None,
    k8s_secret: str | None, fmt: str | None, shard_size: str, compression: str | None, columns: str | None,
    workers: int, allow_partial: bool, order: str, seed: int, world_size: int, label: bool, wait: float,
    endpoint_override: str | None, processes: int | None, parts: int | None, part: int | None, plan_only: bool,
    commit_only: bool, pinned: str | None, as_json: bool,
) -> None:
    """Preload SOURCE (a path, glob, s3://, gs://, hdfs:// URI) into the cache as Arrow shards.

    A large source loads in parts: --processes N here, or --plan-only --parts N, then
    --part I --parts N on each machine, then --commit.
    """
    from ..prefetcher import commit_prefetch, parallel_prefetch, plan_prefetch, run_prefetch

    # Checked before connecting: a typo should not wait out an unreachable cache's deadline.
    check_dataset_name(dataset)
    parse_size(shard_size, name="shard_size")
    mode = _mode(processes=processes, parts=parts, part=part, plan_only=plan_only, commit_only=commit_only,
                 allow_partial=allow_partial)
    options: dict[str, Any] = {}
    if label:
        options["label"] = True
    if endpoint_override:
        options["endpoint_override"] = endpoint_override
    shaping: dict[str, Any] = {
        "format": fmt, "shard_size": shard_size, "compression": None if compression == "none" else compression,
        "columns": None if columns is None else [c.strip() for c in columns.split(",") if c.strip()],
        "wait": wait, **options,
    }
    loading: dict[str, Any] = {"workers": workers, "order": order, "seed": seed, "world_size": world_size}
    with open_cache(redis_url, state_dir, k8s_service, k8s_secret) as cache, _progress_bar(as_json) as progress:
        if mode == "plan":
            plan = plan_prefetch(source, dataset=dataset, cache=cache, parts=parts or 1, **shaping)
            if as_json:
                echo_json(plan.to_dict())
            else:
                click.echo(f"dataset {dataset!r} version {plan.version}: {plan.state}, {plan.shards} shards in "
                           f"{plan.parts} parts, {plan.missing} to load; run --part I --parts {plan.parts} "
                           f"--version {plan.version} for I in 0..{plan.parts - 1}, then --commit")
            return
        if mode == "commit":
            report = commit_prefetch(source, dataset=dataset, cache=cache, version=pinned, **shaping)
        elif mode == "processes":
            report = parallel_prefetch(source, dataset=dataset, cache=cache, processes=processes or 1,
                                       progress=progress, **shaping, **loading)
        else:
            report = run_prefetch(
                source, dataset=dataset, cache=cache, allow_partial=allow_partial, progress=progress,
                part=part, parts=parts or 1, version=pinned, **shaping, **loading,
            )
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(report.summary())
    if report.failed:  # shards left uncached by --allow-partial are not failures; unreadable ones are
        sys.exit(1)


def _mode(*, processes: int | None, parts: int | None, part: int | None, plan_only: bool, commit_only: bool,
          allow_partial: bool) -> str:
    """Which of run, processes, plan, part or commit the options ask for (UsageError if they clash)."""
    chosen = [name for name, on in (("--processes", processes is not None), ("--part", part is not None),
                                    ("--plan-only", plan_only), ("--commit", commit_only)) if on]
    if len(chosen) > 1:
        raise click.UsageError(f"{' and '.join(chosen)} do not go together: pass one of them")
    if allow_partial and chosen:  # --commit too: a commit never leaves shards out, the flag would do nothing
        raise click.UsageError(f"--allow-partial does not apply to {chosen[0]}: a parallel prefetch caches the "
                               "whole version; run one prefetch with --allow-partial instead")
    if (plan_only or part is not None) and parts is None:
        raise click.UsageError(f"{chosen[0]} needs --parts N (the number of parts of the version)")
    if parts is not None and not (plan_only or part is not None or commit_only):
        raise click.UsageError("--parts goes with --plan-only, --part or --commit; to run every part here, "
                               "pass --processes N")
    if part is not None and parts is not None and part >= parts:
        raise click.UsageError(f"--part {part} is out of range for --parts {parts} (0 to {parts - 1})")
    return {"--processes": "processes", "--part": "part", "--plan-only": "plan", "--commit": "commit"}.get(
        chosen[0] if chosen else "", "run")


class _progress_bar:  # noqa: N801 -- used as a context manager like a function
    """A tqdm bar of bytes and shards on a TTY; nothing otherwise."""

    def __init__(self, quiet: bool) -> None:
        self._bar: Any = None
        self._enabled = not quiet and sys.stderr.isatty()

    def __enter__(self) -> Callable[[Any], None] | None:
        if not self._enabled:
            return None
        from tqdm import tqdm

        self._bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc="prefetch", file=sys.stderr)

        def update(p: Any) -> None:
            bar = self._bar
            bar.total = max(p.bytes_total, p.bytes_done)
            bar.n = p.bytes_done
            bar.set_postfix_str(f"{p.shards_done}/{p.shards_total} shards, {p.skipped} skipped", refresh=False)
            bar.refresh()

        return update

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()

