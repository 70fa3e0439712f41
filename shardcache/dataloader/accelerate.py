"""Hugging Face Accelerate support: ``accelerator.prepare(loader)`` keeps the loader's own sharding.

>>> accelerator = Accelerator(gradient_accumulation_steps=4)                              # doctest: +SKIP
>>> loader = CachedDataLoader("imagenet-train", cache=url, batch_size=64, num_workers=4)  # doctest: +SKIP
>>> model, optimizer, loader = accelerator.prepare(model, optimizer, loader)              # doctest: +SKIP
>>> accelerator.register_for_checkpointing(loader)                                        # doctest: +SKIP

Accelerate rebuilds every ``DataLoader`` it prepares: it wraps an iterable dataset in its own
``IterableDatasetShard`` (or reads it on the main process only and broadcasts), which shards a
dataset that is already sharded a second time and batches whole batches again. Before rebuilding,
``Accelerator.prepare_data_loader`` asks the loader whether it was prepared already
(``_is_accelerate_prepared``): a :class:`CachedDataLoader` answers yes (see :class:`AccelerateHooks`)
and is adopted as it is instead. Adopting it

- places batches on ``accelerator.device`` (unless the loader has a ``device=`` or the accelerator
  was told ``device_placement=False``),
- registers each iteration with Accelerate's ``GradientState``, so ``accelerator.accumulate()``
  syncs gradients on the last batch of the epoch (``end_of_dataloader``; the loader knows its batch
  count, so it needs no look-ahead batch, which would put ``state_dict()`` one batch ahead),
- with ``use_stateful_dataloader=True`` lets ``save_state``/``load_state`` save the loader's state
  themselves; else ``register_for_checkpointing(loader)`` does. ``state_dict()`` is a collective
  under ``torch.distributed``: ``save_state`` must run on every process, as Accelerate requires.

Settings whose meaning the loader cannot honour raise :class:`ConfigError` naming the setting:
``split_batches=True`` (the loader's ``batch_size`` is per process), tensor or context parallelism
without ``rank=``/``world_size=`` of the data-parallel group, and XLA (TPU loaders go through
Accelerate's own device loader). ``dispatch_batches`` and ``even_batches`` change nothing: every
process reads its own batches, and every process gets the same number of them. Megatron-LM is not
supported: it rebuilds loaders without asking them first, so nothing here runs.

``accelerate`` is an optional dependency: the hook imports nothing unless the process has imported it,
and acts only once an Accelerate state exists.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["AccelerateHooks", "AccelerateLink"]

# How far up the stack Accelerator.prepare_data_loader may be from the hook (the property, adopt()).
_CALLER_DEPTH = 6


@dataclass(eq=False)
class AccelerateLink:
    """What an Accelerator asked of the loader it adopted, and the loader's end in ``GradientState``.

    ``GradientState`` keeps weak references to the loaders being iterated and reads
    ``end_of_dataloader`` and ``remainder`` from the newest one.
    """

    stateful: bool = False
    end_of_dataloader: bool = False
    # Accelerate's gather_for_metrics drops the tail of the last gathered batch to this many samples;
    # the plan's padding samples sit at the end of each short rank's part instead, so "unknown" (-1)
    # keeps every sample (see the README: drop_last=True, or de-duplicate by id, for exact metrics).
    remainder: int = -1

    def signal(self, batches: Iterator[tuple[int, int, Any]], num_batches: int) -> Iterator[tuple[int, int, Any]]:
        """``batches`` (``(index, samples, batch)`` in plan order), with this iteration registered in
        ``GradientState`` and ``end_of_dataloader`` set while the caller holds the last batch."""
        from accelerate.state import GradientState

        gradient_state = GradientState()
        self.end_of_dataloader = False
        gradient_state._add_dataloader(self)
        try:
            for item in batches:
                self.end_of_dataloader = item[0] + 1 >= num_batches
                yield item
        finally:
            gradient_state._remove_dataloader(self)


class AccelerateHooks:
    """The attributes Accelerate reads from a DataLoader it prepares, mixed into CachedDataLoader."""

    _accelerate: AccelerateLink | None = None

    @property
    def _is_accelerate_prepared(self) -> bool:
        # Read by Accelerator.prepare_data_loader before it rebuilds a loader; True makes it keep this one.
        # Any other reader (introspection, no Accelerate in use) gets False and causes nothing.
        return adopt(self)

    @_is_accelerate_prepared.setter
    def _is_accelerate_prepared(self, value: bool) -> None:
        pass  # Accelerator.prepare marks what it prepared; adopt() has done what that means here

    @property
    def use_stateful_dataloader(self) -> bool:
        """True when an Accelerator with ``use_stateful_dataloader=True`` adopted this loader: its
        ``save_state``/``load_state`` then save and load ``state_dict()`` themselves."""
        return self._accelerate is not None and self._accelerate.stateful


def adopt(loader: Any) -> bool:
    """Check the preparing Accelerator's settings against ``loader`` and link the two (see the module doc).

    False, and nothing done, when no Accelerate state exists in this process: Accelerate is not the caller.
    """
    if "accelerate" not in sys.modules:
        return False
    from accelerate.state import DistributedType, PartialState

    if not PartialState._shared_state:
        return False  # no Accelerator (nor PartialState) was made: making one here would set up torch.distributed
    state = PartialState()
    if state.distributed_type == DistributedType.XLA:
        raise ConfigError(
            "CachedDataLoader does not support Accelerate on XLA (distributed_type=XLA, whose loaders Accelerate "
            "wraps in its own device loader): iterate the CachedDataLoader without accelerator.prepare() "
            "and place batches with device="
        )
    accelerator, device_placement = _calling_accelerator()
    stateful = False
    if accelerator is not None:
        if accelerator.split_batches:
            raise ConfigError(
                "Accelerator(split_batches=True) splits each batch across processes, but a CachedDataLoader's "
                f"batch_size={loader.batch_size} is what each process gets; use split_batches=False "
                "(DataLoaderConfiguration) and give the per-process batch size to CachedDataLoader"
            )
        config = accelerator.parallelism_config
        given = loader.cached_dataset.given_ranks
        if config is not None and (config.tp_enabled or config.cp_enabled) and given is None:
            raise ConfigError(
                "with tensor or context parallelism the ranks of one data-parallel group must read the same batches; "
                "pass rank= and world_size= of the data-parallel group to CachedDataset"
            )
        if device_placement is None:
            device_placement = accelerator.device_placement
        stateful = bool(accelerator.use_stateful_dataloader)
    ranks = loader.cached_dataset.ranks()
    processes = (state.process_index, state.num_processes)
    if loader.cached_dataset.given_ranks is None and ranks != processes:
        raise ConfigError(
            f"this CachedDataLoader reads as rank {ranks[0]} of {ranks[1]} (torch.distributed), but Accelerate runs "
            f"process {processes[0]} of {processes[1]}: pass rank= and world_size= to CachedDataset"
        )
    if device_placement is not False and loader.device is None and state.device.type != "cpu":
        # On CUDA the loader copies the next batch on a side stream (device.py), non_blocking always.
        loader.device = torch.device(state.device)
    loader._accelerate = AccelerateLink(stateful=stateful)
    return True


def _calling_accelerator() -> tuple[Any, bool | None]:
    """The Accelerator whose ``prepare_data_loader`` is asking, and the ``device_placement`` it was given.

    Accelerate passes a loader no settings on its way out (it returns a prepared loader untouched), so
    they are read from its frame; when it cannot be found (another Accelerate version, or another
    caller while an Accelerator exists), the shared ``PartialState`` defaults apply.
    """
    from accelerate import Accelerator

    frame = sys._getframe(1)
    for _ in range(_CALLER_DEPTH):
        if frame is None:
            break
        if frame.f_code.co_name == "prepare_data_loader":
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, Accelerator):
                return candidate, frame.f_locals.get("device_placement")
        frame = frame.f_back  # type: ignore[assignment]
    return None, None
