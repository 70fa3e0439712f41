"""The peers virtualenv: MosaicML Streaming and LitData, which need torchvision.

PyPI's torchvision does not install beside the torch 2.13.0 CPU wheel of the main
virtualenv, so the peers run in their own (``.venv-peers``, git-ignored), created on
first use with ``pip install torch==2.14.1 torchvision==0.29.1 mosaicml-streaming
litdata`` (plus psutil, for the memory figures). It is never created in CI: see
:func:`comparison.config.peers_decision`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CORE_PACKAGES", "OPTIONAL_PACKAGES", "Peers", "ensure_peers"]

CORE_PACKAGES = ("torch==2.14.1", "torchvision==0.29.1", "mosaicml-streaming", "psutil")
# LitData is compared "if it installs": a failure here only skips its rows.
OPTIONAL_PACKAGES = ("litdata",)
MARKER = "shardcache-peers.json"
_INSTALL_TIMEOUT_S = 3600
_PROBE = """
import json, importlib
out = {}
for name in ("streaming", "litdata", "torch", "torchvision"):
    try:
        out[name] = {"version": importlib.import_module(name).__version__}
    except Exception as exc:
        out[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Peers:
    """A ready peers interpreter; ``modules`` maps each module to its version or its import error."""

    python: Path
    modules: dict[str, dict[str, str]]

    def problem(self, module: str) -> str | None:
        """Why ``module`` (``"streaming"`` or ``"litdata"``) cannot run here, or None."""
        info = self.modules.get(module, {"error": "not probed"})
        return info.get("error")

    def version(self, module: str) -> str | None:
        return self.modules.get(module, {}).get("version")


def _python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def _pip(python: Path, packages: tuple[str, ...], log_file: Path) -> bool:
    with open(log_file, "a") as log:
        proc = subprocess.run(
            [str(python), "-m", "pip", "install", *packages], stdout=log, stderr=subprocess.STDOUT,
            timeout=_INSTALL_TIMEOUT_S, check=False,
        )
    return proc.returncode == 0


def ensure_peers(venv: Path, *, say: Callable[[str], None]) -> Peers:
    """Return the peers interpreter, creating ``venv`` on first use (several minutes, ~5.5 GB).

    Raises RuntimeError naming the install log when the core packages do not install.
    """
    python = _python(venv)
    marker = venv / MARKER
    wanted = list(CORE_PACKAGES + OPTIONAL_PACKAGES)
    if python.exists() and marker.exists():
        doc = json.loads(marker.read_text())
        if doc.get("packages") == wanted:
            return Peers(python=python, modules=doc["modules"])
    if not python.exists():
        say(f"creating the peers virtualenv {venv} (first use; pip installs ~5.5 GB, several minutes)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    log_file = venv / "shardcache-install.log"  # inside the venv: ignored by git with it
    say(f"installing {' '.join(wanted)} into {venv} (log: {log_file})")
    if not _pip(python, CORE_PACKAGES, log_file):
        raise RuntimeError(f"pip could not install {' '.join(CORE_PACKAGES)} into {venv}; see {log_file}")
    if not _pip(python, OPTIONAL_PACKAGES, log_file):
        say(f"{' '.join(OPTIONAL_PACKAGES)} did not install (see {log_file}); those rows are skipped")
    probe = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, check=True, timeout=600)
    modules = json.loads(probe.stdout.strip().splitlines()[-1])
    marker.write_text(json.dumps({"packages": wanted, "modules": modules}, indent=2))
    return Peers(python=python, modules=modules)
