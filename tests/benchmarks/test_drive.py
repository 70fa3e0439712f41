"""``drive``: one loader built, a cold then a warm epoch over it, the warm one reported (no servers, no timing)."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
import torch

KEYS = {"seconds", "samples", "nbytes", "first_batch_s", "first_epoch_s", "first_epoch_samples"}


class Toy:
    """Three batches of two samples in its first epoch, two batches after; counts its epochs."""

    def __init__(self) -> None:
        self.epochs = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.epochs += 1
        for _ in range(3 if self.epochs == 1 else 2):
            yield {"image": torch.zeros((2, 4), dtype=torch.uint8), "label": [0, 1]}


def _driven(compare: ModuleType, *, epochs: int) -> tuple[dict[str, Any], list[Toy]]:
    from comparison.drive import drive  # on sys.path once compare.py is loaded

    built: list[Toy] = []

    def make() -> Toy:
        built.append(Toy())
        return built[-1]

    return drive(make, epochs=epochs), built


def test_drive_reports_the_last_epoch_of_one_loader(compare: ModuleType) -> None:
    result, built = _driven(compare, epochs=2)
    assert set(result) == KEYS
    assert len(built) == 1
    assert built[0].epochs == 2
    assert (result["samples"], result["nbytes"], result["first_epoch_samples"]) == (4, 16, 6)
    assert 0 <= result["first_batch_s"] <= result["first_epoch_s"]
    assert result["seconds"] >= 0


def test_one_epoch_is_both_the_first_and_the_last(compare: ModuleType) -> None:
    result, built = _driven(compare, epochs=1)
    assert built[0].epochs == 1
    assert result["seconds"] == result["first_epoch_s"]
    assert result["samples"] == result["first_epoch_samples"] == 6


def test_drive_refuses_no_epochs(compare: ModuleType) -> None:
    with pytest.raises(ValueError, match="epochs=0"):
        _driven(compare, epochs=0)


def test_the_cold_epoch_runs_without_pss_readings(compare: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """The peak-memory sampler walks no page tables while the cold epoch is timed; it reads PSS once
    that epoch ends, and as usual in the warm one."""
    from comparison import rss
    from comparison.drive import drive

    if not rss._linux_works():
        pytest.skip("PSS is read on Linux only")
    readings: list[str] = []
    real = rss._linux_pss
    phase = ["before"]
    monkeypatch.setattr(rss, "_linux_pss", lambda pid: readings.append(phase[0]) or real(pid))

    class Phased(Toy):
        def __iter__(self) -> Iterator[dict[str, Any]]:
            phase[0] = f"epoch {self.epochs}"
            memory.sample(force=False)  # a new RSS high would take PSS now, outside pss_held
            memory._rss_at_pss = 0
            memory._last_pss = float("-inf")
            memory.sample(force=False)
            yield from super().__iter__()
            phase[0] = "after"

    with rss.PeakMemory(interval=3600) as memory:  # the background thread never wakes up in the test
        result = drive(Phased, epochs=2)
    assert result["first_epoch_samples"] == 6
    assert "epoch 0" not in readings  # held back in the cold epoch ...
    assert "epoch 1" in readings  # ... not in the warm one
    assert readings.count("after") >= 2  # once as the cold epoch ends, once at exit
    assert memory.peak > 0
    assert memory.rss_peak > 0
