"""Framework-facing rules checked in one process: ``set_epoch`` reaches the loader from the sampler and the
dataset (as Lightning and transformers call it), ``len`` across a resume, and foreign wrappers that
would deliver wrong data raise ConfigError (a DataLoader with a batch size, accelerate's
``skip_first_batches``, ``IterableDatasetShard``, another DataLoader's workers on a loader's dataset)."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader

from shardcache.cache import Manifest
from shardcache.dataloader import CachedDataLoader, CachedDataset
from shardcache.errors import ConfigError

from .conftest import ROWS, check_epoch

pytestmark = pytest.mark.frameworks


def ids(batches) -> list[list[int]]:  # type: ignore[no-untyped-def]
    return [b["id"].tolist() for b in batches]


def make(manifest: Manifest, url: str, **options: object) -> CachedDataLoader:
    options = {"batch_size": 16, "columns": ["id"], "seed": 3, **options}
    return CachedDataLoader(manifest.name, cache=url, **options)


def test_set_epoch_on_the_sampler_or_the_dataset_reaches_the_loader(framework_dataset: Manifest, redis_url: str):
    _set_sampler_epoch = pytest.importorskip("lightning.fabric.utilities.data")._set_sampler_epoch

    reference = make(framework_dataset, redis_url)
    reference.set_epoch(5)
    expected = ids(reference)
    loader = make(framework_dataset, redis_url)
    _set_sampler_epoch(loader, 5)  # what Lightning's fit loop calls before each epoch
    assert loader.epoch == 5
    assert ids(loader) == expected
    loader.dataset.set_epoch(6)  # type: ignore[attr-defined]
    assert loader.epoch == 6
    assert ids(loader) != expected
    loader.sampler.set_epoch(5)  # type: ignore[attr-defined]
    assert ids(loader) == expected
    assert loader.batch_sampler is None


@pytest.mark.parametrize(("before", "after"), [(2, 3), (3, 2)])
def test_len_after_an_elastic_resume_covers_the_framework_counter(
    framework_dataset: Manifest, redis_url: str, before: int, after: int
):
    stop = 5
    states, delivered = [], []
    for rank in range(before):
        loader = make(framework_dataset, redis_url, rank=rank, world_size=before)
        iterator = iter(loader)
        delivered += ids(next(iterator) for _ in range(stop))
        states.append(loader.state_dict())
        iterator.close()  # type: ignore[attr-defined]
    whole = len(make(framework_dataset, redis_url, rank=0, world_size=after))
    rest = []
    for rank in range(after):
        loader = make(framework_dataset, redis_url, rank=rank, world_size=after)
        loader.load_state_dict(states)
        remaining = loader.remaining()
        # A framework restored `stop` batches and iterates up to len: never fewer than what is left.
        assert len(loader) == max(stop + remaining, whole)
        batches = ids(loader)
        assert len(batches) == remaining
        rest.append(batches)
        assert len(loader) == max(stop + remaining, whole), "len holds through the resumed epoch"
    check_epoch([delivered, *rest], padding=(before - 1) + (after - 1), what="resumed epoch")
    if after > before:
        assert len(loader) == stop + remaining > whole


def test_a_dataloader_with_a_batch_size_is_refused(framework_dataset: Manifest, redis_url: str):
    ds = CachedDataset(framework_dataset.name, cache=redis_url, batch_size=16, columns=["id"])
    with pytest.raises(ConfigError, match=r"whole batches.*batch_size=None"):
        next(iter(DataLoader(ds, batch_size=4)))
    # batch_size=None takes its batches as they are: the whole epoch once.
    check_epoch([ids(DataLoader(ds, batch_size=None))], padding=0, what="plain DataLoader")


@pytest.mark.slow
def test_a_dataloader_with_a_batch_size_is_refused_in_workers(framework_dataset: Manifest, redis_url: str):
    ds = CachedDataset(framework_dataset.name, cache=redis_url, batch_size=16, columns=["id"])
    with pytest.raises(ConfigError, match="whole batches"):
        next(iter(DataLoader(ds, batch_size=4, num_workers=2)))
    # Without a batch size, the workers of a plain DataLoader split the epoch: every id once.
    check_epoch([ids(DataLoader(ds, batch_size=None, num_workers=2))], padding=0, what="plain DataLoader, workers")
    loader = CachedDataLoader(ds, batch_size=16, num_workers=2)
    assert len(ids(loader)) == len(loader)
    # A subclass that wraps __iter__ is still its loader's dataset.
    sub = _Wrapped(framework_dataset.name, cache=redis_url, columns=["id"])
    check_epoch([ids(CachedDataLoader(sub, batch_size=16, num_workers=2))], padding=0, what="subclass, workers")
    # Now the dataset feeds that loader: another DataLoader's workers would read the loader's plan.
    with pytest.raises(ConfigError, match="iterate that CachedDataLoader"):
        next(iter(DataLoader(ds, batch_size=None, num_workers=2)))


class _Wrapped(CachedDataset):
    def __iter__(self):  # type: ignore[no-untyped-def]
        yield from super().__iter__()


def test_accelerate_skip_first_batches_is_refused_with_the_fix(framework_dataset: Manifest, redis_url: str):
    skip_first_batches = pytest.importorskip("accelerate").skip_first_batches

    skipped = skip_first_batches(make(framework_dataset, redis_url), num_batches=3)
    with pytest.raises(ConfigError, match=r"skip_first_batches.*CachedLoaderCallback"):
        next(iter(skipped))


@pytest.mark.parametrize("module", ["transformers.trainer_pt_utils", "accelerate.data_loader"])
def test_iterable_dataset_shard_is_refused(framework_dataset: Manifest, redis_url: str, module: str):
    shard_class = pytest.importorskip(module).IterableDatasetShard
    ds = CachedDataset(framework_dataset.name, cache=redis_url, batch_size=16, columns=["id"])
    shard = shard_class(ds, batch_size=16, num_processes=2, process_index=0)
    with pytest.raises(ConfigError, match=r"IterableDatasetShard.*CachedDataLoader itself"):
        next(iter(shard))


def test_torchdata_stateful_dataloader_takes_the_batches_as_they_are(framework_dataset: Manifest, redis_url: str):
    StatefulDataLoader = pytest.importorskip("torchdata.stateful_dataloader").StatefulDataLoader  # noqa: N806

    ds = CachedDataset(framework_dataset.name, cache=redis_url, batch_size=16, columns=["id"])
    loader = StatefulDataLoader(ds, batch_size=None)
    assert len(loader) == len(ds) == -(-ROWS // 16)
    check_epoch([ids(loader)], padding=0, what="StatefulDataLoader")
