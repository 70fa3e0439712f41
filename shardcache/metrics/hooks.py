"""The calls the loaders and the prefetcher make: register what to export, and start exporting when
asked (argument or environment). Cheap and import-free when metrics are off."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .export import enable, pushes_now, resolve
from .live import Observed, PrefetchTracker, observe, track_prefetch

__all__ = ["loader_made", "prefetch_ended", "prefetch_started"]

log = logging.getLogger(__name__)


def loader_made(observer: Observed, metrics: object) -> None:
    """A loader was made with ``metrics=`` (see :func:`.export.resolve`): export it unless False."""
    export = resolve(metrics)  # raises ConfigError for a bad value, before anything starts
    if metrics is not False:
        observe(observer)
    enable(export)


def prefetch_started(report: Any, progress: Callable[[Any], None] | None) -> PrefetchTracker:
    """Track the prefetch of ``report``; export as the environment says. Its ``progress`` replaces the
    user's callback (and calls it)."""
    tracker = track_prefetch(report, progress)
    enable(resolve(None))
    return tracker


def prefetch_ended(tracker: PrefetchTracker | None, error: BaseException | None = None) -> None:
    """The run is over: its final values stay exported, and Pushgateways get them now."""
    if tracker is None:
        return
    tracker.close(error=error)
    try:
        pushes_now()
    except Exception as exc:  # never hide the prefetch's own outcome behind a metrics error
        log.warning("could not push the prefetch metrics (%s: %s)", type(exc).__name__, exc)
