"""The loader's argument checks: the shared ones (:mod:`shardcache.checks`), under their old address."""

from ..checks import check_bool, check_callable, check_int, check_seconds, check_size

__all__ = ["check_bool", "check_callable", "check_int", "check_seconds", "check_size"]
