"""Exit records: how a node (or the broker) ended, written by the process that waits for it.

A process's exit status goes to its parent only. Nodes of the process runtime belong to no
orchestrator process, so their parent is a small reaper: the launcher forks the nodes, then
becomes `python -m qkdnet.node.reaper` (exec keeps its PID and so its children), which waits
for each child and writes `{"pid", "start", "exit_code", "signal", "at"}` to the child's exit
record file, then exits when the last child has. `start` is the kernel's start time of the
process (field 22 of /proc/PID/stat), so a record is never taken for another process that got
the same PID. The broker's detached supervisor writes the same record (`supervise`).

Only the standard library is imported here: the reaper stays a few megabytes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["exit_record_path", "read_exit_record", "start_time_of", "supervise"]


def exit_record_path(config: Path) -> Path:
    """Where the exit record of the node configured by `config` goes: beside it."""
    return config.with_name(f"{config.stem}.exit.json")


def start_time_of(pid: int) -> int | None:
    """The kernel's start time of process `pid` in clock ticks after boot (None: no such)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def read_exit_record(path: Path, pid: int, start: int | None) -> dict[str, Any] | None:
    """The record at `path` when it is about process (`pid`, `start`), else None: a dict with
    "exit_code" (None when a signal killed it), "signal" (None when it exited) and "at"."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("pid") != pid:
        return None
    if start is not None and data.get("start") not in (start, None):
        return None
    return data


def _write(path: Path, record: dict[str, Any]) -> None:
    """Write the record readable by its owner only (umask 077 in the reaper, 0600 here)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(OSError):
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(record, handle)
        os.replace(temporary, path)


def supervise(children: dict[int, Path]) -> None:
    """Wait for every child (PID -> its exit record file) and record how each ended."""
    starts = {pid: start_time_of(pid) for pid in children}
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
            continue
        path = children.get(pid)
        if path is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        _write(
            path,
            {
                "pid": pid,
                "start": starts.get(pid),
                "exit_code": code if code >= 0 else None,
                "signal": -code if code < 0 else None,
                "at": time.time(),
            },
        )


def run() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qkdnet.node.reaper",
        description="Wait for this process's children and record how each ended.",
    )
    parser.add_argument(
        "--child",
        nargs=2,
        action="append",
        default=[],
        metavar=("PID", "RECORD"),
        help="a child's PID and the file its exit record goes to",
    )
    args = parser.parse_args()
    supervise({int(pid): Path(record) for pid, record in args.child})
    return 0


if __name__ == "__main__":
    sys.exit(run())
