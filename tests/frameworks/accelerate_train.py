"""A small Accelerate training run over a CachedDataLoader, launched by test_accelerate.py with torchrun.

``--phase first`` trains two epochs and calls ``accelerator.save_state`` after ``--stop`` batches of
epoch 0; ``--phase resume`` is a new run that calls ``accelerator.load_state`` and trains what is left.
Each rank writes ``{phase}-rank{r}.json``: per epoch, the ids of each batch and, per batch, the
accumulation flags Accelerate saw (``sync_gradients``, ``end_of_dataloader``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration

from shardcache.dataloader import CachedDataLoader

EPOCHS = 2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--phase", choices=["first", "resume"], required=True)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--accumulate", type=int, default=4)
    parser.add_argument("--stop", type=int, default=10)
    parser.add_argument("--dispatch-batches", choices=["default", "true", "false"], default="default")
    parser.add_argument("--stateful", action="store_true", help="use_stateful_dataloader=True, no registering")
    args = parser.parse_args()
    torch.set_num_threads(1)

    dispatch = {"default": None, "true": True, "false": False}[args.dispatch_batches]
    config = DataLoaderConfiguration(dispatch_batches=dispatch, use_stateful_dataloader=args.stateful)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=args.accumulate, dataloader_config=config)
    loader = CachedDataLoader(args.dataset, cache=args.url, batch_size=args.batch_size, num_workers=args.workers)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model, optimizer, prepared = accelerator.prepare(model, optimizer, loader)
    if not args.stateful:
        accelerator.register_for_checkpointing(prepared)
    checkpoint = Path(args.out, "checkpoint")
    if args.phase == "resume":
        accelerator.load_state(str(checkpoint))

    epochs: dict[int, list[list[int]]] = {}
    flags: dict[int, list[list[bool]]] = {}
    for epoch in range(prepared.epoch, EPOCHS):
        prepared.set_epoch(epoch)
        batches, seen = epochs.setdefault(epoch, []), flags.setdefault(epoch, [])
        for batch in prepared:
            with accelerator.accumulate(model):
                assert batch["x"].device.type == accelerator.device.type, (batch["x"].device, accelerator.device)
                loss = model(batch["x"]).pow(2).mean()
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
                seen.append([accelerator.sync_gradients, accelerator.gradient_state.end_of_dataloader])
            batches.append(batch["id"].tolist())
            if args.phase == "first" and epoch == 0 and len(batches) == args.stop:
                accelerator.save_state(str(checkpoint))  # every process: the loader's state is a collective
        assert not accelerator.gradient_state.in_dataloader, "the iteration left GradientState"

    report = {
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "same_loader": prepared is loader,
        "loader_type": type(prepared).__name__,
        "epochs": {str(e): b for e, b in epochs.items()},
        "flags": {str(e): f for e, f in flags.items()},
    }
    Path(args.out, f"{args.phase}-rank{accelerator.process_index}.json").write_text(json.dumps(report))
    accelerator.end_training()


if __name__ == "__main__":
    main()
