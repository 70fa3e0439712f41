"""A real 2-process DDP (gloo) run: ranks from torch.distributed, the collective state_dict, elastic resume."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from shardcache.cache import Manifest, ShardCache
from shardcache.dataloader import CachedDataLoader

from .conftest import ROWS
from .test_resume import id_batches

pytestmark = pytest.mark.slow

STOP = 3


def ddp_rank(rank: int, world_size: int, url: str, name: str, rendezvous: str, out: str) -> None:
    """One rank: read STOP batches, take the collective state, read the rest."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world_size)
    try:
        loader = CachedDataLoader(name, cache=url, batch_size=16)
        iterator = iter(loader)
        first = [next(iterator)["id"].tolist() for _ in range(STOP)]
        state = loader.state_dict()  # a collective: every rank calls it
        rest = [batch["id"].tolist() for batch in iterator]
        report = {"first": first, "rest": rest, "state": state, "len": len(loader),
                  "ranks": loader.cached_dataset.ranks()}  # fmt: skip
        Path(out, f"rank-{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


def test_two_ddp_ranks_split_the_epoch_and_share_one_global_state(
    dataset: Manifest, cache: ShardCache, redis_url: str, tmp_path: Path
):
    world_size = 2
    mp.start_processes(
        ddp_rank, args=(world_size, redis_url, dataset.name, f"file://{tmp_path / 'rendezvous'}", str(tmp_path)),
        nprocs=world_size, start_method="spawn", join=True,
    )  # fmt: skip
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(world_size)]
    assert [r["ranks"] for r in ranks] == [[0, 2], [1, 2]], "rank and world size come from torch.distributed"
    assert len({len(r["first"]) + len(r["rest"]) for r in ranks}) == 1, "equal batch counts"
    assert all(len(r["first"]) + len(r["rest"]) == r["len"] for r in ranks)
    counts = Counter(i for r in ranks for b in r["first"] + r["rest"] for i in b)
    assert set(counts) == set(range(ROWS))
    assert sum(c - 1 for c in counts.values()) <= world_size - 1
    state = ranks[0]["state"]
    assert state == ranks[1]["state"], "every rank gets the gathered global state"
    assert (state["rank"], state["consumed"], state["world_size"]) == (None, [STOP, STOP], 2)
    # Elastic: the global state resumes on three ranks, which deliver exactly what is left.
    delivered = [i for r in ranks for b in r["first"] for i in b]
    rest = []
    for rank in range(3):
        loader = CachedDataLoader(dataset.name, cache=cache, batch_size=16, rank=rank, world_size=3)
        loader.load_state_dict(state)
        rest.append(id_batches(loader))
    assert len({len(batches) for batches in rest}) == 1
    resumed = Counter(delivered + [i for batches in rest for b in batches for i in b])
    assert set(resumed) == set(range(ROWS))
    assert sum(c - 1 for c in resumed.values()) <= (world_size - 1) + 2
