"""Sizes and durations, parsed once at the edge so that internals see only numbers.

>>> parse_size("4MiB")
4194304
>>> parse_size("1.5gb")
1500000000
>>> parse_duration("250ms")
0.25
>>> format_bytes(4194304)
'4.0 MiB'
"""

from __future__ import annotations

import re

from .errors import ConfigError

__all__ = ["format_bytes", "parse_duration", "parse_size"]

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | str, *, name: str = "size") -> int:
    """Return ``value`` in bytes; accepts ints and strings like ``"4MiB"`` or ``"1gb"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is not a size; give bytes or a string like '4MiB'")
    if isinstance(value, int):
        number: float = value
    else:
        match = _NUMBER_UNIT.match(str(value))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _SIZE_UNITS:
            raise ConfigError(
                f"{name}={value!r} is not a size; use bytes or a number with a unit "
                "such as '512KiB', '4MiB', '1GB'"
            )
        number = float(match.group(1)) * _SIZE_UNITS[unit]
    if number <= 0:
        raise ConfigError(f"{name}={value!r} must be positive")
    return int(number)


def parse_duration(value: float | str, *, name: str = "duration") -> float:
    """Return ``value`` in seconds; accepts numbers and strings like ``"30s"`` or ``"250ms"``."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is not a duration; give seconds or a string like '30s'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _NUMBER_UNIT.match(str(value))
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _DURATION_UNITS:
            raise ConfigError(f"{name}={value!r} is not a duration; use seconds or e.g. '30s', '250ms', '5m'")
        seconds = float(match.group(1)) * _DURATION_UNITS[unit]
    if seconds < 0:
        raise ConfigError(f"{name}={value!r} must not be negative")
    return seconds


def format_bytes(n: float) -> str:
    """Human-readable binary size, e.g. ``'4.0 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
