"""Start many node agents from one warm interpreter: import once, fork each node.

`python -m qkdnet.node.launcher --node CONFIG LOG [--node CONFIG LOG ...] [--log-max-bytes N]
[--log-files K]` imports the agent and everything it needs, then forks one child per node. Each
child becomes a process group of its own (in the session of the launcher's supervisor, one
session per launch, so that the whole deployment is one scheduling group: see `_become_node`),
sends stdin to /dev/null and stdout/stderr to its LOG (rotated when it reaches N bytes, K files
kept: `structured_log.rotate_output`), names itself `qkdnet:<node>` and runs the agent exactly
as `qkdnet node --config CONFIG` would. The launcher prints one JSON line per child
(`{"config": ..., "pid": ...}`) as soon as it exists and exits once all exist: the nodes belong
to no orchestrator process, so they outlive whoever started them. Their parent is a process of
the launcher's own that turns into their reaper (`reaper.py`): it records how each node ends
(exit status or signal) in `<config stem>.exit.json` beside its configuration.

Why: importing numpy, grpc, cryptography and pydantic costs each fresh interpreter about 0.7 s of
CPU and 40 MB of private memory. Forked children share those pages copy-on-write, so a hundred
nodes start in seconds instead of a minute and use far less memory in total.

Forking is safe here because the launcher has not started a thread, an event loop or any gRPC
object when it forks (it checks that it is single-threaded first).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import sys
from pathlib import Path

from .file_modes import PRIVATE_UMASK
from .reaper import exit_record_path
from .structured_log import DEFAULT_LOG_FILES, DEFAULT_LOG_MAX_BYTES, LogRotation, rotate_output

__all__ = ["launch"]

_PR_SET_NAME = 15
_M_ARENA_MAX = -8


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _become_node(config: Path, log: Path, rotation: tuple[int, int]) -> None:
    """In the child: a process group of its own, private files, output to its log (rotated at
    `rotation` = (max bytes, files)), a name.

    The node stays in its supervisor's session, the one `run()` started for the whole launch:
    with the kernel's autogroup scheduling (on by default), a session is one group that gets a
    fair share of the CPU against the user's other sessions. A session per node would give a
    busy network one share per node, and a user's shell on a small machine would wait seconds
    for every command while the network distils key."""
    os.setpgid(0, 0)
    os.umask(PRIVATE_UMASK)
    log.parent.mkdir(parents=True, exist_ok=True)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    os.close(null)
    rotate_output(LogRotation(log, *rotation))
    name = f"qkdnet:{config.stem}"[:15].encode()
    ctypes.CDLL(None).prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)


def launch(
    nodes: list[tuple[Path, Path]],
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES,
    log_files: int = DEFAULT_LOG_FILES,
    close_in_children: tuple[int, ...] = (),
) -> list[int]:
    """Fork one agent per (config, log); returns the children's PIDs (in the launcher). Each
    log is rotated when it reaches `log_max_bytes`, `log_files` files kept. The children close
    the file descriptors `close_in_children` (the launcher's own pipes) first."""
    LogRotation(Path("-"), log_max_bytes, log_files)  # a ValueError here, not in every child
    # OpenBLAS starts a thread pool when numpy loads unless told not to; nodes never need it.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # Everything a node imports, imported once here so the children share it.
    from . import agent

    if _threads() != 1:
        raise RuntimeError("the launcher must be single-threaded before it forks")
    # At most two malloc arenas however many threads a node runs (grpc, store, numpy workers):
    # each extra arena keeps freed memory of its own, which shows up as resident memory.
    ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 2)
    gc.collect()
    gc.freeze()  # keep the collector from touching (and so copying) the shared objects
    pids = []
    for config, log in nodes:
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                for descriptor in close_in_children:
                    os.close(descriptor)
                gc.unfreeze()
                _become_node(config, log, (log_max_bytes, log_files))
                status = agent.main(config)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        pids.append(pid)
        print(json.dumps({"config": str(config), "pid": pid}), flush=True)
    return pids


def run() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qkdnet.node.launcher", description="Start node agents, one fork each."
    )
    parser.add_argument(
        "--node",
        nargs=2,
        action="append",
        required=True,
        type=Path,
        metavar=("CONFIG", "LOG"),
        help="a node configuration and the file its output goes to",
    )
    parser.add_argument(
        "--log-max-bytes",
        type=int,
        default=DEFAULT_LOG_MAX_BYTES,
        help=f"rotate a node's log when it reaches this size (default {DEFAULT_LOG_MAX_BYTES})",
    )
    parser.add_argument(
        "--log-files",
        type=int,
        default=DEFAULT_LOG_FILES,
        help=f"files kept per log, the current one included (default {DEFAULT_LOG_FILES})",
    )
    args = parser.parse_args()
    try:
        LogRotation(Path("-"), args.log_max_bytes, args.log_files)
    except ValueError as exc:
        parser.error(str(exc))
    nodes = [(config, log) for config, log in args.node]
    # The nodes' parent must outlive this process (whoever started us waits for us to exit):
    # a child of our own forks them and then becomes their reaper (reaper.py), which records
    # how each ends. The pipe tells us when the nodes exist.
    ready, done = os.pipe()
    supervisor = os.fork()
    if supervisor == 0:
        status = 1
        try:
            os.close(ready)
            os.setsid()
            _yield_to_the_user()
            pids = launch(nodes, args.log_max_bytes, args.log_files, close_in_children=(done,))
            os.write(done, b"ok")
            null = os.open(os.devnull, os.O_RDWR)
            for stream in (0, 1, 2):
                os.dup2(null, stream)
            os.execv(
                sys.executable,
                [sys.executable, "-m", "qkdnet.node.reaper", *_child_args(pids, nodes)],
            )
        finally:
            os._exit(status)
    os.close(done)
    answer = b""
    while chunk := os.read(ready, 16):
        answer += chunk
    return 0 if answer == b"ok" else 1


# The nice value of a launch's scheduling group (its session's autogroup, see `_become_node`).
AUTOGROUP_NICE = 5


def _yield_to_the_user() -> None:
    """Give the new session's scheduling group a lower weight than the user's sessions (nice
    `AUTOGROUP_NICE`): a network that keeps every core busy still gets every idle cycle, but a
    command the user types while it runs gets most of a core rather than a third of one.
    Without autogroup scheduling (disabled, or an older kernel) this does nothing."""
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(f"{AUTOGROUP_NICE}\n")


def _child_args(pids: list[int], nodes: list[tuple[Path, Path]]) -> list[str]:
    """--child PID RECORD for every node, for the reaper's command line."""
    args: list[str] = []
    for pid, (config, _) in zip(pids, nodes, strict=True):
        args += ["--child", str(pid), str(exit_record_path(config))]
    return args


if __name__ == "__main__":
    sys.exit(run())
