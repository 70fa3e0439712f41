"""ReadAhead: shards load in first-use order, within the byte budget, without deadlock; errors reach get()."""

from __future__ import annotations

import threading

import pytest

from shardcache.dataloader.readahead import Need, ReadAhead


def schedule(uses: list[tuple[int, int]], nbytes: int = 10) -> list[Need]:
    return [Need(shard=s, first=first, last=last, nbytes=nbytes) for s, (first, last) in enumerate(uses)]


def consume(ahead: ReadAhead[int], batches: list[list[int]]) -> list[list[int]]:
    got = []
    for pos, shards in enumerate(batches):
        ahead.advance(pos)
        got.append([ahead.get(s) for s in shards])
    return got


def test_shards_arrive_for_every_batch_and_the_budget_holds():
    loaded: list[int] = []
    lock = threading.Lock()

    def load(shard: int) -> int:
        with lock:
            loaded.append(shard)
        return shard * 100

    # Each shard is used by two consecutive batches; the budget fits three shards.
    uses = [(k, k + 1) for k in range(12)]
    batches = [[k - 1, k] if k else [0] for k in range(12)]
    with ReadAhead(load, schedule(uses), budget=30, threads=3) as ahead:
        assert consume(ahead, batches) == [[s * 100 for s in b] for b in batches]
        assert ahead.peak_bytes <= 30
    assert sorted(loaded) == list(range(12))


def test_a_budget_below_the_working_set_still_makes_progress():
    # Every batch needs three shards at once, the budget fits one: needed shards are let through.
    uses = [(0, 5), (0, 5), (0, 5), (6, 9), (6, 9), (6, 9)]
    batches = [[0, 1, 2]] * 6 + [[3, 4, 5]] * 4
    with ReadAhead(lambda s: s, schedule(uses), budget=1, threads=2) as ahead:
        assert consume(ahead, batches) == batches


def test_a_load_error_is_raised_in_the_consumer():
    def load(shard: int) -> int:
        if shard == 2:
            raise OSError("disk on fire")
        return shard

    with ReadAhead(load, schedule([(0, 0), (1, 1), (2, 2), (3, 3)]), budget=100) as ahead:
        assert consume(ahead, [[0], [1]]) == [[0], [1]]
        ahead.advance(2)
        with pytest.raises(OSError, match="disk on fire"):
            ahead.get(2)


def test_close_stops_the_threads_and_releases_everything():
    ahead = ReadAhead(lambda s: s, schedule([(k, k) for k in range(50)]), budget=20, threads=2)
    ahead.get(0)
    ahead.close()
    for thread in ahead._threads:
        thread.join(timeout=5)
        assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="closed before shard 40"):
        ahead.get(40)


def test_dispatched_once_every_shard_is_loading() -> None:
    release = threading.Event()

    def load(shard: int) -> int:
        release.wait(5)
        return shard

    uses = [(0, 0), (0, 1), (1, 1)]
    with ReadAhead(load, schedule(uses), budget=10, threads=1) as ahead:
        assert not ahead.dispatched  # shard 0 loads, the budget holds the others back
        release.set()
        assert consume(ahead, [[0, 1], [1, 2]]) == [[0, 1], [1, 2]]
        assert ahead.dispatched
