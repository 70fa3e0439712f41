"""``prometheus_client``, imported only when metrics are enabled (the ``metrics`` extra)."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import ConfigError

__all__ = ["INSTALL", "prometheus"]

INSTALL = "pip install 'shardcache[metrics]'"


def prometheus(part: str = "") -> ModuleType:
    """``prometheus_client`` (or its submodule ``part``, e.g. ``"core"``); ConfigError naming the extra
    when it is not installed."""
    try:
        return importlib.import_module("prometheus_client" + (f".{part}" if part else ""))
    except ImportError:
        raise ConfigError(f"Prometheus metrics need prometheus_client: {INSTALL}") from None
