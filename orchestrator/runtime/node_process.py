"""Start, watch and stop node agents as local OS processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from qkdnet.node.agent import PARENT_PID_ENV
from qkdnet.node.errors import QkdnetError
from qkdnet.node.file_modes import open_private_log

__all__ = ["NodeProcess", "NodeStartError", "pid_alive"]


class NodeStartError(QkdnetError):
    """A node process exited or did not become ready."""


@dataclass
class NodeProcess:
    """One `python -m qkdnet.node` child with its config, log and ready file."""

    node_id: str
    config_path: Path
    state_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, *, tied_to_parent: bool) -> None:
        """Spawn the node; with `tied_to_parent` it dies when this process dies."""
        (self.state_dir / "ready.json").unlink(missing_ok=True)
        env = dict(os.environ)
        if tied_to_parent:
            # The node arranges this itself (PARENT_PID_ENV): a preexec_fn would make Python
            # fork instead of vfork, and gRPC's fork handlers in a process with live gRPC
            # threads can abort the child.
            env[PARENT_PID_ENV] = str(os.getpid())
        log = open_private_log(self.log_path)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "qkdnet.node", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        finally:
            log.close()

    def wait_ready(self, timeout: float = 30.0) -> str:
        """Wait for the node's ready file; returns its gRPC address."""
        deadline = time.monotonic() + timeout
        ready = self.state_dir / "ready.json"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise NodeStartError(
                    f"node {self.node_id} exited with status {self.process.returncode}: "
                    f"{self.last_error()}"
                )
            if ready.exists():
                try:
                    return str(json.loads(ready.read_text())["address"])
                except (ValueError, KeyError):
                    pass
            time.sleep(0.05)
        raise NodeStartError(f"node {self.node_id} not ready after {timeout:.0f} s")

    def last_error(self) -> str:
        """The last line of the node's log (its error message when it failed to start)."""
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "no output"

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
