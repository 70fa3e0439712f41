"""One server process: spawning it, whether it runs, signalling it, and stopping it.

A node started by this process is watched through its ``Popen``; one attached from the
recorded state only through its pid, which is checked against the node's port and start
time before any signal, so that a recycled pid is never signalled.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

__all__ = ["POLL_S", "Node", "terminate", "check_started_alive"]

logger = logging.getLogger(__name__)

POLL_S = 0.05
_STOP_GRACE_S = 5.0
_LOG_TAIL_LINES = 15


@dataclass
class Node:
    """A server process: its port, last seen role, argv and folder (``dir``, which holds ``node.log``)."""

    port: int
    role: str
    args: list[str]
    dir: Path
    pid: int = 0
    started_at: float | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_offset: int = 0
    stalled: bool = False  # frozen by SIGSTOP: alive, but it answers nothing

    @property
    def log_path(self) -> Path:
        return self.dir / "node.log"

    def spawn(self) -> None:
        """Start the server, appending to its log."""
        with open(self.log_path, "ab") as log:
            self.log_offset = log.tell()
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the CLI that started it, and Ctrl-C in its terminal
            )
        self.pid = self.proc.pid
        self.started_at = _start_time(self.pid)

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return bool(self.pid) and _is_server(self.pid, self.port, self.started_at)

    def exited(self) -> bool:
        """Whether a signalled node has exited (a zombie counts). Not ``not alive()``: while a process
        exits, its command line already reads empty, so it no longer looks like our server."""
        if self.proc is not None:
            return self.proc.poll() is not None
        return not _running(self.pid, self.started_at)

    def signal(self, sig: int) -> bool:
        """Signal the node if it is still the server we started; never a recycled pid."""
        if self.proc is not None:
            if self.proc.poll() is not None:
                return False
            self.proc.send_signal(sig)
            return True
        if not _is_server(self.pid, self.port, self.started_at):
            logger.warning("pid %d is no longer the server on port %d; not signalling it", self.pid, self.port)
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def log_tail(self) -> str:
        """The last lines this run of the server wrote to its log."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                lines = f.read().decode(errors="replace").splitlines()
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(log is empty)"

    def exited_error(self) -> ConfigError:
        code = self.proc.returncode if self.proc is not None else None
        return ConfigError(
            f"the server on port {self.port} exited (code {code}) during start; "
            f"last lines of {self.log_path}:\n{self.log_tail()}"
        )


def terminate(nodes: Sequence[Node], *, first: int = signal.SIGTERM) -> None:
    """Send ``first`` (SIGTERM unless told), then SIGKILL to those that ignore it; wait until they exit."""
    for sig, grace in ((first, _STOP_GRACE_S), (signal.SIGKILL, _STOP_GRACE_S)):
        pending = [n for n in nodes if n.alive() and n.signal(sig)]
        if sig != signal.SIGKILL:
            for n in pending:
                if n.stalled:
                    n.signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
        deadline = time.monotonic() + grace
        while pending and time.monotonic() < deadline:
            pending = [n for n in pending if not n.exited()]
            if pending:
                time.sleep(POLL_S)
        if not pending:
            return
        logger.warning("nodes %s ignored signal %d", [n.port for n in pending], sig)


def check_started_alive(nodes: Sequence[Node]) -> None:
    """Raise the exit error (with its log tail) of the first node that is no longer running."""
    for node in nodes:
        if not node.alive():
            raise node.exited_error()


def _start_time(pid: int) -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _running(pid: int, started_at: float | None) -> bool:
    """Whether process ``pid`` (started at ``started_at``, when known) has not exited yet."""
    try:
        import psutil
    except ImportError:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")
    try:
        proc = psutil.Process(pid)
        if started_at is not None and abs(proc.create_time() - started_at) > 1.0:
            return False  # the pid now belongs to another process
        return bool(proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD))
    except psutil.Error:
        return False


def _is_server(pid: int, port: int, started_at: float | None) -> bool:
    """Whether ``pid`` is still a live server for ``port`` (so a recycled pid is never killed)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            if started_at is not None and abs(proc.create_time() - started_at) > 1.0:
                return False
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            return False
    else:
        try:
            # A zombie's cmdline is empty, so it reads as "not our server".
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            logger.warning("cannot tell whether pid %d is our server; install psutil", pid)
            return False
    # Servers rewrite their title to "redis-server 127.0.0.1:PORT [cluster]"; before that, argv has the port.
    return re.search(rf"(?<!\d){port}(?!\d)", cmdline) is not None
