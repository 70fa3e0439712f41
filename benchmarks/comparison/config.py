"""The options of one benchmark run, validated once, and the dataset sized to the machine."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from shardcache.errors import ConfigError
from shardcache.units import parse_size

__all__ = ["BenchConfig", "default_size", "parse_ints", "parse_shape", "peers_decision", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[2]
MIN_SIZE = 512 * 10**6
MAX_SIZE = 2 * 10**9
# The dataset exists as raw arrays, Parquet, MDS and LitData on disk (page cache), once
# in Redis, once more while a prefetch round runs, and once in the moto server.
_COPIES_IN_MEMORY = 6
_PER_CPU = 512 * 10**6


def default_size(*, available: int | None = None, cpus: int | None = None) -> int:
    """512 MB to 2 GB: a sixth of the memory available now (every copy stays in RAM), and at most
    512 MB per CPU, so that a run on a small machine takes minutes, not an hour."""
    if available is None:
        available = psutil.virtual_memory().available
    if cpus is None:
        cpus = os.cpu_count() or 1
    size = min(available // _COPIES_IN_MEMORY, cpus * _PER_CPU)
    return max(MIN_SIZE, min(MAX_SIZE, size // 10**6 * 10**6))


def parse_ints(text: str, *, name: str, minimum: int) -> tuple[int, ...]:
    """``"0,2"`` -> ``(0, 2)``; each value at least ``minimum``."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{name}={text!r} must be comma-separated integers, e.g. '0,2'") from None
    if not values or any(v < minimum for v in values):
        raise ConfigError(f"{name}={text!r} needs integers >= {minimum}, e.g. '0,2'")
    return tuple(sorted(set(values)))


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3x224x224"`` -> ``(3, 224, 224)``."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"image_shape={text!r} must look like '3x224x224'") from None
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(f"image_shape={text!r} needs positive dimensions, e.g. '3x224x224'")
    return shape


@dataclass(frozen=True)
class BenchConfig:
    """Everything that shapes a run; ``compare.py`` builds it from the command line."""

    workdir: Path
    size: int
    image_shape: tuple[int, ...] = (3, 224, 224)
    shard_size: int = 4 * 1024 * 1024
    workers: tuple[int, ...] = (0, 2)
    batch_sizes: tuple[int, ...] = (64, 256)
    rounds: int = 3
    warmup: int = 1
    seed: int = 0
    data: Path | None = None
    peers: bool = True
    peers_reason: str = ""
    peers_venv: Path = REPO_ROOT / ".venv-peers"
    systems: frozenset[str] | None = None
    scaling: bool = False
    scaling_base: int = 512 * 1024 * 1024
    scaling_shard_sizes: tuple[int, ...] = (1 << 20, 4 << 20, 8 << 20)
    quick: bool = False
    child_timeout: float = 600.0
    server_bin: str | None = None  # the cluster's server binary; None: services.preferred_server()

    def __post_init__(self) -> None:
        for name in ("size", "shard_size", "scaling_base"):
            parse_size(getattr(self, name), name=name)
        if self.rounds < 1:
            raise ConfigError(f"rounds={self.rounds!r} must be >= 1")
        if self.warmup < 0:
            raise ConfigError(f"warmup={self.warmup!r} must be >= 0")
        if self.size < self.sample_bytes * 2:
            raise ConfigError(f"size={self.size} holds fewer than 2 samples of {self.sample_bytes} bytes; raise --size")

    @property
    def sample_bytes(self) -> int:
        n = 1
        for d in self.image_shape:
            n *= d
        return n

    @property
    def rows(self) -> int:
        return self.size // self.sample_bytes

    @property
    def largest_batch(self) -> int:
        return max(self.batch_sizes)

    def wants(self, system: str) -> bool:
        """Whether ``system`` (a family such as ``cached`` or ``mds``) is selected by ``--systems``."""
        return self.systems is None or system in self.systems


def peers_decision(*, no_peers: bool, env: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """Whether to use the peers virtualenv, and why not: never in CI (``CI=true``) or with ``--no-peers``."""
    env = os.environ if env is None else env
    if no_peers:
        return False, "skipped (--no-peers)"
    if env.get("CI", "").lower() in ("true", "1", "yes"):
        return False, "skipped in CI (CI=true): the peers virtualenv is a 5.5 GB install"
    return True, ""
