"""The ``shardcache`` command line. The only place that configures logging.

Every data command takes ``--redis URL`` (default ``$SHARDCACHE_REDIS_URL``, else the
cluster that ``shardcache up`` recorded in ``--dir``); the order of precedence is
:mod:`shardcache.discovery.address`'s. Expected errors print one line on stderr and exit
non-zero, without a traceback.

One module per group of commands: :mod:`.cluster` (up, down, status), :mod:`.datasets`
(ls, info, rm), :mod:`.prefetch`, :mod:`.bench` (demo, bench), :mod:`.top` (top, exporter);
:mod:`.options` holds the shared cache options and the error handling.
"""

from __future__ import annotations

import logging

import click

from .. import __version__
from .bench import bench, demo
from .cluster import down, status, up
from .datasets import info, ls_, rm
from .options import ErrorGroup
from .prefetch import prefetch
from .top import exporter, top

__all__ = ["cli", "main"]


@click.group(cls=ErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shardcache")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """shardcache: prefetch datasets into Redis Cluster and stream them into PyTorch."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for _command in (up, down, status, ls_, info, rm, prefetch, demo, bench, top, exporter):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``shardcache`` command."""
    cli.main(args=argv, prog_name="shardcache")
