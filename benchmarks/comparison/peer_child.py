"""Measured runs of MosaicML Streaming and LitData, in the peers virtualenv.

``.venv-peers/bin/python -m comparison.peer_child SPEC`` (SPEC as in :mod:`comparison.child`).
That interpreter has torch 2.14.1, torchvision, ``mosaicml-streaming`` and ``litdata``,
but neither pyarrow nor shardcache: this module reads the dataset from its raw arrays
(``images.u8``, ``labels.i64``), which hold the same samples as the Parquet files.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .drive import drive
from .entry import run_system
from .quality import with_quality

__all__ = ["main"]


def _samples(raw_dir: str, shape: list[int]) -> Iterator[tuple[Any, int]]:
    import numpy as np

    labels = np.fromfile(Path(raw_dir) / "labels.i64", dtype=np.int64)
    images = np.memmap(Path(raw_dir) / "images.u8", dtype=np.uint8, mode="r").reshape(len(labels), *shape)
    for i in range(len(labels)):
        yield np.asarray(images[i]), int(labels[i])


def _fresh(out: str) -> Path:
    path = Path(out)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, out: str) -> None:
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # a half-written copy is never taken for a finished one


def mds_write(*, raw_dir: str, shape: list[int], out: str, shard_size: int) -> dict[str, Any]:
    """Write the samples as MDS shards (no compression), ``shard_size`` bytes each."""
    from streaming import MDSWriter

    tmp = _fresh(out)
    began = time.perf_counter()
    encoding = "ndarray:uint8:" + ",".join(str(d) for d in shape)
    count = 0
    with MDSWriter(out=str(tmp), columns={"image": encoding, "label": "int64"}, size_limit=shard_size,
                   compression=None) as writer:
        for image, label in _samples(raw_dir, shape):
            writer.write({"image": image, "label": label})
            count += 1
    _publish(tmp, out)
    return {"seconds": time.perf_counter() - began, "samples": count, "nbytes": 0}


def litdata_write(*, raw_dir: str, shape: list[int], out: str, shard_size: int) -> dict[str, Any]:
    """Write the samples as LitData chunks of ``shard_size`` bytes with its own ``BinaryWriter``.

    ``litdata.optimize`` does the same through worker processes; the writer is what it runs.
    """
    from litdata.streaming.writer import BinaryWriter

    tmp = _fresh(out)
    began = time.perf_counter()
    writer = BinaryWriter(str(tmp), chunk_bytes=shard_size)
    count = 0
    for image, label in _samples(raw_dir, shape):
        writer[count] = {"image": image, "label": label}
        count += 1
    writer.done()
    writer.merge()
    _publish(tmp, out)
    return {"seconds": time.perf_counter() - began, "samples": count, "nbytes": 0}



def mds_read(
    *, data: str, workers: int, batch_size: int, shuffle: bool = False, quality: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A cold then a warm epoch of ``StreamingDataset`` over local MDS shards (persistent workers), no
    remote; shuffled with its defaults (algorithm ``py1e``, its default block size and seed), its
    epoch counted by itself."""
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory
    from torch.utils.data import DataLoader

    clean_stale_shared_memory()

    def make() -> Any:
        ds = StreamingDataset(local=data, remote=None, batch_size=batch_size, shuffle=shuffle)
        return DataLoader(ds, batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0)

    return with_quality(lambda record: drive(make, record=record), quality)


def litdata_read(
    *, data: str, workers: int, batch_size: int, shuffle: bool = False, quality: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A cold then a warm epoch of LitData's ``StreamingDataset`` + ``StreamingDataLoader`` over local chunks.

    ``StreamingDataLoader`` subclasses torch's DataLoader and passes ``persistent_workers`` on to it;
    it moves the dataset to its next epoch itself (a new order when shuffled).
    """
    import litdata

    def make() -> Any:
        ds = litdata.StreamingDataset(input_dir=data, shuffle=shuffle)
        return litdata.StreamingDataLoader(ds, batch_size=batch_size, num_workers=workers,
                                           persistent_workers=workers > 0)

    return with_quality(lambda record: drive(make, record=record), quality)


SYSTEMS: dict[str, Callable[..., dict[str, Any]]] = {
    "mds-write": mds_write,
    "litdata-write": litdata_write,
    "mds": mds_read,
    "litdata": litdata_read,
}


def main(argv: list[str] | None = None) -> int:
    return run_system(SYSTEMS, argv)


if __name__ == "__main__":
    sys.exit(main())
