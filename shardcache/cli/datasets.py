"""``shardcache ls``, ``info`` and ``rm``: the datasets in the cache."""

from __future__ import annotations

import sys
import unicodedata
from typing import Any

import click

from ..errors import ConfigError, ShardCacheError
from ..units import format_bytes
from .options import echo_json, open_cache, redis_options

__all__ = ["info", "ls_", "rm"]


@click.command("ls")
@redis_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ls_(redis_url: str | None, state_dir: str, k8s_service: str | None, k8s_secret: str | None, as_json: bool) -> None:
    """List the datasets in the cache, with their newest version."""
    with open_cache(redis_url, state_dir, k8s_service, k8s_secret) as cache:
        rows: list[dict[str, Any]] = []
        for name in cache.datasets():
            try:
                m = cache.manifest(name)
                versions = cache.versions(name)
            except ShardCacheError as exc:  # one broken dataset: listed with its error, the others all the same
                rows.append({"dataset": name, "error": " ".join(str(exc).split())})
                continue
            rows.append({
                "dataset": name, "version": m.version, "state": m.state, "shards": m.num_shards,
                "cached": m.cached_shards, "rows": m.num_rows, "bytes": m.nbytes, "versions": len(versions),
            })
    if as_json:
        echo_json(rows)
    elif not rows:
        click.echo("no datasets")
    else:
        table = [("DATASET", "VERSION", "STATE", "SHARDS", "ROWS", "SIZE", "VERSIONS")]
        errors = []
        for r in rows:
            if "error" in r:
                errors.append(f"{_quoted(r['dataset'])}: {r['error']}")
            else:
                table.append((_quoted(r["dataset"]), r["version"], r["state"], f"{r['cached']}/{r['shards']}",
                              str(r["rows"]), format_bytes(r["bytes"]), str(r["versions"])))
        if len(table) > 1:
            widths = [max(_width(row[i]) for row in table) for i in range(len(table[0]))]
            right = {3, 4, 5, 6}  # numbers line up on their last digit
            for row in table:
                pads = [" " * (w - _width(c)) for c, w in zip(row, widths, strict=True)]
                cells = [pad + c if i in right else c + pad for i, (c, pad) in enumerate(zip(row, pads, strict=True))]
                click.echo("  ".join(cells).rstrip())
        for line in errors:
            click.echo(line)
    if any("error" in r for r in rows):
        sys.exit(1)


def _width(text: str) -> int:
    """Terminal columns of ``text``: East Asian wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _quoted(name: str) -> str:
    """``name`` as is, or quoted when a space or an unprintable character (escaped) would hide where it
    ends or what it is."""
    return name if name.isprintable() and not any(c.isspace() or c in "'\"" for c in name) else repr(name)


@click.command()
@click.argument("dataset")
@redis_options
@click.option("--version", "version", default=None, help="A version id (default: the newest).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(
    dataset: str, redis_url: str | None, state_dir: str, k8s_service: str | None, k8s_secret: str | None,
    version: str | None, as_json: bool,
) -> None:
    """Show one dataset version: state, schema, shards, and the shards gone from Redis."""
    with open_cache(redis_url, state_dir, k8s_service, k8s_secret) as cache:
        m = cache.manifest(dataset, version)
        missing = cache.missing_shards(m)
        versions = cache.versions(dataset)
        leases = cache.leases(dataset)
        writers = cache.writers(dataset, m.version)  # a complete version too: restoring evicted shards
    data = {
        "dataset": m.name, "version": m.version, "state": m.state, "rows": m.num_rows,
        "shards": m.num_shards, "cached_shards": m.cached_shards, "missing_shards": missing,
        "bytes": m.nbytes, "compression": m.compression, "transform_id": m.transform_id,
        "source": None if m.source is None else m.source.uri, "created_at": m.created_at,
        "schema": str(m.schema), "versions": versions, "leases": leases, "writers": writers,
    }
    if as_json:
        echo_json(data)
        return
    click.echo(f"{m.name} version {m.version}: {m.state}")
    click.echo(f"  {m.num_rows} rows in {m.num_shards} shards ({m.cached_shards} cached, "
               f"{len(missing)} gone from Redis), {format_bytes(m.nbytes)}, compression {m.compression or 'none'}")
    click.echo(f"  source {data['source']}  transform {m.transform_id or '-'}")
    click.echo(f"  versions: {', '.join(versions)}   live leases: {len(leases)}")
    if writers:
        click.echo(f"  {'loading' if m.state == 'loading' else 'writing'} now: {'; '.join(writers)}")
    elif m.state == "loading":
        click.echo(f"  no prefetch is loading it (it failed or was killed): run the same prefetch again to resume it, "
                   f"or free its {format_bytes(m.nbytes)} with `shardcache rm {_quoted(m.name)} --version {m.version}`")
    click.echo("  schema:")
    for line in str(m.schema).splitlines():
        click.echo(f"    {line}")


@click.command()
@click.argument("dataset")
@redis_options
@click.option("--version", "version", default=None, help="Remove only this version.")
@click.option("--all-old", is_flag=True,
              help="Remove every version but the newest (and the newest complete one while the newest loads).")
@click.option("--force", is_flag=True, help="Remove even while a reader holds a lease or a prefetch is writing it.")
def rm(
    dataset: str, redis_url: str | None, state_dir: str, k8s_service: str | None, k8s_secret: str | None,
    version: str | None, all_old: bool, force: bool,
) -> None:
    """Remove a dataset (every version), one --version, or --all-old versions."""
    if version and all_old:
        raise ConfigError("pass either --version V or --all-old, not both")
    with open_cache(redis_url, state_dir, k8s_service, k8s_secret) as cache:
        removed = cache.delete(dataset, version, all_old=all_old, force=force)
    click.echo(f"removed {len(removed)} version(s) of {dataset!r}" + (f": {', '.join(removed)}" if removed else ""))

