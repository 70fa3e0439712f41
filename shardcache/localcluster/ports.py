"""Ports: whether one is free, the ports a cluster needs, and how an address is written."""

from __future__ import annotations

import socket
from collections.abc import Sequence

from ..errors import ConfigError
from .config import DEFAULT_HOST

__all__ = ["BUS_PORT_OFFSET", "port_free", "check_ports_free", "host_port"]

# Each cluster node also listens on its cluster bus port, port + 10000.
BUS_PORT_OFFSET = 10000


def port_free(port: int, *, host: str = DEFAULT_HOST) -> bool:
    """Whether ``port`` on ``host`` can be bound now (tests and benchmarks pick ports with it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # Redis sets SO_REUSEADDR too, so TIME_WAIT leftovers do not count as "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports_free(ports: Sequence[int], *, host: str, cluster: bool) -> None:
    """Raise ConfigError naming the first port (or cluster bus port) already in use."""
    wanted = [(p, "port") for p in ports]
    if cluster:
        wanted += [(p + BUS_PORT_OFFSET, "cluster bus port") for p in ports]
    for p, what in wanted:
        if not port_free(p, host=host):
            span = f"{ports[0]}-{ports[-1]}"
            if cluster:
                span += f" and bus ports {ports[0] + BUS_PORT_OFFSET}-{ports[-1] + BUS_PORT_OFFSET}"
            raise ConfigError(
                f"{what} {p} on {host} is already in use; if a shardcache cluster holds it, stop it "
                f"with `shardcache down --dir DIR`, otherwise pick another --port (this cluster needs "
                f"ports {span})"
            )


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
