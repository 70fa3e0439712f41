"""transformers.Trainer with a CachedDataLoader (``get_train_dataloader`` returns it) and
``CachedLoaderCallback``: fit on 2 gloo ranks, a checkpoint in the middle of an epoch, and
``resume_from_checkpoint`` delivers the rest of that epoch exactly once and the following ones whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardcache.cache import Manifest
from shardcache.errors import ConfigError

from .conftest import ROWS, check_epoch, read_ranks, rendezvous_port
from .launch import launch

pytest.importorskip("transformers")
pytestmark = pytest.mark.frameworks

EPOCHS = 3
BATCH = 16
EVERY = 15
STOP = 45  # in the middle of epoch 1: 32 batches per epoch on 2 ranks
WORLD = 2


def run(url: str, dataset: str, out: Path, tag: str, free_ports, *extra: str) -> list[dict]:  # type: ignore[no-untyped-def]
    args = [url, dataset, str(out), tag, "--epochs", str(EPOCHS), "--batch-size", str(BATCH), *extra]
    launch("hf_trainer_fit.py", args, nprocs=WORLD, port=rendezvous_port(free_ports), timeout=280)
    return read_ranks(out, tag, WORLD)


@pytest.mark.slow
def test_fit_and_resume_from_checkpoint_mid_epoch_delivers_every_id_once_per_epoch(
    framework_dataset: Manifest, redis_url: str, tmp_path: Path, free_ports
):
    first = run(redis_url, framework_dataset.name, tmp_path, "first", free_ports,
                "--every", str(EVERY), "--stop-at", str(STOP))  # fmt: skip
    assert [r["global_step"] for r in first] == [STOP] * WORLD
    checkpoint = tmp_path / "hf" / f"checkpoint-{STOP}"
    assert checkpoint.is_dir()
    second = run(redis_url, framework_dataset.name, tmp_path, "second", free_ports, "--resume", str(checkpoint))
    per_epoch = -(-(ROWS // WORLD) // BATCH)
    assert [r["len"] for r in first + second] == [per_epoch] * (2 * WORLD)
    assert [r["global_step"] for r in second] == [EPOCHS * per_epoch] * WORLD, "the resumed epoch was not cut"
    orders = []
    for epoch in range(EPOCHS):
        per_rank = [
            r["seen"].get(str(epoch), []) + s["seen"].get(str(epoch), []) for r, s in zip(first, second, strict=True)
        ]
        orders.append(check_epoch(per_rank, padding=WORLD - 1, what=f"epoch {epoch}"))
        assert {len(batches) for batches in per_rank} == {per_epoch}, f"epoch {epoch}: equal, whole batch counts"
    assert len(first[0]["seen"]["1"]) == STOP - per_epoch
    assert len(second[0]["seen"]["1"]) == 2 * per_epoch - STOP
    assert len({tuple(o) for o in orders}) == EPOCHS, "a new order each epoch"


def test_the_callback_needs_ignore_data_skip(tmp_path: Path):
    import torch
    from transformers import Trainer, TrainingArguments

    from shardcache.dataloader.hf import CachedLoaderCallback

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(ConfigError, match="ignore_data_skip=True"):
        Trainer(model=torch.nn.Linear(1, 1), args=args, callbacks=[CachedLoaderCallback()])


def test_the_callback_refuses_an_epoch_that_accumulation_does_not_divide(
    framework_dataset: Manifest, redis_url: str, tmp_path: Path
):
    import torch
    from transformers import Trainer, TrainingArguments

    from shardcache.dataloader import CachedDataLoader
    from shardcache.dataloader.hf import CachedLoaderCallback

    loader = CachedDataLoader(framework_dataset.name, cache=redis_url, batch_size=16, columns=["id"])
    assert len(loader) % 2 == 1

    class CachedTrainer(Trainer):
        def get_train_dataloader(self) -> CachedDataLoader:  # type: ignore[override]
            return loader

    args = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", ignore_data_skip=True, gradient_accumulation_steps=2
    )
    trainer = CachedTrainer(model=torch.nn.Linear(1, 1), args=args, callbacks=[CachedLoaderCallback()])
    with pytest.raises(ConfigError, match="not a multiple of gradient_accumulation_steps=2"):
        trainer.train()
