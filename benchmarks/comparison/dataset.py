"""The benchmark dataset: image-like samples (``image`` uint8 of a fixed shape, ``label`` int64).

It is written once and reused by later runs with the same shape, size and seed:

- ``raw/images.u8`` and ``raw/labels.i64``: the samples as flat arrays. The peers
  virtualenv (no pyarrow) writes MDS and LitData from them; the bare SET loop sends them.
- ``parquet/part-NNNNN.parquet``: the same samples, uncompressed, ``image`` as
  ``fixed_size_binary``. The prefetcher, the plain DataLoader and the S3 upload read these.

A user's Parquet dataset is accepted instead when it has those two columns.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shardcache.errors import ConfigError

__all__ = ["Dataset", "accept", "generate", "replicate"]

_FORMAT = 1
_FILE_BYTES = 128 * 1024 * 1024
_ROW_GROUP_BYTES = 32 * 1024 * 1024
_MIN_FILES = 4  # so that two DataLoader workers each get files to read


@dataclass(frozen=True)
class Dataset:
    root: Path
    rows: int
    image_shape: tuple[int, ...]
    parquet_files: tuple[Path, ...]

    @property
    def raw_dir(self) -> Path:
        return self.root / "raw"

    @property
    def parquet_dir(self) -> Path:
        return self.parquet_files[0].parent

    @property
    def sample_bytes(self) -> int:
        return math.prod(self.image_shape)

    @property
    def image_bytes(self) -> int:
        return self.rows * self.sample_bytes

    @property
    def tensor_bytes(self) -> int:
        """Bytes a loader delivers for one epoch: images plus int64 labels."""
        return self.rows * (self.sample_bytes + 8)

    def describe(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "image_shape": list(self.image_shape),
            "sample_bytes": self.sample_bytes + 8,
            "bytes": self.tensor_bytes,
            "parquet_files": len(self.parquet_files),
            "path": str(self.root),
        }


def _images_array(images: np.ndarray, sample_bytes: int) -> pa.Array:
    n = len(images) // sample_bytes
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(sample_bytes), n, [None, pa.py_buffer(images)])


def generate(*, workdir: Path, rows: int, image_shape: tuple[int, ...], seed: int) -> Dataset:
    """Write (or reuse) ``rows`` random samples; returns the dataset."""
    sample = math.prod(image_shape)
    name = f"synthetic-{rows}x{'x'.join(map(str, image_shape))}-seed{seed}-v{_FORMAT}"
    root = workdir / name
    meta = root / "meta.json"
    if meta.exists():
        doc = json.loads(meta.read_text())
        existing = tuple(root / "parquet" / f for f in doc["files"])
        if all(f.exists() for f in existing):
            return Dataset(root=root, rows=rows, image_shape=image_shape, parquet_files=existing)
    tmp = root.with_name(name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "raw").mkdir(parents=True)
    (tmp / "parquet").mkdir()
    file_rows = max(1, min(_FILE_BYTES // sample, math.ceil(rows / _MIN_FILES)))
    group_rows = max(1, min(file_rows, _ROW_GROUP_BYTES // sample))
    rng = np.random.default_rng(seed)
    files: list[str] = []
    with open(tmp / "raw" / "images.u8", "wb") as raw_images, open(tmp / "raw" / "labels.i64", "wb") as raw_labels:
        for part, start in enumerate(range(0, rows, file_rows)):
            n = min(file_rows, rows - start)
            images = np.frombuffer(rng.bytes(n * sample), dtype=np.uint8)
            labels = rng.integers(0, 1000, size=n, dtype=np.int64)
            raw_images.write(images.data)
            raw_labels.write(labels.data)
            table = pa.table({"image": _images_array(images, sample), "label": pa.array(labels)})
            fname = f"part-{part:05d}.parquet"
            pq.write_table(table, tmp / "parquet" / fname, compression="none", row_group_size=group_rows,
                           use_dictionary=False, write_statistics=False)
            files.append(fname)
    doc = {"format": _FORMAT, "rows": rows, "image_shape": list(image_shape), "seed": seed, "files": files}
    (tmp / "meta.json").write_text(json.dumps(doc, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)  # a half-written dataset is never reused
    return Dataset(root=root, rows=rows, image_shape=image_shape,
                   parquet_files=tuple(root / "parquet" / f for f in files))


def accept(*, path: Path, workdir: Path, image_shape: tuple[int, ...]) -> Dataset:
    """Use the Parquet files under ``path``; they need ``image`` (fixed_size_binary) and ``label`` (integer)."""
    files = tuple(sorted(path.glob("**/*.parquet"))) if path.is_dir() else (path,)
    if not files or not all(f.is_file() for f in files):
        raise ConfigError(f"data={str(path)!r} holds no .parquet files; give a directory of Parquet files")
    sample = math.prod(image_shape)
    root = workdir / f"accepted-{abs(hash((str(path.resolve()), image_shape))) % 10**10}"
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rows = 0
    with open(raw / "images.u8", "wb") as raw_images, open(raw / "labels.i64", "wb") as raw_labels:
        for f in files:
            pf = pq.ParquetFile(f)
            schema = pf.schema_arrow
            image_type = schema.field("image").type if "image" in schema.names else None
            label_type = schema.field("label").type if "label" in schema.names else None
            if image_type != pa.binary(sample) or label_type is None or not pa.types.is_integer(label_type):
                raise ConfigError(
                    f"data file {str(f)!r} has image: {image_type}, label: {label_type}; the benchmark needs "
                    f"image: fixed_size_binary[{sample}] (--image-shape {'x'.join(map(str, image_shape))}) "
                    "and an integer label"
                )
            for batch in pf.iter_batches(columns=["image", "label"]):
                images = batch.column("image")
                width = images.type.byte_width
                start = images.offset * width
                raw_images.write(memoryview(images.buffers()[1])[start : start + len(images) * width])
                raw_labels.write(batch.column("label").to_numpy().astype(np.int64).tobytes())
                rows += batch.num_rows
    return Dataset(root=root, rows=rows, image_shape=image_shape, parquet_files=files)


def replicate(dataset: Dataset, *, factor: int, out: Path) -> Path:
    """A directory holding ``factor`` hard-linked copies of the Parquet files (no extra disk), for scaling."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for copy in range(factor):
        for f in dataset.parquet_files:
            target = out / f"copy{copy}-{f.name}"
            try:
                os.link(f, target)
            except OSError:  # another filesystem: a symlink reads the same
                target.symlink_to(f.resolve())
    return out
