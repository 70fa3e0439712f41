"""benchmarks/worker_handoff.py runs and prints both ratios (a smoke test: benchmarks are never timed tests)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "worker_handoff.py"


def test_quick_run_prints_both_ratios() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    assert re.search(r"fresh / reused = [\d.]+x", out), out
    assert re.search(r"the tensor's handoff costs -?\d+ us \([\d.]+x\)", out), out
