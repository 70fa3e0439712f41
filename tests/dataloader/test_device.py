"""Batches on a device: to_device and the side-stream DevicePrefetcher (CUDA tests skip without a GPU)."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch

from shardcache.cache import Manifest, ShardCache
from shardcache.dataloader import CachedDataLoader, DevicePrefetcher, to_device

Pair = namedtuple("Pair", "x y")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_to_device_moves_every_tensor_inside_containers():
    batch = {"a": torch.ones(2), "b": [torch.zeros(1), "text"], "c": Pair(torch.ones(1), 3), "d": (torch.ones(1),)}
    moved = to_device(batch, "cpu")
    assert moved["b"][1] == "text"
    assert isinstance(moved["c"], Pair)
    assert moved["c"].y == 3
    assert isinstance(moved["d"], tuple)
    assert torch.equal(moved["a"], batch["a"])


def test_device_prefetcher_on_cpu_passes_batches_through():
    batches = [{"x": torch.full((2,), float(k))} for k in range(4)]
    assert [b["x"][0].item() for b in DevicePrefetcher(batches, "cpu")] == [0.0, 1.0, 2.0, 3.0]
    assert len(DevicePrefetcher(batches, "cpu")) == 4


def test_loader_device_option_on_cpu(dataset: Manifest, cache: ShardCache):
    loader = CachedDataLoader(dataset.name, cache=cache, batch_size=100, device="cpu", columns=["id"])
    assert sum(len(b["id"]) for b in loader) == dataset.num_rows
    assert loader.stats().batches == len(loader)


@pytest.mark.gpu
@cuda
def test_pinned_batches_arrive_on_the_gpu_in_order(dataset: Manifest, cache: ShardCache):
    loader = CachedDataLoader(dataset.name, cache=cache, batch_size=64, num_workers=2, pin_memory=True,
                              device="cuda", columns=["id", "image"])  # fmt: skip
    reference = CachedDataLoader(dataset.name, cache=cache, batch_size=64, columns=["id", "image"])
    for on_gpu, on_cpu in zip(loader, reference, strict=True):
        assert on_gpu["image"].is_cuda
        assert torch.equal(on_gpu["id"].cpu(), on_cpu["id"])
        assert torch.equal(on_gpu["image"].cpu(), on_cpu["image"])


@pytest.mark.gpu
@cuda
def test_device_prefetcher_overlaps_on_a_side_stream():
    batches = [{"x": torch.full((1024,), float(k)).pin_memory()} for k in range(8)]
    out = [b["x"].sum().item() for b in DevicePrefetcher(batches, "cuda")]
    assert out == [1024.0 * k for k in range(8)]
