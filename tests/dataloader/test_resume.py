"""state_dict / load_state_dict: resuming at any batch, and elastic resumption on another world size."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

import pytest

from shardcache.cache import Manifest, ShardCache
from shardcache.dataloader import CachedDataLoader
from shardcache.errors import ConfigError

from .conftest import ROWS


def id_batches(loader) -> list[list[int]]:
    return [batch["id"].tolist() for batch in loader]


def check_resumption(make_loader: Callable[[], CachedDataLoader], *, points: int = 6) -> None:
    """Stop a loader after k batches for many k; a new loader given its state yields exactly the rest.

    The state goes through JSON, as it would in a checkpoint; the iteration after the resumed one
    starts the epoch again from the beginning.
    """
    full = id_batches(make_loader())
    n = len(full)
    midpoints = sorted({0, 1, n // 3, n // 2, max(n - 1, 0), n} | set(range(2, n, max(1, n // points))))
    for k in midpoints:
        loader = make_loader()
        iterator = iter(loader)
        got = [next(iterator)["id"].tolist() for _ in range(k)]
        state = json.loads(json.dumps(loader.state_dict()))
        resumed = make_loader()
        resumed.load_state_dict(state)
        assert len(resumed) == n, "len is the whole epoch, as a framework's restored counter expects"
        assert resumed.remaining() == n - k
        assert got + id_batches(resumed) == full, f"resuming after {k} of {n} batches"
        if k == n // 2:
            assert id_batches(resumed) == full, "the next iteration is a whole epoch again"


@pytest.mark.parametrize(
    ("num_workers", "options"),
    [
        (0, {"batch_size": 48}),
        pytest.param(2, {"batch_size": 48, "drop_last": True}, marks=pytest.mark.slow),
        (0, {"batch_size": 7, "rank": 1, "world_size": 3}),
        pytest.param(2, {"batch_size": 20, "rank": 0, "world_size": 2, "shuffle": False}, marks=pytest.mark.slow),
    ],
)
def test_resume_at_many_midpoints_yields_exactly_the_rest(dataset: Manifest, cache: ShardCache, num_workers, options):
    def make() -> CachedDataLoader:
        loader = CachedDataLoader(dataset.name, cache=cache, num_workers=num_workers, **options)
        loader.set_epoch(2)
        return loader

    check_resumption(make, points=3 if num_workers else 8)


def test_resume_keeps_the_position_through_set_epoch_of_the_same_epoch(dataset: Manifest, cache: ShardCache):
    loader = CachedDataLoader(dataset.name, cache=cache, batch_size=100)
    loader.set_epoch(4)
    iterator = iter(loader)
    first = next(iterator)["id"].tolist()
    state = loader.state_dict()
    assert state["epoch"] == 4
    assert state["consumed"] == 1
    resumed = CachedDataLoader(dataset.name, cache=cache, batch_size=100)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # a training loop calls this before each epoch
    rest = id_batches(resumed)
    assert len(rest) == len(loader) - 1
    assert first not in rest
    resumed.set_epoch(5)
    assert len(id_batches(resumed)) == len(loader)


def run_elastic(
    name: str, cache: ShardCache, *, before: int, after: int, stops: list[int], batch_size: int, drop_last: bool,
    num_workers: int = 0,
) -> None:
    """Ranks of ``before`` stop after ``stops[r]`` batches; ``after`` ranks resume from their states."""
    delivered: list[int] = []
    states = []
    for rank in range(before):
        loader = CachedDataLoader(
            name, cache=cache, rank=rank, world_size=before, batch_size=batch_size, drop_last=drop_last
        )
        loader.set_epoch(1)
        iterator = iter(loader)
        for _ in range(stops[rank]):
            delivered += next(iterator)["id"].tolist()
        states.append(loader.state_dict())
    assert not set(delivered) - set(range(ROWS))
    per_rank = []
    for rank in range(after):
        loader = CachedDataLoader(
            name, cache=cache, rank=rank, world_size=after, batch_size=batch_size, drop_last=drop_last,
            num_workers=num_workers,
        )  # fmt: skip
        loader.load_state_dict(states[::-1])  # the list of every rank's state, in any order
        per_rank.append(id_batches(loader))
    assert len({len(batches) for batches in per_rank}) == 1, "every new rank yields the same number of batches"
    rest = [i for batches in per_rank for b in batches for i in b]
    counts = Counter(delivered + rest)
    duplicates = sum(c - 1 for c in counts.values())
    if drop_last:
        assert duplicates == 0
        assert ROWS - len(set(delivered)) - len(set(rest)) < after * batch_size
    else:
        assert set(counts) == set(range(ROWS)), "every sample is delivered in the epoch"
        assert duplicates <= (before - 1) + (after - 1)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize(
    ("before", "after", "stops"),
    [(4, 3, [3, 3, 3, 3]), (4, 3, [1, 4, 0, 2]), (2, 5, [5, 5]), (2, 5, [2, 7])],
)
def test_elastic_resume_on_another_world_size(dataset: Manifest, cache: ShardCache, before, after, stops, drop_last):
    run_elastic(dataset.name, cache, before=before, after=after, stops=stops, batch_size=16, drop_last=drop_last)


def test_elastic_resume_with_workers_and_another_batch_size(dataset: Manifest, cache: ShardCache):
    run_elastic(dataset.name, cache, before=2, after=5, stops=[4, 4], batch_size=24, drop_last=False, num_workers=2)


def test_one_rank_state_resumes_only_that_rank_and_layout(dataset: Manifest, cache: ShardCache):
    loader = CachedDataLoader(dataset.name, cache=cache, batch_size=16, rank=1, world_size=2)
    next(iter(loader))
    state = loader.state_dict()
    assert (state["rank"], state["consumed"]) == (1, 1)
    other = CachedDataLoader(dataset.name, cache=cache, batch_size=16, rank=0, world_size=3)
    with pytest.raises(ConfigError, match=r"pass the global state .* or the list of every rank's state"):
        other.load_state_dict(state)
    with pytest.raises(ConfigError, match=r"cover ranks \[1\], not 0\.\.1"):
        other.load_state_dict([state])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"seed": 9}, "belongs to seed=0, this loader reads seed=9"),
        ({"shuffle": False}, "belongs to shuffle=True"),
    ],
)
def test_a_state_of_another_seed_is_refused(dataset: Manifest, cache: ShardCache, change, match):
    state = CachedDataLoader(dataset.name, cache=cache, batch_size=16).state_dict()
    other = CachedDataLoader(dataset.name, cache=cache, batch_size=16, **change)
    with pytest.raises(ConfigError, match=match):
        other.load_state_dict(state)


def test_a_state_of_another_dataset_or_a_malformed_one_is_refused(dataset: Manifest, make_dataset, cache: ShardCache):
    state = CachedDataLoader(dataset.name, cache=cache, batch_size=16).state_dict()
    other = CachedDataLoader(make_dataset(rows=50).name, cache=cache, batch_size=16)
    with pytest.raises(ConfigError, match="belongs to dataset="):
        other.load_state_dict(state)
    mine = CachedDataLoader(dataset.name, cache=cache, batch_size=16)
    with pytest.raises(ConfigError, match="is not a loader state"):
        mine.load_state_dict("epoch 3")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="malformed"):
        mine.load_state_dict({k: v for k, v in state.items() if k != "history"})
    with pytest.raises(ConfigError, match="exceeds"):
        mine.load_state_dict({**state, "rank": None, "consumed": [99], "history": [
            {"world_size": 1, "batch_size": 16, "drop_last": False, "consumed": [999]}]})
    with pytest.raises(ConfigError, match="says 999 batches were delivered"):
        mine.load_state_dict({**state, "consumed": 999})
