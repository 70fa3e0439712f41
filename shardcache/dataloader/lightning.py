"""Lightning: a resumed CachedDataLoader whose epoch grew (an elastic re-plan onto more ranks) is iterated whole.

Lightning is never imported here: its ``CombinedLoader`` is recognised by name and shape.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["widen_lightning_limit"]

log = logging.getLogger(__name__)


def widen_lightning_limit(frame: Any, loader: Any, before: int) -> None:
    """Let Lightning iterate an elastic re-plan whole.

    Lightning reads ``len(loader)`` before it calls ``load_state_dict`` (from ``CombinedLoader._load_state_dicts``,
    the caller ``frame``) and keeps it as the loader's limit. When a re-plan on more ranks made the resumed
    epoch longer than that (``len`` grew: the batches delivered before plus those each new rank has left),
    the limit is raised to the new ``len``, unless the user set a smaller one (``limit_train_batches``).
    Looked up by name and shape, so that Lightning need not be imported; anything unexpected is left alone.
    """
    combined = frame.f_locals.get("self") if frame is not None else None
    if combined is None or type(combined).__name__ != "CombinedLoader":
        return
    limits, flattened = getattr(combined, "limits", None), getattr(combined, "flattened", None)
    if not isinstance(limits, list) or not isinstance(flattened, list) or len(limits) != len(flattened):
        return
    after = len(loader)
    if after <= before:
        return
    pairs = zip(flattened, limits, strict=True)
    widened = [after if dl is loader and limit == before else limit for dl, limit in pairs]
    if widened != limits:
        log.debug("raised Lightning's limit of a resumed CachedDataLoader from %d to %d batches", before, after)
        combined.limits = widened
