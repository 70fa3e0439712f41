"""The ``shardcache`` command line. The only place that configures logging.

Every data command takes ``--redis URL`` (default ``$SHARDCACHE_REDIS_URL``, else the
cluster that ``shardcache up`` recorded in ``--dir``). Expected errors print one line
on stderr and exit non-zero, without a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__
from .cache import ShardCache, connect, parse_url
from .cache.keys import check_dataset_name
from .errors import ConfigError, ShardCacheError
from .localcluster import DEFAULT_POLICY, MAXMEMORY_POLICIES, LocalCluster
from .units import format_bytes, parse_size

__all__ = ["main"]

log = logging.getLogger(__name__)

DEFAULT_DIR = ".shardcache"


class _Group(click.Group):
    """Turns expected errors into one line on stderr: ``Error: ...``, exit status 1, in the
    words of the command line (``--shard-size``, not the Python argument ``shard_size=``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ShardCacheError as exc:
            message = " ".join(str(exc).split())
            command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            raise click.ClickException(_in_cli_words(message, command)) from None


# Library arguments whose command-line flag has another name.
_FLAG_OF = {
    "format": "--format", "cache": "--redis", "k8s_service": "--k8s-service", "k8s_secret": "--k8s-secret",
    "service": "--k8s-service", "secret": "--k8s-secret",
}


def _in_cli_words(message: str, command: click.Command | None) -> str:
    """``message`` with the library's argument names (``shard_size='0'``, ``pass format=
    (--format)``) replaced by the command's flags (``--shard-size '0'``, ``pass --format``)."""
    flags = dict(_FLAG_OF)
    for param in command.params if command is not None else []:
        if isinstance(param, click.Option) and param.name:
            flags.setdefault(param.name, max(param.opts, key=len))
        elif isinstance(param, click.Argument) and param.name:
            flags.setdefault(param.name, param.name.upper())
    for name, flag in flags.items():
        # "pass format= (--format)" and "pass allow_partial (--allow-partial)": the flag alone.
        message = re.sub(rf"(?<![\w-]){name}=? \({re.escape(flag)}\)", flag, message)
        message = re.sub(rf"(?<![\w.-]){name}=True\b", flag, message)  # a flag given: "--label applies..."
        message = re.sub(rf"(?<![\w.-]){name}=(?=\S)", f"{flag} ", message)
    return message


def _fail(message: str) -> NoReturn:
    raise click.ClickException(message)


def _redis_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--k8s-secret", default=None, envvar="SHARDCACHE_K8S_SECRET",
        help="Kubernetes Secret holding the Redis password (with --k8s-service).",
    )(fn)
    fn = click.option(
        "--k8s-service", default=None, envvar="SHARDCACHE_K8S_SERVICE",
        help="Find the cache through this Kubernetes Service instead of --redis: NAME, NAMESPACE/NAME or "
        "NAME.NAMESPACE (default namespace: the pod's, else the kubeconfig context's).",
    )(fn)
    fn = click.option(
        "--dir", "state_dir", default=DEFAULT_DIR, show_default=True, type=click.Path(file_okay=False),
        help="Where `shardcache up` recorded its cluster; used when no URL is given.",
    )(fn)
    return click.option(
        "--redis", "redis_url", default=None, envvar="SHARDCACHE_REDIS_URL",
        help="Cache URL, e.g. redis://h1:7000,h2:7001 (default: $SHARDCACHE_REDIS_URL).",
    )(fn)


def _open(redis_url: str | None, state_dir: str, k8s_service: str | None, k8s_secret: str | None) -> ShardCache:
    """Connect by --redis, else Kubernetes discovery, else the local cluster of --dir."""
    password = None
    if redis_url is None and k8s_service:
        from .kubeflow_components.kube import cache_url_from_k8s

        redis_url, password = cache_url_from_k8s(service=k8s_service, secret=k8s_secret)
    elif k8s_secret and not k8s_service:
        _fail("--k8s-secret needs --k8s-service NAME as well")
    if redis_url is None:
        state = Path(state_dir) / "cluster.json"
        if not state.exists():
            _fail(
                "no cache address: pass --redis redis://HOST:PORT, set SHARDCACHE_REDIS_URL, "
                "or start a local cluster with `shardcache up`"
            )
        redis_url = LocalCluster.from_state(state_dir).url
    return connect(redis_url, password=password)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shardcache")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """shardcache: prefetch datasets into Redis Cluster and stream them into PyTorch."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# -- the local cluster ------------------------------------------------------------------------


@cli.command()
@click.option("--masters", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(min=0), help="Replicas per primary.")
@click.option("--port", default=7000, show_default=True, type=click.IntRange(1, 65535), help="First port.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--maxmemory", default="1gb", show_default=True, help="Per node, e.g. 512mb, 2gb.")
@click.option("--maxmemory-policy", default=DEFAULT_POLICY, show_default=True, type=click.Choice(MAXMEMORY_POLICIES))
@click.option("--dir", "state_dir", default=DEFAULT_DIR, show_default=True, type=click.Path(file_okay=False))
@click.option("--server-bin", default=None, envvar="SHARDCACHE_SERVER_BIN", help="redis-server or valkey-server.")
@click.option("--standalone", is_flag=True, help="One standalone server instead of a cluster.")
@click.option("--password-env", default=None, metavar="VAR",
              help="Require this password, read from environment variable VAR (never from argv).")
def up(
    masters: int, replicas: int, port: int, host: str, maxmemory: str, maxmemory_policy: str, state_dir: str,
    server_bin: str | None, standalone: bool, password_env: str | None,
) -> None:
    """Start a local Redis Cluster from a server binary and print its URL."""
    password = None
    if password_env:
        password = os.environ.get(password_env)
        if not password:
            _fail(f"--password-env {password_env}: that environment variable is empty or not set")
    if standalone:
        masters, replicas = 1, 0
    cluster = LocalCluster(
        masters=masters, replicas=replicas, port=port, host=host, maxmemory=maxmemory,
        maxmemory_policy=maxmemory_policy, dir=state_dir, server_bin=server_bin, password=password,
        cluster=not standalone,
    )
    cluster.start()
    # The password stays out of the output: clients read it from SHARDCACHE_REDIS_PASSWORD.
    shown = dataclasses.replace(parse_url(cluster.url), password=None).redacted()
    click.echo(shown)
    hint = "" if password is None else f" and SHARDCACHE_REDIS_PASSWORD=${password_env}"
    click.echo(
        f"started {len(cluster.ports)} node(s) in {cluster.dir}; export SHARDCACHE_REDIS_URL={shown}{hint} "
        f"(stop with `shardcache down --dir {state_dir}`)",
        err=True,
    )


@cli.command()
@click.option("--dir", "state_dir", default=DEFAULT_DIR, show_default=True, type=click.Path(file_okay=False))
def down(state_dir: str) -> None:
    """Stop exactly the servers that `shardcache up` started in --dir."""
    cluster = LocalCluster.from_state(state_dir)
    count = len(cluster.nodes)
    cluster.stop()
    click.echo(f"stopped {count} node(s) recorded in {Path(state_dir).absolute()}")


@cli.command()
@click.option("--dir", "state_dir", default=DEFAULT_DIR, show_default=True, type=click.Path(file_okay=False))
@click.option("--redis", "redis_url", default=None, envvar="SHARDCACHE_REDIS_URL",
              help="Ask the cache at this URL instead (default: $SHARDCACHE_REDIS_URL, unless --dir is given).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, state_dir: str, redis_url: str | None, as_json: bool) -> None:
    """Show the nodes of a cache: role, state, memory (the local cluster recorded in --dir, or --redis URL)."""
    dir_given = ctx.get_parameter_source("state_dir") is click.core.ParameterSource.COMMANDLINE
    if redis_url is not None and not dir_given:
        with connect(redis_url) as cache:
            ok = _remote_status(cache, as_json=as_json)
        if not ok:
            sys.exit(1)
        return
    cluster = LocalCluster.from_state(state_dir)
    st = cluster.status()
    if as_json:
        _echo_json({"ok": st.ok, "cluster": st.cluster, "nodes": [vars(n) for n in st.nodes]})
    else:
        click.echo(f"{'ok' if st.ok else 'NOT OK'}: {cluster!r}")
        for n in st.nodes:
            used = "-" if n.used_memory is None else format_bytes(n.used_memory)
            click.echo(
                f"  port {n.port}  pid {n.pid}  {'up' if n.alive else 'DOWN'}  {n.role:<8} "
                f"used {used}  cluster_state {n.cluster_state or '-'}"
            )
    if not st.ok:
        sys.exit(1)


def _remote_status(cache: ShardCache, *, as_json: bool) -> bool:
    """Print every node of ``cache`` as it answers for itself; whether all answer and report a healthy cluster."""
    import redis.exceptions as rex

    client: Any = cache.client
    nodes: list[Any] = list(client.get_nodes()) if cache.is_cluster else [None]
    rows: list[dict[str, Any]] = []
    for node in sorted(nodes, key=lambda n: (n is not None and n.server_type != "primary", n and n.name)):
        target = {} if node is None else {"target_nodes": node}
        row: dict[str, Any] = {
            "node": cache.url.redacted() if node is None else node.name,
            "role": "standalone" if node is None else node.server_type or "unknown",
            "alive": True, "used_memory": None, "maxmemory": None, "policy": None, "cluster_state": None,
        }
        try:
            memory = client.info("memory", **target)
            row.update(used_memory=int(memory.get("used_memory", 0)), maxmemory=int(memory.get("maxmemory", 0)),
                       policy=memory.get("maxmemory_policy"))
            if node is not None:
                try:
                    row["cluster_state"] = client.cluster_info(**target).get("cluster_state")
                except rex.NoPermissionError:  # a user limited to shardcache's rule: memory is still shown
                    pass
        except (rex.RedisError, OSError) as exc:
            row.update(alive=False, error=" ".join(str(exc).split())[:200])
        rows.append(row)
    ok = all(r["alive"] and r["cluster_state"] in (None, "ok") for r in rows)
    if as_json:
        _echo_json({"ok": ok, "url": cache.url.redacted(), "nodes": rows})
        return ok
    click.echo(f"{'ok' if ok else 'NOT OK'}: {cache.url.redacted()} ({len(rows)} node(s))")
    for r in rows:
        if not r["alive"]:
            click.echo(f"  {r['node']}  DOWN  {r['role']:<8} {r['error']}")
            continue
        limit = format_bytes(r["maxmemory"]) if r["maxmemory"] else "no limit"
        click.echo(f"  {r['node']}  up  {r['role']:<8} used {format_bytes(r['used_memory'])} of {limit} "
                   f"({r['policy']})  cluster_state {r['cluster_state'] or '-'}")
    return ok


# -- datasets ---------------------------------------------------------------------------------


@cli.command("ls")
@_redis_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ls_(redis_url: str | None, state_dir: str, k8s_service: str | None, k8s_secret: str | None, as_json: bool) -> None:
    """List the datasets in the cache, with their newest version."""
    with _open(redis_url, state_dir, k8s_service, k8s_secret) as cache:
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
        _echo_json(rows)
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


@cli.command()
@click.argument("dataset")
@_redis_option
@click.option("--version", "version", default=None, help="A version id (default: the newest).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(
    dataset: str, redis_url: str | None, state_dir: str, k8s_service: str | None, k8s_secret: str | None,
    version: str | None, as_json: bool,
) -> None:
    """Show one dataset version: state, schema, shards, and the shards gone from Redis."""
    with _open(redis_url, state_dir, k8s_service, k8s_secret) as cache:
        m = cache.manifest(dataset, version)
        missing = cache.missing_shards(m)
        versions = cache.versions(dataset)
        leases = cache.leases(dataset)
    data = {
        "dataset": m.name, "version": m.version, "state": m.state, "rows": m.num_rows,
        "shards": m.num_shards, "cached_shards": m.cached_shards, "missing_shards": missing,
        "bytes": m.nbytes, "compression": m.compression, "transform_id": m.transform_id,
        "source": None if m.source is None else m.source.uri, "created_at": m.created_at,
        "schema": str(m.schema), "versions": versions, "leases": leases,
    }
    if as_json:
        _echo_json(data)
        return
    click.echo(f"{m.name} version {m.version}: {m.state}")
    click.echo(f"  {m.num_rows} rows in {m.num_shards} shards ({m.cached_shards} cached, "
               f"{len(missing)} gone from Redis), {format_bytes(m.nbytes)}, compression {m.compression or 'none'}")
    click.echo(f"  source {data['source']}  transform {m.transform_id or '-'}")
    click.echo(f"  versions: {', '.join(versions)}   live leases: {len(leases)}")
    click.echo("  schema:")
    for line in str(m.schema).splitlines():
        click.echo(f"    {line}")


@cli.command()
@click.argument("dataset")
@_redis_option
@click.option("--version", "version", default=None, help="Remove only this version.")
@click.option("--all-old", is_flag=True, help="Remove every version but the newest.")
@click.option("--force", is_flag=True, help="Remove even while a reader holds a lease.")
def rm(
    dataset: str, redis_url: str | None, state_dir: str, k8s_service: str | None, k8s_secret: str | None,
    version: str | None, all_old: bool, force: bool,
) -> None:
    """Remove a dataset (every version), one --version, or --all-old versions."""
    if version and all_old:
        raise ConfigError("pass either --version V or --all-old, not both")
    with _open(redis_url, state_dir, k8s_service, k8s_secret) as cache:
        removed = cache.delete(dataset, version, all_old=all_old, force=force)
    click.echo(f"removed {len(removed)} version(s) of {dataset!r}" + (f": {', '.join(removed)}" if removed else ""))


# -- prefetch ---------------------------------------------------------------------------------


@cli.command()
@click.argument("source")
@click.option("--dataset", required=True, help="Name of the dataset in the cache.")
@_redis_option
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
@click.option("--json", "as_json", is_flag=True, help="Print the final report as JSON.")
def prefetch(
    source: str, dataset: str, redis_url: str | None, state_dir: str, k8s_service: str | None,
    k8s_secret: str | None, fmt: str | None, shard_size: str, compression: str | None, columns: str | None,
    workers: int, allow_partial: bool, order: str, seed: int, world_size: int, label: bool, wait: float,
    endpoint_override: str | None, as_json: bool,
) -> None:
    """Preload SOURCE (a path, glob, s3://, gs://, hdfs:// URI) into the cache as Arrow shards."""
    from .prefetcher import run_prefetch

    # Checked before connecting: a typo should not wait out an unreachable cache's deadline.
    check_dataset_name(dataset)
    parse_size(shard_size, name="shard_size")
    options: dict[str, Any] = {}
    if label:
        options["label"] = True
    if endpoint_override:
        options["endpoint_override"] = endpoint_override
    with _open(redis_url, state_dir, k8s_service, k8s_secret) as cache, _progress_bar(as_json) as progress:
        report = run_prefetch(
            source, dataset=dataset, cache=cache, format=fmt, shard_size=shard_size,
            compression=None if compression == "none" else compression,
            columns=None if columns is None else [c.strip() for c in columns.split(",") if c.strip()],
            workers=workers, allow_partial=allow_partial, order=order, seed=seed, world_size=world_size, wait=wait,
            progress=progress, **options,
        )
    if as_json:
        _echo_json(report.to_dict())
    else:
        click.echo(report.summary())
    if report.failed:  # shards left uncached by --allow-partial are not failures; unreadable ones are
        sys.exit(1)


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


# -- the main job and the benchmark ----------------------------------------------------------------


@cli.command()
@click.option("--workdir", default=None, type=click.Path(file_okay=False),
              help="Where the cluster and the dataset live (default: a temporary folder).")
@click.option("--samples", default=20_000, show_default=True, type=click.IntRange(min=16))
@click.option("--world-size", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--port", default=None, type=click.IntRange(1, 55535), help="First port of the demo cluster.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def demo(workdir: str | None, samples: int, world_size: int, epochs: int, port: int | None, as_json: bool) -> None:
    """Start a local cluster, prefetch a synthetic image dataset, train a small CNN with 2-process DDP."""
    from .demo import run_demo

    kwargs: dict[str, Any] = {"samples": samples, "world_size": world_size, "epochs": epochs}
    if workdir is not None:
        kwargs["workdir"] = workdir
    if port is not None:
        kwargs["port"] = port
    result = run_demo(**kwargs)
    if as_json:
        _echo_json(result.to_dict())
    else:
        click.echo(result.summary())


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Compare shardcache with the alternatives in one run (benchmarks/compare.py; --help lists its options)."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "compare.py"
    if not script.exists():
        _fail("the benchmark harness ships with the source tree: run it from a checkout of shardcache")
    import runpy

    sys.argv = [str(script), *args]
    namespace = runpy.run_path(str(script))
    sys.exit(namespace["main"](list(args)))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``shardcache`` command."""
    cli.main(args=argv, prog_name="shardcache")


if __name__ == "__main__":
    main()
