"""A Lightning user's script: ``Trainer(strategy="ddp")`` on a CachedDataLoader, run by test_lightning.py.

    python lightning_fit.py URL DATASET OUT TAG --devices 2 --workers 0 --epochs 3 --batch-size 16
        [--every 15] [--stop-at 45] [--resume CKPT]

Each rank writes ``OUT/TAG-rank<r>.json``: the ids of every batch it trained on, per epoch, and the
loader's ``len``. ``--stop-at`` stops the run after that global step (like a job preempted after its
checkpoint); ``--resume`` continues from a checkpoint, on any number of devices.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import lightning as L  # noqa: N812 -- the name Lightning's documentation uses
import torch

from shardcache.dataloader import CachedDataLoader


class Recorder(L.LightningModule):
    def __init__(self, loader_args: dict, out: Path, tag: str) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.loader_args = loader_args
        self.out, self.tag = out, tag
        self.seen: dict[int, list[list[int]]] = {}
        self.lengths: list[int] = []

    def train_dataloader(self) -> CachedDataLoader:
        return CachedDataLoader(**self.loader_args)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        ids = batch["id"]
        self.seen.setdefault(self.current_epoch, []).append(ids.tolist())
        return self.layer(ids.float().unsqueeze(1) / 1000).pow(2).mean()

    def on_train_epoch_start(self) -> None:
        self.lengths.append(len(self.trainer.train_dataloader))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_train_end(self) -> None:
        report = {"seen": {str(e): b for e, b in self.seen.items()}, "lengths": self.lengths,
                  "world_size": self.trainer.world_size, "global_step": self.trainer.global_step}  # fmt: skip
        (self.out / f"{self.tag}-rank{self.global_rank}.json").write_text(json.dumps(report))


class StopAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("url", "dataset", "out", "tag"):
        parser.add_argument(name)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--every", type=int, default=0)
    parser.add_argument("--stop-at", type=int, default=0)
    parser.add_argument("--resume", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    loader_args = {"dataset": args.dataset, "cache": args.url, "batch_size": args.batch_size,
                   "num_workers": args.workers, "columns": ["id"], "seed": 7}  # fmt: skip
    callbacks: list[L.Callback] = []
    if args.every:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(
            dirpath=out / "ckpt", every_n_train_steps=args.every, save_top_k=-1, save_last=False,
        ))  # fmt: skip
    if args.stop_at:
        callbacks.append(StopAt(args.stop_at))
    trainer = L.Trainer(
        accelerator="cpu", devices=args.devices, strategy="ddp", max_epochs=args.epochs, callbacks=callbacks,
        logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        enable_checkpointing=bool(args.every),
    )  # fmt: skip
    trainer.fit(Recorder(loader_args, out, args.tag), ckpt_path=args.resume)


if __name__ == "__main__":
    main()
