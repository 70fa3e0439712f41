"""What it costs a DataLoader worker to hand a batch to the training process, on this machine.

    python benchmarks/worker_handoff.py               # 38 MB batches (256 x 3x224x224 uint8)
    python benchmarks/worker_handoff.py --quick       # seconds, for tests

Two measurements, each against its baseline in the same run (medians, ratios):

1. Building a batch in a fresh shared-memory block (what PyTorch does per batch, and what
   shardcache's workers did before ``dataloader/slots.py``) against copying into a reused one:
   the fresh block's pages are faulted in and zero-filled every time.
2. A DataLoader worker sending an already-shared tensor per batch against sending an int: the
   file-descriptor passing and mapping that every batch from a worker pays, whatever is in it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

__all__ = ["main"]


def _median_ms(fn: Callable[[], object], rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return 1e3 * statistics.median(times)


def fill_costs(nbytes: int, rounds: int) -> tuple[float, float]:
    """Milliseconds to fill ``nbytes``: into a fresh shared-memory block, and into a reused one."""
    source = np.full(nbytes, 7, dtype=np.uint8)
    reused = np.empty_like(source)

    def fresh() -> None:
        storage = torch.UntypedStorage._new_shared(nbytes)
        torch.empty(0, dtype=torch.uint8).set_(storage).numpy()[:] = source

    def again() -> None:
        reused[:] = source

    return _median_ms(fresh, rounds), _median_ms(again, rounds)


class _Send(IterableDataset):  # type: ignore[type-arg]
    def __init__(self, *, count: int, nbytes: int, tensor: bool) -> None:
        self.count, self.nbytes, self.tensor = count, nbytes, tensor

    def __iter__(self) -> Iterator[object]:
        block = torch.ones(self.nbytes, dtype=torch.uint8).share_memory_()
        for i in range(self.count):
            yield block if self.tensor else i


def handoff_us(*, count: int, nbytes: int, tensor: bool) -> float:
    """Microseconds per batch for one worker sending ``count`` items (the first, start-up, not timed)."""
    it = iter(DataLoader(_Send(count=count, nbytes=nbytes, tensor=tensor), batch_size=None, num_workers=1))
    next(it)
    began = time.perf_counter()
    n = sum(1 for _ in it)
    return 1e6 * (time.perf_counter() - began) / n


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--mb", type=float, default=256 * 3 * 224 * 224 / 1e6, help="batch size in MB (default 38.5)")
    p.add_argument("--rounds", type=int, default=15, help="rounds of each fill (default 15)")
    p.add_argument("--batches", type=int, default=1000, help="batches each handoff run sends (default 1000)")
    p.add_argument("--quick", action="store_true", help="small and short, for tests")
    ns = p.parse_args(argv)
    mb, rounds, batches = (2.0, 3, 50) if ns.quick else (ns.mb, ns.rounds, ns.batches)
    nbytes = int(mb * 1e6)
    fresh, reused = fill_costs(nbytes, rounds)
    print(f"fill a {mb:.1f} MB batch: fresh shared-memory block {fresh:.1f} ms, reused block {reused:.1f} ms "
          f"-> fresh / reused = {fresh / reused:.1f}x")
    sent = statistics.median(handoff_us(count=batches, nbytes=nbytes, tensor=True) for _ in range(3))
    ints = statistics.median(handoff_us(count=batches, nbytes=nbytes, tensor=False) for _ in range(3))
    print(f"worker -> main, per batch: a shared tensor {sent:.0f} us, an int {ints:.0f} us "
          f"-> the tensor's handoff costs {sent - ints:.0f} us ({sent / ints:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
