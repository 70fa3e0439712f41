"""Lightning ``Trainer(strategy="ddp")`` with a CachedDataLoader: every sample once per epoch, a new order
each epoch, across a mid-epoch checkpoint (``ModelCheckpoint(every_n_train_steps=...)``) and a resume
on the same or another number of devices. Real processes, gloo on CPU; the ids are counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardcache.cache import Manifest

from .conftest import check_epoch, read_ranks, rendezvous_port
from .launch import launch

pytest.importorskip("lightning")
pytestmark = [pytest.mark.slow, pytest.mark.frameworks]

EPOCHS = 3
BATCH = 16
EVERY = 15
STOP = 45  # a checkpoint in the middle of epoch 1 (2 ranks: 32 batches per epoch)


def run(url: str, dataset: str, out: Path, tag: str, free_ports, **options: object) -> list[dict]:  # type: ignore[no-untyped-def]
    devices = int(options.get("devices", 2))  # type: ignore[call-overload]
    args = [url, dataset, str(out), tag, "--epochs", str(EPOCHS), "--batch-size", str(BATCH)]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    launch("lightning_fit.py", args, nprocs=None, port=rendezvous_port(free_ports), timeout=280)
    return read_ranks(out, tag, devices)


def checkpoint(out: Path, step: int) -> str:
    (path,) = (out / "ckpt").glob(f"*step={step}.ckpt")
    return str(path)


def batches(report: dict, epoch: int) -> list[list[int]]:
    return report["seen"].get(str(epoch), [])


@pytest.mark.parametrize(("workers", "after"), [(0, 2), (2, 2), (0, 3)], ids=["w0", "w2", "w0-elastic-2to3"])
def test_fit_checkpoint_mid_epoch_and_resume_delivers_every_id_once_per_epoch(
    framework_dataset: Manifest, redis_url: str, tmp_path: Path, free_ports, workers: int, after: int
):
    first = run(redis_url, framework_dataset.name, tmp_path, "first", free_ports,
                devices=2, workers=workers, every=EVERY, stop_at=STOP)  # fmt: skip
    assert [r["global_step"] for r in first] == [STOP, STOP]
    second = run(redis_url, framework_dataset.name, tmp_path, "second", free_ports,
                 devices=after, workers=workers, resume=checkpoint(tmp_path, STOP))  # fmt: skip
    orders = []
    for epoch in range(EPOCHS):
        per_rank = [batches(r, epoch) for r in first] + [[] for _ in range(after - 2)]
        for rank, report in enumerate(second):
            per_rank[rank] = per_rank[rank] + batches(report, epoch)
        resumed = bool(batches(first[0], epoch)) and bool(batches(second[0], epoch))
        # Padding: world_size - 1 per layout the epoch ran on.
        padding = (2 - 1) + (after - 1) * resumed if epoch < 2 else after - 1
        orders.append(check_epoch(per_rank, padding=padding, what=f"epoch {epoch}"))
        for run_reports in (first, second):  # equal batch counts on every rank of each run
            assert len({len(batches(r, epoch)) for r in run_reports}) == 1, f"epoch {epoch}: unequal batch counts"
    assert batches(first[0], 1), "epoch 1 is split by the checkpoint"
    assert batches(second[0], 1), "epoch 1 is split by the checkpoint"
    full_epoch = -(-(1000 // 2) // BATCH)
    assert len(batches(first[0], 1)) == STOP - full_epoch
    assert first[0]["lengths"][0] == full_epoch
    if after == 2:
        # len(loader) is the whole epoch after load_state_dict too, so Lightning ran epoch 2 whole.
        # (on_train_epoch_start does not run again for the epoch resumed mid-way)
        assert second[0]["lengths"] == [full_epoch]
        assert [r["global_step"] for r in second] == [EPOCHS * full_epoch] * 2
        assert orders[0] != orders[2], "a new order each epoch (set_epoch reached the loader)"
    whole = [o for e, o in enumerate(orders) if e != 1]
    assert len({tuple(o) for o in whole}) == len(whole)
