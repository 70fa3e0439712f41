"""The Dockerfile agrees with the components (no Docker engine here: what can be checked without one)."""

from __future__ import annotations

import configparser
import fnmatch
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("kfp")

from shardcache.kubeflow_components import components

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
KFP_CONFIG_COMMAND = "python -m shardcache.kubeflow_components.components kfp-config > kfp_config.ini"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = "\n".join(line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#"))
    joined = text.replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def test_base_image_is_the_components_base_image() -> None:
    froms = [args for op, args in instructions() if op == "FROM"]
    assert froms == [components.BASE_IMAGE]


def test_copied_files_exist_and_are_in_the_build_context() -> None:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def in_context(path: str) -> bool:
        included = True
        for pattern in patterns:  # docker: the last matching line decides
            negated = pattern.startswith("!")
            if fnmatch.fnmatch(path, pattern.lstrip("!")) or path.startswith(pattern.lstrip("!") + "/"):
                included = negated
        return included

    sources = [src for op, args in instructions() if op == "COPY" for src in args.split()[:-1]]
    assert sources == ["pyproject.toml", "README.md", "shardcache"]
    for src in sources:
        assert (ROOT / src).exists(), src
        assert in_context(src), f"{src} is excluded by .dockerignore"
    assert not in_context(".venv")
    assert not in_context("tests")


def test_image_writes_the_kfp_config_the_components_need(tmp_path: Path) -> None:
    runs = [args for op, args in instructions() if op == "RUN"]
    assert any(KFP_CONFIG_COMMAND in run for run in runs)
    workdirs = [args for op, args in instructions() if op == "WORKDIR"]
    assert workdirs[-1] == "/opt/shardcache"  # where the executor looks: the container's working directory

    out = subprocess.run([sys.executable, "-m", "shardcache.kubeflow_components.components", "kfp-config"],
                         capture_output=True, text=True, check=True, timeout=120, cwd=tmp_path)
    config = configparser.ConfigParser()
    config.optionxform = str  # type: ignore[assignment,method-assign]  # kfp keeps the case of names
    config.read_string(out.stdout)
    assert sorted(config["Components"]) == sorted(
        ["prefetch_op", "plan_op", "commit_op", "cache_status_op", "verify_op", "evict_op"])
    assert all(Path(path).is_file() for path in config["Components"].values())


def test_image_runs_as_a_user() -> None:
    users = [args for op, args in instructions() if op == "USER"]
    assert users
    assert users[-1] not in ("root", "0")
