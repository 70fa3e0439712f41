"""The entry point both child kinds share: run one system, print its result on the last line.

``python -m comparison.child SPEC`` and ``.venv-peers/bin/python -m comparison.peer_child SPEC``
both end in :func:`run_system`: SPEC is a JSON object with ``"system"`` and that system's
arguments; the last line on stdout is ``RESULT {json}`` with the system's figures and the peak
memory of the process and its workers. Stdlib only, like :mod:`.rss`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .rss import PeakMemory, high_water_mark

__all__ = ["RESULT_PREFIX", "run_system"]

RESULT_PREFIX = "RESULT "


def run_system(systems: Mapping[str, Callable[..., dict[str, Any]]], argv: Sequence[str] | None = None) -> int:
    """Run the system SPEC names (``argv[0]``, default ``sys.argv[1]``) and print ``RESULT {json}``."""
    args = sys.argv[1:] if argv is None else list(argv)
    spec = json.loads(args[0])
    system = systems[spec.pop("system")]
    with PeakMemory() as memory:
        result = system(**spec)
    result["peak_rss"] = memory.peak
    result["peak_rss_main"] = high_water_mark()
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0
