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
