"""How one node is configured: defaults, TLS files, the server flags and the private secrets file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..units import parse_size

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAXMEMORY",
    "DEFAULT_POLICY",
    "DEFAULT_NODE_TIMEOUT_MS",
    "MAXMEMORY_POLICIES",
    "TLSFiles",
    "node_args",
    "write_secrets_conf",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAXMEMORY = "1gb"
# Only keys with a TTL may be evicted: shards get one (connect's shard_ttl), metadata never does, so a
# memory squeeze evicts shards (read through, then written back) and never a manifest or `latest`.
DEFAULT_POLICY = "volatile-lru"
DEFAULT_NODE_TIMEOUT_MS = 2000
MAXMEMORY_POLICIES = (
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
)


@dataclass(frozen=True)
class TLSFiles:
    """Certificate, key and CA files for a TLS-only cluster (``rediss://``)."""

    cert_file: str
    key_file: str
    ca_file: str

    def __post_init__(self) -> None:
        for name in ("cert_file", "key_file", "ca_file"):
            object.__setattr__(self, name, os.path.abspath(os.fspath(getattr(self, name))))

    def check(self) -> None:
        """Raise ConfigError naming the first file that does not exist."""
        for name in ("cert_file", "key_file", "ca_file"):
            if not os.path.isfile(getattr(self, name)):
                raise ConfigError(f"tls.{name}={getattr(self, name)!r} does not exist; give a PEM file")


def node_args(
    *,
    port: int,
    node_dir: str | os.PathLike[str],
    host: str = DEFAULT_HOST,
    maxmemory: int | str = DEFAULT_MAXMEMORY,
    maxmemory_policy: str = DEFAULT_POLICY,
    cluster: bool = True,
    node_timeout_ms: int = DEFAULT_NODE_TIMEOUT_MS,
    tls: TLSFiles | None = None,
) -> list[str]:
    """The server flags of one node (without the binary and without secrets).

    docker-compose.yml repeats these flags; tests/test_compose.py keeps the two in step.
    """
    args = ["--bind", host, "--protected-mode", "no", "--daemonize", "no", "--dir", os.fspath(node_dir)]
    if tls is None:
        args += ["--port", str(port)]
    else:
        # Clients without a certificate may connect; those that present one must be signed by the CA.
        args += ["--port", "0", "--tls-port", str(port), "--tls-cert-file", tls.cert_file]
        args += ["--tls-key-file", tls.key_file, "--tls-ca-cert-file", tls.ca_file]
        args += ["--tls-auth-clients", "optional", "--tls-replication", "yes"]
        if cluster:
            args += ["--tls-cluster", "yes"]
    # No persistence: a cache refills from its source, and restarts must come back empty.
    args += ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
    args += ["--maxmemory", str(parse_size(maxmemory, name="maxmemory")), "--maxmemory-policy", maxmemory_policy]
    if cluster:
        # Relative to --dir, so the flag is the same for every node.
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-node-timeout", str(node_timeout_ms)]
        # A cache, like deploy/k8s/configmap.yaml: when a primary is lost with no replica, the other
        # nodes keep serving their slots and loaders read the lost shards through, instead of the
        # whole cluster answering CLUSTERDOWN (tests/faults/test_node_faults.py).
        args += ["--cluster-require-full-coverage", "no"]
    return args


def write_secrets_conf(node_dir: Path, password: str | None) -> list[str]:
    """Write the password to a private config file: argv is readable by every local user.

    Returns the server's leading config-file argument, or nothing without a password.
    """
    if password is None:
        return []
    conf = node_dir / "auth.conf"
    value = _conf_quote(password)
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"requirepass {value}\nmasterauth {value}\n")
    return [str(conf)]


def _conf_quote(value: str) -> str:
    """Quote a value for a redis.conf line (double quotes, backslash escapes)."""
    out = []
    for byte in value.encode():
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return '"' + "".join(out) + '"'
