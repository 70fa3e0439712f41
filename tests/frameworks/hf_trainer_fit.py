"""A transformers.Trainer user's script: ``get_train_dataloader`` returns a CachedDataLoader, resumed by
``CachedLoaderCallback``; run by test_hf_trainer.py on ranks started by ``launch`` (torchrun's environment).

    python hf_trainer_fit.py URL DATASET OUT TAG --epochs 3 --batch-size 16 [--every 15] [--stop-at 45]
        [--resume CHECKPOINT_DIR]

Each rank writes ``OUT/TAG-rank<r>.json``: the ids of every batch it trained on, per epoch (Trainer's
epoch: ``global_step // len(loader)``), and the final global step.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from shardcache.dataloader import CachedDataLoader
from shardcache.dataloader.hf import CachedLoaderCallback

SEEN: dict[int, list[list[int]]] = {}


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def forward(self, id: torch.Tensor, **rest: Any) -> dict[str, torch.Tensor]:
        return {"loss": self.layer(id.float().unsqueeze(1) / 1000).pow(2).mean()}


class CachedTrainer(Trainer):
    def __init__(self, *args: Any, loader: CachedDataLoader, **kwargs: Any) -> None:
        self.loader = loader
        super().__init__(*args, **kwargs)

    def get_train_dataloader(self) -> CachedDataLoader:  # type: ignore[override]
        return self.loader

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        epoch = self.state.global_step // len(self.loader)  # one batch per step (no accumulation)
        SEEN.setdefault(epoch, []).append(inputs["id"].tolist())
        return super().training_step(model, inputs, num_items_in_batch)


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= self.step:
            control.should_training_stop = True


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("url", "dataset", "out", "tag"):
        parser.add_argument(name)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--every", type=int, default=0)
    parser.add_argument("--stop-at", type=int, default=0)
    parser.add_argument("--resume", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    training = TrainingArguments(
        output_dir=str(out / "hf"), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        save_strategy="steps" if args.every else "no", save_steps=args.every or 500, logging_strategy="no",
        report_to="none", use_cpu=True, ddp_backend="gloo", ignore_data_skip=True, disable_tqdm=True, seed=1,
    )  # fmt: skip
    loader = CachedDataLoader(args.dataset, cache=args.url, batch_size=args.batch_size, columns=["id"], seed=7)
    callbacks: list[TrainerCallback] = [CachedLoaderCallback()]
    if args.stop_at:
        callbacks.append(StopAt(args.stop_at))
    trainer = CachedTrainer(model=Model(), args=training, loader=loader, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=args.resume)
    report = {"seen": {str(e): b for e, b in SEEN.items()}, "global_step": trainer.state.global_step,
              "len": len(loader), "world_size": training.world_size}  # fmt: skip
    (out / f"{args.tag}-rank{training.process_index}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
