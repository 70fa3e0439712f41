"""benchmarks/inplace_gain.py runs on a tiny dataset and prints its three ratios (a smoke test:
benchmarks are never timed tests)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "inplace_gain.py"


@pytest.mark.parametrize("workers", [0, 2])
def test_a_tiny_run_prints_the_paired_ratios(tmp_path: Path, workers: int) -> None:
    command = [sys.executable, str(SCRIPT), "--size", "4000000", "--batch-size", "8", "--epochs", "1",
               "--workers", str(workers), "--workdir", str(tmp_path)]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=180).stdout
    for pair in ("inplace / gather", "inplace / parquet", "gather / parquet"):
        assert re.search(rf"{pair}: median of paired epoch ratios [\d.]+", out), out
    assert f"26 samples of 3x224x224 uint8, batch 8, {workers} workers" in out, out
