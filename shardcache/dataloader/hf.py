"""transformers.Trainer with a CachedDataLoader: a callback that resumes the loader mid-epoch.

>>> from shardcache.dataloader.hf import CachedLoaderCallback                   # doctest: +SKIP
>>> class CachedTrainer(Trainer):                                              # doctest: +SKIP
...     def get_train_dataloader(self):
...         return loader  # a CachedDataLoader
>>> trainer = CachedTrainer(model=model, args=TrainingArguments(..., ignore_data_skip=True),
...                         callbacks=[CachedLoaderCallback()])                # doctest: +SKIP
>>> trainer.train(resume_from_checkpoint=True)                                 # doctest: +SKIP

Why: to resume mid-epoch, Trainer fast-forwards a plain DataLoader with accelerate's
``skip_first_batches``, which rebuilds it from its attributes; a CachedDataLoader cannot be rebuilt that
way (the rebuilt one raises ConfigError rather than deliver batches of batches). With
``ignore_data_skip=True`` Trainer leaves the loader alone, and this callback puts it where Trainer's
restored step count says the epoch stopped: epoch ``global_step // steps_per_epoch``, and
``(global_step % steps_per_epoch) * gradient_accumulation_steps`` batches delivered, on every rank, the
same arithmetic Trainer uses. The order depends on ``(seed, epoch)`` only, so the rest of the epoch is
exactly the batches not yet trained on. Trainer then calls ``set_epoch`` itself every epoch.

Resume on the same number of processes, batch size and ``gradient_accumulation_steps``: Trainer's step
counts per epoch come from ``len(loader)``, which another layout changes. With gradient accumulation,
``len(loader)`` must be a multiple of ``gradient_accumulation_steps`` (checked when training starts).
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from ..errors import ConfigError
from .loader import CachedDataLoader

__all__ = ["CachedLoaderCallback"]


class CachedLoaderCallback(TrainerCallback):
    """Resumes the CachedDataLoader of a ``transformers.Trainer`` where a checkpoint stopped (see the module)."""

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not args.ignore_data_skip:
            raise ConfigError(
                "CachedLoaderCallback needs TrainingArguments(ignore_data_skip=True): it resumes the "
                "CachedDataLoader itself, and Trainer's own skipping cannot rebuild one"
            )

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        loader = kwargs.get("train_dataloader")
        if not isinstance(loader, CachedDataLoader):
            raise ConfigError(
                f"CachedLoaderCallback found train_dataloader={type(loader).__name__}: return the "
                "CachedDataLoader itself from Trainer.get_train_dataloader"
            )
        accumulation = args.gradient_accumulation_steps
        batches = len(loader)
        if accumulation > 1 and batches % accumulation:
            # Trainer counts a resumed epoch's steps from 0 when it skips nothing, so the epoch's last, short
            # accumulation would never step: its global_step, and every later resume, would be off by one.
            raise ConfigError(
                f"len(loader)={batches} is not a multiple of gradient_accumulation_steps={accumulation}: "
                "CachedLoaderCallback resumes mid-epoch exactly only when it is; choose the batch size, "
                "drop_last=True or the accumulation so that it divides the epoch"
            )
        if not state.global_step:
            return  # a fresh run
        steps_per_epoch = max(batches // accumulation + int(batches % accumulation > 0), 1)  # as Trainer
        epoch, steps = divmod(state.global_step, steps_per_epoch)
        loader.set_epoch(epoch)
        if not steps:
            return
        position = loader.state_dict()  # a collective under torch.distributed: every rank is here
        delivered = steps * accumulation
        position["consumed"] = delivered if position["rank"] is not None else [delivered] * len(position["consumed"])
        loader.load_state_dict(position)
