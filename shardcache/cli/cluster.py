"""``shardcache up``, ``down`` and ``status``: the local cluster, and the nodes of any cache."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import click

from ..cache import ShardCache, connect, parse_url
from ..localcluster import DEFAULT_POLICY, MAXMEMORY_POLICIES, LocalCluster
from ..units import format_bytes
from .options import DEFAULT_DIR, echo_json, fail

__all__ = ["down", "status", "up"]


@click.command()
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
            fail(f"--password-env {password_env}: that environment variable is empty or not set")
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


@click.command()
@click.option("--dir", "state_dir", default=DEFAULT_DIR, show_default=True, type=click.Path(file_okay=False))
def down(state_dir: str) -> None:
    """Stop exactly the servers that `shardcache up` started in --dir."""
    cluster = LocalCluster.from_state(state_dir)
    count = len(cluster.nodes)
    cluster.stop()
    click.echo(f"stopped {count} node(s) recorded in {Path(state_dir).absolute()}")


@click.command()
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
        echo_json({"ok": st.ok, "cluster": st.cluster, "nodes": [vars(n) for n in st.nodes]})
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
        echo_json({"ok": ok, "url": cache.url.redacted(), "nodes": rows})
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

