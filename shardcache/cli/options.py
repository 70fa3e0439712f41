"""What the commands share: the cache options (``--redis``, ``--dir``, ``--k8s-service``,
``--k8s-secret``), opening the cache they name, and expected errors as one line on stderr."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, NoReturn

import click
from click.core import ParameterSource

from ..cache import ShardCache
from ..discovery import address
from ..errors import ShardCacheError

__all__ = ["DEFAULT_DIR", "ErrorGroup", "echo_json", "fail", "open_cache", "redis_options"]

DEFAULT_DIR = ".shardcache"


class ErrorGroup(click.Group):
    """Turns expected errors into one line on stderr: ``Error: ...``, exit status 1, in the
    words of the command line (``--shard-size``, not the Python argument ``shard_size=``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ShardCacheError as exc:
            message = " ".join(str(exc).split())
            command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            raise click.ClickException(in_cli_words(message, command)) from None


# Library arguments whose command-line flag has another name.
_FLAG_OF = {
    "format": "--format", "cache": "--redis", "k8s_service": "--k8s-service", "k8s_secret": "--k8s-secret",
    "service": "--k8s-service", "secret": "--k8s-secret",
}


def in_cli_words(message: str, command: click.Command | None) -> str:
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


def fail(message: str) -> NoReturn:
    raise click.ClickException(message)


def redis_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--redis``, ``--dir``, ``--k8s-service`` and ``--k8s-secret``: where the cache is."""
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


def open_cache(redis_url: str | None, state_dir: str, k8s_service: str | None, k8s_secret: str | None) -> ShardCache:
    """Connect to the cache of :func:`redis_options`, in the order of :mod:`shardcache.discovery.address`.

    A ``--redis`` from ``$SHARDCACHE_REDIS_URL`` is left to the resolver, in its place after
    ``--k8s-service``; ``--k8s-service``/``--k8s-secret`` from their environment variables give
    way to a ``--redis`` on the command line.
    """
    ctx = click.get_current_context()
    if _from_environment(ctx, "redis_url"):
        redis_url = None
    elif redis_url is not None:
        if _from_environment(ctx, "k8s_service"):
            k8s_service = None
        if _from_environment(ctx, "k8s_secret"):
            k8s_secret = None
    return address.open_cache(
        redis_url=redis_url, k8s_service=k8s_service, k8s_secret=k8s_secret, state_dir=state_dir
    )


def _from_environment(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) in (ParameterSource.ENVIRONMENT, ParameterSource.DEFAULT, None)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
