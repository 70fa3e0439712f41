"""Accelerate (real, not mocked): ``accelerator.prepare`` keeps a CachedDataLoader's sharding.

Two gloo ranks under torchrun train a model with gradient accumulation; ``save_state`` mid-epoch and
``load_state`` in a new run resume exactly once. In-process tests (one process, no torch.distributed)
cover the settings that must refuse and the end-of-loader signal.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from shardcache.dataloader import CachedDataLoader
from shardcache.errors import ConfigError

from ._launch_b import ROWS, assert_exactly_once, expect_ok, ids_dataset, read_ranks, torchrun

__all__ = ["ids_dataset"]  # the fixture, imported so that pytest finds it

accelerate = pytest.importorskip("accelerate")

BATCH = 8
STOP = 10
ACCUMULATE = 4
WORLD = 2


def flat(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


def check_flags(flags: list[list[bool]], *, offset: int = 0) -> None:
    """Accumulation syncs every ACCUMULATE batches and on the last batch; the end shows on the last only."""
    n = len(flags)
    for k, (sync, end) in enumerate(flags):
        assert end == (k == n - 1), f"end_of_dataloader at batch {k} of {n}"
        assert sync == ((k + offset + 1) % ACCUMULATE == 0 or k == n - 1), f"sync_gradients at batch {k} of {n}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        pytest.param([], id="workers0-register_for_checkpointing"),
        pytest.param(
            ["--workers", "2", "--dispatch-batches", "false", "--stateful"], id="workers2-no_dispatch-stateful"
        ),
    ],
)
def test_prepare_trains_each_id_once_and_save_load_state_resumes_exactly_once(
    ids_dataset: str, redis_url: str, tmp_path: Path, options: list[str]
) -> None:
    common = ["--url", redis_url, "--dataset", ids_dataset, "--out", str(tmp_path), "--batch-size", str(BATCH),
              "--stop", str(STOP), "--accumulate", str(ACCUMULATE), *options]  # fmt: skip
    expect_ok(torchrun("accelerate_train.py", [*common, "--phase", "first"], nproc=WORLD))
    first = read_ranks(tmp_path, "first", WORLD)
    assert all(r["same_loader"] and r["loader_type"] == "CachedDataLoader" for r in first)
    assert [(r["rank"], r["world_size"]) for r in first] == [(0, WORLD), (1, WORLD)]
    for epoch in ("0", "1"):
        per_rank = [r["epochs"][epoch] for r in first]
        assert len({len(b) for b in per_rank}) == 1, "every rank gets the same number of batches"
        assert all(len(b) == BATCH for batches in per_rank for b in batches[:-1])
        assert_exactly_once([i for batches in per_rank for i in flat(batches)], what=f"epoch {epoch}")
        for r in first:
            check_flags(r["flags"][epoch])
    assert flat(first[0]["epochs"]["0"]) != flat(first[0]["epochs"]["1"]), "set_epoch reshuffles"

    # A new run: load_state restores the loader at batch STOP of epoch 0, on every rank.
    expect_ok(torchrun("accelerate_train.py", [*common, "--phase", "resume"], nproc=WORLD))
    resumed = read_ranks(tmp_path, "resume", WORLD)
    before = [i for r in first for i in flat(r["epochs"]["0"][:STOP])]
    after = [i for r in resumed for i in flat(r["epochs"]["0"])]
    assert_exactly_once(before + after, what="epoch 0 across save_state/load_state")
    for f, r in zip(first, resumed, strict=True):
        assert r["epochs"]["0"] == f["epochs"]["0"][STOP:], "each rank continues its own batches"
        assert r["epochs"]["1"] == f["epochs"]["1"], "the next epoch is the same as without the resume"
        check_flags(r["flags"]["0"], offset=STOP)  # accelerator.step was saved and restored too
        check_flags(r["flags"]["1"])


# -- in one process: no torch.distributed, Accelerate's DistributedType.NO ----------------------------


@pytest.fixture
def fresh_state() -> Iterator[None]:
    from accelerate.state import AcceleratorState, GradientState, PartialState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def make_loader(name: str, url: str, **options: Any) -> CachedDataLoader:
    return CachedDataLoader(name, cache=url, batch_size=BATCH, **options)


def test_prepare_returns_the_loader_and_signals_the_end_for_accumulation(
    ids_dataset: str, redis_url: str, fresh_state: None
) -> None:
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=ACCUMULATE)
    loader = make_loader(ids_dataset, redis_url)
    model = accelerator.prepare(torch.nn.Linear(4, 1))
    prepared = accelerator.prepare(loader)
    assert prepared is loader
    assert loader in accelerator._dataloaders
    flags, ids = [], []
    for batch in prepared:
        with accelerator.accumulate(model):
            flags.append([accelerator.sync_gradients, accelerator.gradient_state.end_of_dataloader])
        ids.extend(batch["id"].tolist())
    assert_exactly_once(ids)
    assert len(flags) == -(-ROWS // BATCH)
    assert len(flags) % ACCUMULATE != 0, "the last accumulation is short"
    check_flags(flags)
    assert not accelerator.gradient_state.in_dataloader


def test_a_loop_cut_short_leaves_gradient_state(ids_dataset: str, redis_url: str, fresh_state: None) -> None:
    accelerator = accelerate.Accelerator(cpu=True)
    prepared = accelerator.prepare(make_loader(ids_dataset, redis_url))
    iterator = iter(prepared)
    next(iterator)
    assert accelerator.gradient_state.in_dataloader
    assert not accelerator.gradient_state.end_of_dataloader
    del iterator
    assert not accelerator.gradient_state.in_dataloader


def test_split_batches_is_refused_naming_the_setting(ids_dataset: str, redis_url: str, fresh_state: None) -> None:
    config = accelerate.DataLoaderConfiguration(split_batches=True)
    accelerator = accelerate.Accelerator(cpu=True, dataloader_config=config)
    with pytest.raises(ConfigError, match="split_batches=False"):
        accelerator.prepare(make_loader(ids_dataset, redis_url))


def test_device_placement_false_keeps_batches_where_they_are(
    ids_dataset: str, redis_url: str, fresh_state: None
) -> None:
    accelerator = accelerate.Accelerator(cpu=True, device_placement=False)
    loader = accelerator.prepare(make_loader(ids_dataset, redis_url))
    assert loader.device is None
    assert not loader.use_stateful_dataloader


@pytest.mark.parametrize("dispatch_batches", [True, False])
def test_dispatch_batches_changes_nothing(
    ids_dataset: str, redis_url: str, fresh_state: None, dispatch_batches: bool
) -> None:
    # Accelerate would read the batches on the main process and broadcast them (True), or shard them
    # again with IterableDatasetShard (False); each process reads its own batches instead.
    config = accelerate.DataLoaderConfiguration(dispatch_batches=dispatch_batches)
    accelerator = accelerate.Accelerator(cpu=True, dataloader_config=config)
    loader = make_loader(ids_dataset, redis_url, num_workers=2)
    prepared = accelerator.prepare(loader)
    assert prepared is loader
    batches = [batch["id"].tolist() for batch in prepared]
    assert all(len(b) == BATCH for b in batches[:-1])
    assert_exactly_once(flat(batches))


def test_reading_the_hook_without_an_accelerator_does_nothing(ids_dataset: str, redis_url: str) -> None:
    from accelerate.state import PartialState

    assert not PartialState._shared_state, "no Accelerator is left over from another test"
    loader = make_loader(ids_dataset, redis_url)
    assert loader._is_accelerate_prepared is False
    assert loader._accelerate is None
    assert not PartialState._shared_state, "no Accelerate state was made"


def test_the_preparing_accelerators_settings_are_read(ids_dataset: str, redis_url: str, fresh_state: None) -> None:
    config = accelerate.DataLoaderConfiguration(use_stateful_dataloader=True)
    accelerator = accelerate.Accelerator(cpu=True, dataloader_config=config)
    loader = accelerator.prepare(make_loader(ids_dataset, redis_url))
    assert loader.use_stateful_dataloader, "save_state/load_state then save the loader's state themselves"


def test_another_reader_while_an_accelerator_exists_adopts_with_its_defaults(
    ids_dataset: str, redis_url: str, fresh_state: None
) -> None:
    accelerate.Accelerator(cpu=True)
    loader = make_loader(ids_dataset, redis_url)
    assert loader._is_accelerate_prepared is True
    assert loader._accelerate is not None
    assert not loader.use_stateful_dataloader
    assert_exactly_once(flat([batch["id"].tolist() for batch in loader]))
