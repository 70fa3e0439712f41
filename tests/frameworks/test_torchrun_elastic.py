"""torchrun elastic (real agents, c10d rendezvous, gloo): a node killed mid-epoch, resumed on one node.

Two elastic agents on localhost (``--nnodes 1:2 --nproc-per-node 1 --max-restarts 2``) train
``torchrun_elastic_train.py``. Once the ranks have checkpointed a few times in epoch 0, one agent is
killed with its worker (SIGKILL to its process group: no clean leave). The other worker fails on its
next collective, its agent restarts it, the rendezvous closes with one node, and the new world of
one rank resumes from the last checkpoint (a global state of two ranks). Each epoch's ids, those
before the checkpoint plus those after the resume, must be every id exactly once.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ._launch_b import ROWS, assert_exactly_once, child_env, ids_dataset, kill_tree, torchrun_command

__all__ = ["ids_dataset"]  # the fixture, imported so that pytest finds it

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 120.0  # both agents up, rendezvous, and a few checkpoints on two shared cores (~15 s)
FINISH_TIMEOUT_S = 150.0  # the rest (~30 s); both within pytest's 300 s
KILL_AFTER_STEP = 10  # the second checkpoint (every 5 steps); epoch 0 has 63 steps on two ranks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def last_step(out: Path, *, restart: int) -> int:
    steps = [int(line) for log in out.glob(f"steps-restart{restart}-rank*.log") for line in log.read_text().split()]
    return max(steps, default=0)


def log_tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def test_an_agent_killed_mid_epoch_resumes_on_the_new_world_size_exactly_once(
    ids_dataset: str, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    script_args = ["--url", redis_url, "--dataset", ids_dataset, "--out", str(tmp_path), "--every", "5"]
    rdzv = "join_timeout=60,last_call_timeout=4,close_timeout=10"

    def agent(host: bool) -> list[str]:
        return [
            "--nnodes=1:2", "--nproc-per-node=1", "--max-restarts=2", "--monitor-interval=0.5",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=elastic-{port}",
            f"--rdzv-conf={rdzv},is_host={int(host)}",
        ]  # fmt: skip

    logs = {name: tmp_path / f"agent-{name}.log" for name in ("host", "other")}
    agents: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, host in (("host", True), ("other", False)):
            with logs[name].open("wb") as log:
                agents[name] = subprocess.Popen(
                    torchrun_command("torchrun_elastic_train.py", script_args, nproc=1, launcher=agent(host)),
                    env=child_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip

        # Kill the agent that does not host the rendezvous store, once two ranks have checkpointed.
        checkpoint = tmp_path / "checkpoint.json"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            saved = json.loads(checkpoint.read_text()) if checkpoint.exists() else {}
            two_ranks = saved.get("world_size") == 2 and saved.get("epoch") == 0 and saved["step"] >= KILL_AFTER_STEP
            # Between two checkpoints: the steps after the last one are lost with the killed node.
            if two_ranks and last_step(tmp_path, restart=0) >= saved["step"] + 2:
                break
            exited = {name: a.returncode for name, a in agents.items() if a.poll() is not None}
            assert not exited, f"an agent exited early {exited}:\n{log_tail(logs['host'])}\n{log_tail(logs['other'])}"
            assert time.monotonic() < deadline, f"no checkpoint of two ranks in time:\n{log_tail(logs['host'])}"
            time.sleep(0.1)
        kill_tree(agents["other"])

        try:
            returncode = agents["host"].wait(timeout=FINISH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the surviving agent did not finish in {FINISH_TIMEOUT_S:.0f} s:\n{log_tail(logs['host'])}")
        assert returncode == 0, f"the surviving agent failed ({returncode}):\n{log_tail(logs['host'])}"
    finally:
        for process in agents.values():
            kill_tree(process)

    result = json.loads((tmp_path / "result.json").read_text())
    assert result["final_world_size"] == 1
    assert [g["world_size"] for g in result["groups"]][-1] == 1
    assert result["groups"][-1]["restart"] >= 1, "the surviving worker group was restarted by its agent"
    resumed = [r for r in result["resumed_from"] if r["world_size"] == 2][-1]
    steps_per_rank = -(-ROWS // 2 // 8)
    assert KILL_AFTER_STEP <= resumed["step"] < steps_per_rank, "resumed mid-epoch 0"
    assert len(resumed["consumed"]) == 2
    assert len(set(resumed["consumed"])) == 1, "the ranks checkpointed at the same step"
    assert last_step(tmp_path, restart=0) > resumed["step"], "batches after the checkpoint were lost and read again"
    for epoch in ("0", "1"):
        assert_exactly_once(result["delivered"][epoch], what=f"epoch {epoch} across the kill and the resume")
