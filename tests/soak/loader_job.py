"""One rank of the soak test: reads ``epochs`` epochs of a dataset and saves the ids it delivered.

    python loader_job.py URL DATASET RANK WORLD_SIZE EPOCHS OUT_DIR

Waits until the dataset's first version exists (the prefetcher runs alongside), then prints
``epoch E`` after each epoch and writes ``OUT_DIR/rank-R-epoch-E.npy`` (the ids, in delivery
order) and, at the end, ``OUT_DIR/rank-R.json`` (batch counts, seconds, loader stats). Any
exception propagates: a non-zero exit status is an error the soak test counts.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from shardcache.cache import RetryPolicy, connect
from shardcache.dataloader import CachedDataLoader
from shardcache.errors import DatasetNotFound

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from faults.harness import batch_ids

WAIT_FOR_PREFETCH_S = 60.0


def main(argv: list[str]) -> int:
    url, dataset, rank, world, epochs, out = argv[0], argv[1], int(argv[2]), int(argv[3]), int(argv[4]), Path(argv[5])
    cache = connect(url, retry=RetryPolicy(deadline=15.0), env={})
    deadline = time.monotonic() + WAIT_FOR_PREFETCH_S
    while True:
        try:
            loader = CachedDataLoader(dataset, cache=cache, batch_size=128, rank=rank, world_size=world, seed=11,
                                      readahead="4MiB")
            break
        except DatasetNotFound:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    batches, started = [], time.perf_counter()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        ids: list[int] = []
        count = 0
        for batch in loader:
            ids += batch_ids(batch)
            count += 1
        np.save(out / f"rank-{rank}-epoch-{epoch}.npy", np.asarray(ids, dtype=np.int64))
        batches.append(count)
        print(f"epoch {epoch}", flush=True)
    summary = {"batches": batches, "seconds": time.perf_counter() - started, "stats": loader.stats().as_dict()}
    (out / f"rank-{rank}.json").write_text(json.dumps(summary))
    cache.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
