"""The recorded state in ``--dir``: what was started, so that another process can attach to it.

``DIR/cluster.json`` holds the cluster's options, the binary and, per node, its port, pid,
start time, role and argv. It may hold the password, so it is written private (0600) and
replaced atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .config import TLSFiles
from .process import Node

__all__ = ["STATE_FILE", "RecordedState", "write_state", "read_state", "garbled"]

STATE_FILE = "cluster.json"
_STATE_FORMAT = 1
# Key in the state file -> keyword argument of LocalCluster.
_OPTIONS = {
    "host": "host",
    "port": "port",
    "masters": "masters",
    "replicas": "replicas",
    "cluster": "cluster",
    "maxmemory": "maxmemory",
    "maxmemory_policy": "maxmemory_policy",
    "node_timeout_ms": "node_timeout_ms",
    "binary": "server_bin",
    "password": "password",
    "tls": "tls",
}


@dataclass(frozen=True)
class RecordedState:
    """A state file read back: LocalCluster's keyword arguments (``dir`` included) and its nodes."""

    path: Path
    options: dict[str, Any]
    nodes: list[Node]


def write_state(dir: Path, *, options: Mapping[str, Any], nodes: Sequence[Node]) -> None:
    """Record ``options`` (LocalCluster's keyword arguments, ``server_bin`` the binary that runs) and ``nodes``."""
    state: dict[str, Any] = {"format": _STATE_FORMAT}
    for key, name in _OPTIONS.items():
        state[key] = options[name]
    state["tls"] = None if options["tls"] is None else vars(options["tls"])
    state["nodes"] = [
        {"port": n.port, "pid": n.pid, "role": n.role, "started_at": n.started_at, "args": n.args} for n in nodes
    ]
    path = dir / STATE_FILE
    tmp = path.with_name(STATE_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold the password
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=2)
    os.replace(tmp, path)


def read_state(dir: str | os.PathLike[str]) -> RecordedState:
    """Read the state file in ``dir``; raise ConfigError that says what to do when it is absent or garbled."""
    path = Path(dir).absolute() / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"no cluster is recorded in {path}; start one with `shardcache up --dir {dir}` "
            "or pass the --dir it was started with"
        ) from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path} ({e}); stop its servers by hand and delete it") from e
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise ConfigError(f"{path} is not a shardcache cluster state file of format {_STATE_FORMAT}")
    try:
        tls = TLSFiles(**state["tls"]) if state["tls"] else None
        options = {name: state[key] for key, name in _OPTIONS.items()}
        options.update(tls=tls, dir=path.parent)
        nodes = [
            Node(
                port=n["port"],
                role=n["role"],
                args=n["args"],
                dir=path.parent / str(n["port"]),
                pid=n["pid"],
                started_at=n["started_at"],
            )
            for n in state["nodes"]
        ]
    except (KeyError, TypeError) as e:
        raise garbled(path, e) from e
    return RecordedState(path=path, options=options, nodes=nodes)


def garbled(path: Path, error: Exception) -> ConfigError:
    """The error for a state file whose fields are missing or of the wrong type."""
    return ConfigError(f"{path} misses or garbles {error}; stop its servers by hand and delete it")
