"""Lightning ``Trainer(strategy="ddp")`` with a CachedDataLoader: every sample once per epoch, a new order
each epoch, across a mid-epoch checkpoint (``ModelCheckpoint(every_n_train_steps=...)``) and a resume
on the same or another number of devices. Real processes, gloo on CPU; the ids are counted."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from shardcache.cache import Manifest

from .conftest import ROWS, check_epoch, read_ranks, rendezvous_port
from .launch import launch

pytest.importorskip("lightning")
pytestmark = [pytest.mark.slow, pytest.mark.frameworks]

EPOCHS = 3
BATCH = 16
EVERY = 15


def per_epoch(devices: int) -> int:
    return math.ceil(math.ceil(ROWS / devices) / BATCH)


def run(url: str, dataset: str, out: Path, tag: str, free_ports, **options: object) -> list[dict]:  # type: ignore[no-untyped-def]
    args = [url, dataset, str(out), tag, "--epochs", str(EPOCHS), "--batch-size", str(BATCH)]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    launch("lightning_fit.py", args, nprocs=None, port=rendezvous_port(free_ports), timeout=280)
    return read_ranks(out, tag, int(options["devices"]))  # type: ignore[call-overload]


def checkpoint(out: Path, step: int) -> str:
    (path,) = (out / "ckpt").glob(f"*step={step}.ckpt")
    return str(path)


def batches(report: dict, epoch: int) -> list[list[int]]:
    return report["seen"].get(str(epoch), [])


@pytest.mark.parametrize(
    ("workers", "before", "after"),
    [(0, 2, 2), (2, 2, 2), (0, 2, 3), (0, 3, 2)],
    ids=["w0", "w2", "w0-elastic-2to3", "w0-elastic-3to2"],
)
def test_fit_checkpoint_mid_epoch_and_resume_delivers_every_id_once_per_epoch(
    framework_dataset: Manifest, redis_url: str, tmp_path: Path, free_ports, workers: int, before: int, after: int
):
    # A checkpoint in the middle of epoch 1 (32 batches per epoch on 2 ranks, 21 on 3), then a stop.
    stop = 2 * EVERY if before == 3 else 3 * EVERY
    first = run(redis_url, framework_dataset.name, tmp_path, "first", free_ports,
                devices=before, workers=workers, every=EVERY, stop_at=stop)  # fmt: skip
    assert [r["global_step"] for r in first] == [stop] * before
    second = run(redis_url, framework_dataset.name, tmp_path, "second", free_ports,
                 devices=after, workers=workers, resume=checkpoint(tmp_path, stop))  # fmt: skip
    ranks = max(before, after)
    orders = []
    for epoch in range(EPOCHS):
        per_rank: list[list[list[int]]] = [[] for _ in range(ranks)]
        for reports in (first, second):
            for rank, report in enumerate(reports):
                per_rank[rank] = per_rank[rank] + batches(report, epoch)
        # Padding: world_size - 1 per layout the epoch ran on.
        padding = {0: before - 1, 1: (before - 1) + (after - 1), 2: after - 1}[epoch]
        orders.append(check_epoch(per_rank, padding=padding, what=f"epoch {epoch}"))
        for reports in (first, second):  # equal batch counts on every rank of each run
            assert len({len(batches(r, epoch)) for r in reports}) == 1, f"epoch {epoch}: unequal batch counts"
    assert len(batches(first[0], 1)) == stop - per_epoch(before), "epoch 1 is split by the checkpoint"
    assert batches(second[0], 1), "epoch 1 is split by the checkpoint"
    assert len(batches(second[0], 2)) == per_epoch(after), "the epoch after the resumed one is whole"
    assert first[0]["lengths"][0] == per_epoch(before)
    if after == before:
        # len(loader) is the whole epoch after load_state_dict too, so Lightning ran the resumed epoch to its
        # end (on_train_epoch_start does not run again for an epoch resumed mid-way).
        assert second[0]["lengths"] == [per_epoch(after)]
        assert [r["global_step"] for r in second] == [EPOCHS * per_epoch(after)] * after
        assert orders[0] != orders[2], "a new order each epoch (set_epoch reached the loader)"
    whole = [o for e, o in enumerate(orders) if e != 1]
    assert len({tuple(o) for o in whole}) == len(whole)
