"""Argument checks of public constructors and methods: each error names the argument, the value and the fix.

Shared by every package (a level-0 module, beside ``errors`` and ``units``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import ConfigError
from .units import parse_duration, parse_size

__all__ = ["check_bool", "check_callable", "check_int", "check_number", "check_seconds", "check_size"]


# numpy scalars pass too: the plan is built from numpy arrays and checks its fields with these.


def check_int(name: str, value: object, *, minimum: int, fix: str, optional: bool = False) -> Any:
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name}={value!r} is invalid: {fix}")
    return int(value)


def check_number(name: str, value: object, *, minimum: float, fix: str) -> float:
    # `not >=` rejects NaN too.
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value >= minimum:
        raise ConfigError(f"{name}={value!r} is invalid: {fix}")
    return float(value)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name}={value!r} is invalid: pass True or False")
    return bool(value)


def check_callable(name: str, value: object, *, what: str) -> Callable[..., Any] | None:
    if value is not None and not callable(value):
        raise ConfigError(f"{name}={value!r} is not callable: pass {what}, or None")
    return value


def check_seconds(name: str, value: object) -> float:
    seconds = parse_duration(value, name=name)  # type: ignore[arg-type]
    if seconds <= 0:
        raise ConfigError(f"{name}={value!r} is invalid: pass a positive duration such as 60 or '1m'")
    return seconds


def check_size(name: str, value: object) -> int | None:
    if value is None:
        return None
    return parse_size(value, name=name)  # type: ignore[arg-type]
