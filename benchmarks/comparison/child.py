"""One measured run of one system, in a fresh process of the main virtualenv.

``python -m comparison.child SPEC`` where SPEC is a JSON object with ``"system"`` and
that system's arguments. The last line on stdout is ``RESULT {json}``: seconds,
bytes, samples, and the peak memory of the process and its workers (see
:mod:`comparison.rss`). DataLoader-based systems are measured on a warm epoch with
persistent workers, after a cold first epoch whose time to first batch, seconds and
samples come too (see :mod:`comparison.drive`). Every run starts from a fresh
interpreter, so one system's memory never shows up in another's figure.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .drive import drive
from .entry import run_system
from .quality import with_quality

__all__ = ["main"]

_MiB = 1 << 20


# -- references ------------------------------------------------------------------------


def memcpy(*, nbytes: int) -> dict[str, Any]:
    """Copy ``nbytes`` into a preallocated array, 64 MiB at a time (after one untimed copy)."""
    import numpy as np

    block = min(nbytes, 64 * _MiB)
    src = np.full(block, 7, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in before the clock starts
    began = time.perf_counter()
    done = 0
    while done < nbytes:
        np.copyto(dst, src)
        done += block
    return {"seconds": time.perf_counter() - began, "nbytes": done}


def tcp(*, nbytes: int, chunk: int = _MiB) -> dict[str, Any]:
    """Send ``nbytes`` over loopback TCP (``sendall``) and receive them into a reused buffer."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        payload = b"\x07" * chunk

        def send() -> None:
            with socket.create_connection(("127.0.0.1", port)) as out:
                sent = 0
                while sent < nbytes:
                    out.sendall(payload)
                    sent += chunk

        sender = threading.Thread(target=send, name="bench-tcp-send", daemon=True)
        began = time.perf_counter()
        sender.start()
        conn, _ = server.accept()
        with conn:
            view = memoryview(bytearray(chunk))
            received = 0
            while received < nbytes:
                got = conn.recv_into(view)
                if not got:
                    break
                received += got
        seconds = time.perf_counter() - began
        sender.join()
    return {"seconds": seconds, "nbytes": received}


# -- bare redis-py loops -------------------------------------------------------------------


def _cluster(host: str, port: int) -> Any:
    from redis.cluster import RedisCluster

    return RedisCluster(host=host, port=port)


def _get_loop(host: str, port: int, keys: list[str], barrier: Any) -> tuple[float, float, int]:
    client = _cluster(host, port)
    client.get(keys[0])  # open the connections before the clock starts
    if barrier is not None:
        barrier.wait()
    began = time.perf_counter()
    nbytes = 0
    for key in keys:
        value = client.get(key)
        if value is None:
            raise RuntimeError(f"key {key!r} is missing from the cache; the dataset was evicted or deleted")
        nbytes += len(value)
    ended = time.perf_counter()
    client.close()
    return began, ended, nbytes


def _get_worker(host: str, port: int, keys: list[str], barrier: Any, out: Any) -> None:
    out.put(_get_loop(host, port, keys, barrier))


def get(*, host: str, port: int, keys_file: str, workers: int) -> dict[str, Any]:
    """GET every shard key, one at a time; ``workers`` processes split the keys like loader workers.

    Workers wait on a barrier after connecting; the time runs from the first start to the last end.
    """
    doc = json.loads(Path(keys_file).read_text())
    keys: list[str] = doc["keys"]
    if workers == 0:
        began, ended, nbytes = _get_loop(host, port, keys, None)
        return {"seconds": ended - began, "nbytes": nbytes, "samples": doc["rows"]}
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(workers)
    queue = ctx.SimpleQueue()
    procs = [
        ctx.Process(target=_get_worker, args=(host, port, keys[w::workers], barrier, queue), name=f"bench-get-{w}")
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"a GET worker failed (exit codes {[p.exitcode for p in procs]})")
    spans = [queue.get() for _ in procs]
    seconds = max(s[1] for s in spans) - min(s[0] for s in spans)
    return {"seconds": seconds, "nbytes": sum(s[2] for s in spans), "samples": doc["rows"]}


def handloop(
    *, host: str, port: int, keys_file: str, workers: int, batch_size: int, shape: list[int]
) -> dict[str, Any]:
    """A minimal hand-written Redis -> DataLoader loop: what any Redis-based loader could reach through
    torch's DataLoader. Each worker GETs its shards, opens them as Arrow without a copy and yields
    zero-copy batch views; no checksum, no shuffle, no batches across shards, no read-ahead.
    Measured like the other loaders: a warm epoch after a cold one, workers kept alive."""
    import numpy as np
    import pyarrow as pa
    import redis.cluster  # imported before the clock starts, as shardcache is for CachedDataLoader
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    doc = json.loads(Path(keys_file).read_text())
    shards: list[list[str]] = doc["shards"]

    class Shards(IterableDataset):
        def __iter__(self) -> Iterator[dict[str, Any]]:
            info = get_worker_info()
            mine = shards if info is None else shards[info.id :: info.num_workers]
            client = redis.cluster.RedisCluster(host=host, port=port)
            for chunk_keys in mine:
                parts: list[bytes] = [client.get(k) for k in chunk_keys]  # type: ignore[misc]
                payload = parts[0] if len(parts) == 1 else b"".join(parts)
                table = pa.ipc.open_stream(pa.py_buffer(payload)).read_all().combine_chunks()
                images, labels = table.column("image").chunk(0), table.column("label").chunk(0)
                width = images.type.byte_width
                flat = np.frombuffer(images.buffers()[1], dtype=np.uint8, count=len(images) * width,
                                     offset=images.offset * width).reshape(len(images), *shape)
                label = labels.to_numpy()
                for start in range(0, len(images), batch_size):
                    yield {"image": torch.from_numpy(flat[start : start + batch_size]),
                           "label": torch.from_numpy(label[start : start + batch_size])}

    return drive(lambda: DataLoader(Shards(), batch_size=None, num_workers=workers, persistent_workers=workers > 0))


def set_loop(*, host: str, port: int, raw_file: str, nbytes: int, value_size: int, rows: int) -> dict[str, Any]:
    """SET ``nbytes`` read from the raw image file as ``value_size`` values, one at a time; then delete them."""
    import numpy as np

    data = np.memmap(raw_file, dtype=np.uint8, mode="r")
    view = memoryview(data)[:nbytes]  # type: ignore[arg-type]
    client = _cluster(host, port)
    keys = [f"bench:set:{i}" for i in range(0, nbytes, value_size)]
    client.set("bench:set:warm", b"x")
    began = time.perf_counter()
    for key, start in zip(keys, range(0, nbytes, value_size), strict=True):
        client.set(key, view[start : start + value_size])
    seconds = time.perf_counter() - began
    for key in [*keys, "bench:set:warm"]:
        client.unlink(key)
    client.close()
    return {"seconds": seconds, "nbytes": nbytes, "samples": rows}


# -- shardcache ------------------------------------------------------------------------------


def prefetch(*, source: str, url: str, dataset: str, shard_size: int, keep: bool) -> dict[str, Any]:
    """Prefetch ``source`` (local Parquet) into the cache; unless ``keep``, delete it afterwards (untimed)."""
    from shardcache.cache import connect
    from shardcache.prefetcher import prefetch as run_prefetch

    began = time.perf_counter()
    manifest = run_prefetch(source, dataset=dataset, cache=url, shard_size=shard_size)
    seconds = time.perf_counter() - began
    if not keep:
        with connect(url) as cache:
            cache.delete(dataset, force=True)
    return {"seconds": seconds, "nbytes": manifest.nbytes, "samples": manifest.num_rows}


def cached(
    *, url: str, dataset: str, workers: int, batch_size: int, shuffle: bool = False,
    quality: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A cold then a warm epoch of CachedDataLoader (persistent workers), ``set_epoch`` before each
    (a new order each epoch when shuffled); ``quality``: the shuffle's, from the first epoch."""
    from shardcache.dataloader import CachedDataLoader, CachedDataset

    def make() -> Any:
        ds = CachedDataset(dataset, cache=url, shuffle=shuffle)
        # torch refuses persistent_workers without workers.
        return CachedDataLoader(ds, batch_size=batch_size, num_workers=workers, pin_memory=False,
                                persistent_workers=workers > 0)

    return with_quality(lambda record: drive(make, record=record, before_epoch=lambda ld, e: ld.set_epoch(e)),
                         quality)



# -- plain torch DataLoader over Parquet (local disk or S3) ----------------------------------


def _s3_filesystem(s3: dict[str, Any]) -> Any:
    from pyarrow import fs

    return fs.S3FileSystem(
        access_key=s3["access_key"], secret_key=s3["secret_key"], endpoint_override=s3["endpoint"],
        scheme="http", region=s3.get("region", "us-east-1"),
    )


def _parquet_dataset(
    files: list[str], batch_size: int, s3: dict[str, Any] | None, shape: list[int], *, shuffle: bool = False,
    buffer: int = 0, seed: int = 0,
) -> Any:
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from torch.utils.data import IterableDataset, get_worker_info

    class ParquetBatches(IterableDataset):
        """What a user would write: each worker reads its files, whole batches built with Arrow.

        Shuffled: every epoch the row groups of all files are put in a new random order and dealt
        out to the workers; each worker passes their rows through a shuffle buffer of ``buffer``
        samples and emits batches of random samples from it (the buffer's free slots are then
        refilled from the next rows), then drains it in random order at the end.
        """

        def __init__(self) -> None:
            self.epoch = 0

        def __iter__(self) -> Iterator[dict[str, Any]]:
            info = get_worker_info()
            # Built here, in the worker: an S3 client does not survive fork.
            filesystem = _s3_filesystem(s3) if s3 else None
            if not shuffle:
                mine = files if info is None else files[info.id :: info.num_workers]
                for path in mine:
                    pf = pq.ParquetFile(path, filesystem=filesystem, pre_buffer=s3 is not None)
                    for batch in pf.iter_batches(batch_size=batch_size, columns=["image", "label"]):
                        images, labels = _columns(batch)
                        yield {"image": torch.from_numpy(images).view(len(labels), *shape),
                               "label": torch.from_numpy(labels)}
                return
            # The DataLoader copies the dataset into each worker once (persistent workers): each copy
            # counts its own epochs, in step with the others.
            epoch, self.epoch = self.epoch, self.epoch + 1
            opened = {path: pq.ParquetFile(path, filesystem=filesystem, pre_buffer=s3 is not None) for path in files}
            groups = [(path, g) for path in files for g in range(opened[path].num_row_groups)]
            rng = np.random.default_rng([seed, epoch])
            groups = [groups[k] for k in rng.permutation(len(groups))]
            if info is not None:
                groups = groups[info.id :: info.num_workers]
                rng = np.random.default_rng([seed, epoch, info.id + 1])
            yield from _shuffle_buffer(opened, groups, rng, capacity=max(buffer, batch_size), batch_size=batch_size,
                                       shape=shape)

    return ParquetBatches()


def _columns(batch: Any) -> tuple[Any, Any]:
    """Zero-copy numpy views: the images as ``[rows, bytes]`` uint8, the labels."""
    import numpy as np

    images = batch.column("image")
    width = images.type.byte_width
    flat = np.frombuffer(images.buffers()[1], dtype=np.uint8, count=len(images) * width,
                         offset=images.offset * width)
    return flat.reshape(len(images), width), batch.column("label").to_numpy()


def _shuffle_buffer(
    opened: dict[str, Any], groups: list[tuple[str, int]], rng: Any, *, capacity: int, batch_size: int,
    shape: list[int],
) -> Iterator[dict[str, Any]]:
    """Batches of random samples from a buffer of ``capacity`` samples, filled from ``groups`` in order."""
    import numpy as np
    import torch

    images_buf: Any = None
    labels_buf: Any = None
    free: Any = np.arange(capacity)  # slots to fill next, in this order
    filled = 0
    for path, g in groups:
        table = opened[path].read_row_group(g, columns=["image", "label"]).combine_chunks()
        if not table.num_rows:
            continue
        images, labels = _columns(table.to_batches()[0])
        if images_buf is None:
            images_buf = np.empty((capacity, images.shape[1]), dtype=np.uint8)
            labels_buf = np.empty(capacity, dtype=labels.dtype)
        at = 0
        while at < len(labels):
            take = min(len(free), len(labels) - at)
            slots, free = free[:take], free[take:]
            images_buf[slots] = images[at : at + take]
            labels_buf[slots] = labels[at : at + take]
            at += take
            filled += take
            if not len(free):  # full: emit a batch of random slots, which are refilled next
                picked = rng.choice(capacity, size=batch_size, replace=False)
                yield {"image": torch.from_numpy(images_buf[picked]).view(batch_size, *shape),
                       "label": torch.from_numpy(labels_buf[picked])}
                free = picked
                filled -= batch_size
    if images_buf is None:
        return
    left = rng.permutation(np.setdiff1d(np.arange(capacity), free, assume_unique=True))
    for start in range(0, len(left), batch_size):
        picked = left[start : start + batch_size]
        yield {"image": torch.from_numpy(images_buf[picked]).view(len(picked), *shape),
               "label": torch.from_numpy(labels_buf[picked])}


def parquet(
    *, files: list[str], workers: int, batch_size: int, shape: list[int], s3: dict[str, Any] | None = None,
    shuffle: bool = False, buffer: int = 0, quality: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A cold then a warm epoch of ``torch.utils.data.DataLoader`` (persistent workers) over Parquet files;
    shuffled: row groups in a new order each epoch through a shuffle buffer of ``buffer`` samples."""
    from torch.utils.data import DataLoader

    def make() -> Any:
        return DataLoader(
            _parquet_dataset(files, batch_size, s3, shape, shuffle=shuffle, buffer=buffer), batch_size=None,
            num_workers=workers, persistent_workers=workers > 0,
        )

    result = with_quality(lambda record: drive(make, record=record), quality)
    if s3 and workers == 0:
        from pyarrow import fs

        fs.finalize_s3()  # an S3 client left alive at exit can crash the interpreter
    return result


SYSTEMS: dict[str, Callable[..., dict[str, Any]]] = {
    "memcpy": memcpy,
    "tcp": tcp,
    "get": get,
    "set": set_loop,
    "handloop": handloop,
    "prefetch": prefetch,
    "cached": cached,
    "parquet": parquet,
}


def main(argv: list[str] | None = None) -> int:
    # Zero-copy views of read-only Arrow buffers are what we want; torch warns about them.
    warnings.filterwarnings("ignore", message="The given (NumPy array|buffer) is not writable")
    return run_system(SYSTEMS, argv)


if __name__ == "__main__":
    sys.exit(main())
