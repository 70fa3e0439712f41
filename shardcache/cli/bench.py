"""``shardcache demo`` (the main job, end to end) and ``shardcache bench`` (the benchmark harness)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .options import echo_json, fail

__all__ = ["bench", "demo"]


@click.command()
@click.option("--workdir", default=None, type=click.Path(file_okay=False),
              help="Where the cluster and the dataset live (default: a temporary folder).")
@click.option("--samples", default=20_000, show_default=True, type=click.IntRange(min=16))
@click.option("--world-size", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--port", default=None, type=click.IntRange(1, 55535), help="First port of the demo cluster.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def demo(workdir: str | None, samples: int, world_size: int, epochs: int, port: int | None, as_json: bool) -> None:
    """Start a local cluster, prefetch a synthetic image dataset, train a small CNN with 2-process DDP."""
    from ..demo import run_demo

    kwargs: dict[str, Any] = {"samples": samples, "world_size": world_size, "epochs": epochs}
    if workdir is not None:
        kwargs["workdir"] = workdir
    if port is not None:
        kwargs["port"] = port
    result = run_demo(**kwargs)
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(result.summary())


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Compare shardcache with the alternatives in one run (benchmarks/compare.py; --help lists its options)."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "compare.py"
    if not script.exists():
        fail("the benchmark harness ships with the source tree: run it from a checkout of shardcache")
    import runpy

    sys.argv = [str(script), *args]
    namespace = runpy.run_path(str(script))
    sys.exit(namespace["main"](list(args)))

