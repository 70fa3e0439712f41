"""The main job end to end on one machine: ``shardcache demo``.

1. start a local Redis Cluster (3 primaries, 1 replica each) in ``workdir``;
2. write a synthetic image-classification dataset to Parquet (3x64x64 uint8 images, 10 labels);
3. prefetch it into the cluster;
4. train a small CNN with ``world_size``-process DDP (gloo, CPU) reading through CachedDataLoader;
5. report samples/s, the cache hit ratio and the fraction of time the training loop waited for data.

>>> result = run_demo(samples=2000)      # doctest: +SKIP
>>> print(result.summary())              # doctest: +SKIP

The images encode their label in their brightness, so the loss visibly falls within one epoch.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ConfigError, ShardCacheError
from .localcluster import LocalCluster
from .units import format_bytes

__all__ = ["DemoResult", "run_demo"]

log = logging.getLogger(__name__)

DATASET = "demo-images"
CLASSES = 10
_ROWS_PER_GROUP = 2048
_PORT_RANGE = (40000, 55000)  # cluster bus ports (port + 10000) stay below 65536


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured. ``samples_per_second`` counts every rank's samples over the slowest
    rank's training time; ``wait_fraction`` is the share of it the ranks spent waiting for batches."""

    samples: int
    image_size: int
    epochs: int
    world_size: int
    batch_size: int
    num_workers: int
    dataset_bytes: int
    shards: int
    prefetch_seconds: float
    train_seconds: float
    samples_per_second: float
    mb_per_second: float
    hit_ratio: float
    wait_fraction: float
    read_throughs: int
    first_loss: float
    last_loss: float
    accuracy: float
    samples_seen: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return "\n".join(
            [
                f"dataset      {self.samples} images of 3x{self.image_size}x{self.image_size} "
                f"({format_bytes(self.dataset_bytes)}) in {self.shards} shards, prefetched in "
                f"{self.prefetch_seconds:.1f} s",
                f"training     {self.epochs} epoch(s), {self.world_size}-process DDP (gloo, CPU), batch size "
                f"{self.batch_size}, {self.num_workers} loader worker(s) per rank",
                f"throughput   {self.samples_per_second:,.0f} samples/s ({self.mb_per_second:,.1f} MB/s) "
                f"over {self.train_seconds:.1f} s; {self.samples_seen} samples delivered",
                f"cache        hit ratio {self.hit_ratio:.1%}, {self.read_throughs} shard(s) read through",
                f"waiting      {self.wait_fraction:.1%} of the training time waiting for data",
                f"model        loss {self.first_loss:.3f} -> {self.last_loss:.3f}, accuracy of the last "
                f"epoch {self.accuracy:.1%}",
            ]
        )


def run_demo(
    *,
    workdir: str | os.PathLike[str] | None = None,
    samples: int = 20_000,
    image_size: int = 64,
    epochs: int = 1,
    world_size: int = 2,
    batch_size: int = 64,
    num_workers: int = 0,
    port: int | None = None,
    replicas: int = 1,
    seed: int = 0,
) -> DemoResult:
    """Run the demo (see the module docstring); the cluster is stopped before it returns.

    ``workdir`` keeps the cluster's files, the Parquet source and the DDP rendezvous (default: a
    temporary folder, removed afterwards). ``port`` is the first of the cluster's ports (default: a
    free block). ``num_workers`` defaults to 0: on a two-core machine loading in the training
    process, with the loader's read-ahead threads fetching shards in the background, beats shipping
    every batch between processes. Takes under a minute for the default 20,000 images on two cores.
    """
    _check(samples=samples, image_size=image_size, epochs=epochs, world_size=world_size,
           batch_size=batch_size, num_workers=num_workers, replicas=replicas)  # fmt: skip
    with _workdir(workdir) as root:
        cluster = _start_cluster(root / "cluster", port=port, replicas=replicas)
        try:
            return _run(root, cluster.url, samples=samples, image_size=image_size, epochs=epochs,
                        world_size=world_size, batch_size=batch_size, num_workers=num_workers, seed=seed)  # fmt: skip
        finally:
            cluster.stop()


def _check(**values: int) -> None:
    minimum = {"num_workers": 0, "replicas": 0, "image_size": 8}
    for name, value in values.items():
        low = minimum.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name}={value!r} is invalid: pass an integer >= {low}")


@contextmanager
def _workdir(workdir: str | os.PathLike[str] | None) -> Iterator[Path]:
    if workdir is not None:
        root = Path(workdir).absolute()
        root.mkdir(parents=True, exist_ok=True)
        yield root
        return
    with tempfile.TemporaryDirectory(prefix="shardcache-demo-") as tmp:
        yield Path(tmp)


def _start_cluster(directory: Path, *, port: int | None, replicas: int) -> LocalCluster:
    nodes = 3 * (1 + replicas)
    # Without port=, random blocks, so that demos running side by side rarely collide.
    bases = [port] if port is not None else random.sample(range(_PORT_RANGE[0], _PORT_RANGE[1] - nodes, nodes), k=20)
    last: ShardCacheError | None = None
    for base in bases:
        cluster = LocalCluster(masters=3, replicas=replicas, port=base, dir=directory)
        try:
            cluster.start(timeout=60)  # refuses ports in use (ConfigError) and cleans up after a failure
        except ShardCacheError as exc:
            if port is not None:
                raise
            log.info("could not start the demo cluster on port %d: %s", base, exc)
            last = exc
            continue
        return cluster
    raise ConfigError(f"could not start the demo cluster on {len(bases)} blocks of ports ({last}); pass port=")


def write_images(path: Path, *, samples: int, image_size: int, seed: int = 0) -> int:
    """Write ``samples`` labelled images to one Parquet file; returns the bytes of image data.

    Each image is noise plus a brightness of ``12 * label``, so the label can be learnt.
    """
    pixels = 3 * image_size * image_size
    schema = pa.schema([("image", pa.binary(pixels)), ("label", pa.int64())])
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, schema, compression="none") as writer:
        for start in range(0, samples, _ROWS_PER_GROUP):
            rows = min(_ROWS_PER_GROUP, samples - start)
            labels = rng.integers(0, CLASSES, rows)
            images = rng.integers(0, 128, (rows, pixels), dtype=np.uint8) + (12 * labels).astype(np.uint8)[:, None]
            image_array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(pixels), rows, [None, pa.py_buffer(images)])
            writer.write_table(pa.table({"image": image_array, "label": pa.array(labels)}, schema=schema))
    return samples * pixels


def _run(root: Path, url: str, *, samples: int, image_size: int, epochs: int, world_size: int,
         batch_size: int, num_workers: int, seed: int) -> DemoResult:  # fmt: skip
    import torch.multiprocessing as mp

    from .prefetcher import prefetch

    source = root / "source" / "images.parquet"
    dataset_bytes = write_images(source, samples=samples, image_size=image_size, seed=seed)
    started = time.perf_counter()
    manifest = prefetch(str(source), dataset=DATASET, cache=url)
    prefetch_seconds = time.perf_counter() - started
    log.info("prefetched %d shards in %.1f s", manifest.num_shards, prefetch_seconds)
    results = root / f"results-{os.getpid()}-{time.time_ns()}"
    results.mkdir()
    job = {"url": url, "image_size": image_size, "epochs": epochs, "world_size": world_size,
           "batch_size": batch_size, "num_workers": num_workers, "seed": seed,
           "rendezvous": f"file://{results / 'rendezvous'}", "results": str(results)}  # fmt: skip
    mp.start_processes(_train_rank, args=(job,), nprocs=world_size, start_method="spawn", join=True)
    ranks = [json.loads((results / f"rank-{r}.json").read_text()) for r in range(world_size)]
    train_seconds = max(r["seconds"] for r in ranks)
    seen = sum(r["samples"] for r in ranks)
    hits = sum(r["stats"]["hits"] for r in ranks)
    misses = sum(r["stats"]["misses"] for r in ranks)
    return DemoResult(
        samples=samples,
        image_size=image_size,
        epochs=epochs,
        world_size=world_size,
        batch_size=batch_size,
        num_workers=num_workers,
        dataset_bytes=dataset_bytes,
        shards=manifest.num_shards,
        prefetch_seconds=prefetch_seconds,
        train_seconds=train_seconds,
        samples_per_second=seen / train_seconds,
        mb_per_second=seen * 3 * image_size * image_size / train_seconds / 1e6,
        hit_ratio=hits / (hits + misses) if hits + misses else 0.0,
        wait_fraction=sum(r["stats"]["wait_seconds"] for r in ranks) / sum(r["seconds"] for r in ranks),
        read_throughs=sum(r["stats"]["read_throughs"] for r in ranks),
        first_loss=float(np.mean([r["first_loss"] for r in ranks])),
        last_loss=float(np.mean([r["last_loss"] for r in ranks])),
        accuracy=sum(r["correct"] for r in ranks) / max(1, sum(r["last_epoch_samples"] for r in ranks)),
        samples_seen=seen,
    )


def _model(image_size: int) -> Any:
    from torch import nn

    del image_size  # global average pooling makes the model independent of the image size
    return nn.Sequential(
        nn.Conv2d(3, 16, kernel_size=5, stride=4, padding=2),
        nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, CLASSES),
    )


def _train_rank(rank: int, job: dict[str, Any]) -> None:
    """One DDP rank: train on the batches CachedDataLoader gives it and write what it measured."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from .dataloader import CachedDataLoader

    torch.set_num_threads(1)  # the ranks share a small machine with their loader workers and Redis
    dist.init_process_group("gloo", init_method=job["rendezvous"], rank=rank, world_size=job["world_size"])
    try:
        torch.manual_seed(job["seed"])
        size = job["image_size"]
        model = DistributedDataParallel(_model(size))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()
        loader = CachedDataLoader(
            DATASET, cache=job["url"], batch_size=job["batch_size"], num_workers=job["num_workers"],
            persistent_workers=job["num_workers"] > 0, seed=job["seed"],
        )  # fmt: skip
        losses: list[float] = []
        samples = correct = last_epoch_samples = 0
        started = time.perf_counter()
        for epoch in range(job["epochs"]):
            loader.set_epoch(epoch)
            correct = last_epoch_samples = 0
            for batch in loader:
                images = batch["image"].view(-1, 3, size, size).float().div_(255.0)
                labels = batch["label"]
                optimizer.zero_grad(set_to_none=True)
                logits = model(images)
                loss = loss_fn(logits, labels)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                samples += len(labels)
                last_epoch_samples += len(labels)
                correct += int((logits.argmax(1) == labels).sum())
        seconds = time.perf_counter() - started
        window = max(1, len(losses) // 10)
        report = {
            "seconds": seconds,
            "samples": samples,
            "correct": correct,
            "last_epoch_samples": last_epoch_samples,
            "first_loss": float(np.mean(losses[:window])) if losses else float("nan"),
            "last_loss": float(np.mean(losses[-window:])) if losses else float("nan"),
            "stats": loader.stats().as_dict(),
        }
        Path(job["results"], f"rank-{rank}.json").write_text(json.dumps(report))
        dist.barrier()
    finally:
        dist.destroy_process_group()
