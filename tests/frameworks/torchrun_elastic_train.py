"""An elastic training script, launched by test_torchrun_elastic.py under ``torchrun --nnodes 1:2``.

Every ``--every`` batches (and at the end of each epoch) the ranks checkpoint: the loader's global
state (a collective) and the ids the ranks delivered since the last checkpoint, which stand for the
model's progress. Rank 0 writes it atomically. A (re)started worker group resumes from the checkpoint
on whatever world size the rendezvous gave it; ids delivered after the last checkpoint are lost with
the rank that died and delivered again, as a model would train them again. Rank 0 of the last group
writes ``result.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from shardcache.dataloader import CachedDataLoader

EPOCHS = 2


def write_atomically(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--pause", type=float, default=0.05, help="seconds per step, so a kill lands mid-epoch")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # A rank that lost its peer fails on its next collective (gloo sees the closed connection); the
    # timeout bounds the case where it would not.
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world_size = dist.get_rank(), dist.get_world_size()
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    out = Path(args.out)
    checkpoint = out / "checkpoint.json"

    loader = CachedDataLoader(args.dataset, cache=args.url, batch_size=args.batch_size)
    saved: dict[str, Any] = {"step": 0, "delivered": {}, "groups": [], "resumed_from": []}
    if checkpoint.exists():
        saved = json.loads(checkpoint.read_text())
        loader.load_state_dict(saved["loader"])  # the global state of the old world size
        saved["resumed_from"].append({"step": saved["step"], "world_size": saved["world_size"],
                                      "consumed": saved["loader"]["consumed"]})  # fmt: skip
    saved["groups"].append({"restart": restart, "world_size": world_size})
    step, delivered = saved["step"], saved["delivered"]
    mine: list[int] = []  # ids this rank delivered since the last checkpoint

    def save(epoch: int) -> None:
        state = loader.state_dict()  # a collective: every rank calls it at the same step
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, mine)
        if rank == 0:
            delivered.setdefault(str(epoch), []).extend(i for ids in gathered for i in ids)
            write_atomically(checkpoint, {**saved, "loader": state, "step": step, "delivered": delivered,
                                          "world_size": world_size, "epoch": epoch})  # fmt: skip
        mine.clear()

    for epoch in range(loader.epoch, EPOCHS):
        loader.set_epoch(epoch)
        for batch in loader:
            mine.extend(batch["id"].tolist())
            with (out / f"steps-restart{restart}-rank{rank}.log").open("a") as log:
                log.write(f"{step + 1}\n")  # for the test: how far this rank got before a kill
            grad = torch.ones(1)
            dist.all_reduce(grad)  # stands for DDP's gradient all-reduce
            step += 1
            time.sleep(args.pause)
            if step % args.every == 0:
                save(epoch)
        save(epoch)
    if rank == 0:
        write_atomically(out / "result.json", {**json.loads(checkpoint.read_text()), "final_world_size": world_size})
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
