"""The output of the builds' subprocesses, line by line, as they run: read with a timeout,
kept in a log file, and the process group stopped when the build is."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

from .events import (
    ImageBuildError,
)


def _stop_group(process: subprocess.Popen[str], grace: float = 60) -> None:
    """SIGTERM to `process`'s process group, SIGKILL when it has not ended after `grace` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)
            return


class _Lines:
    """A child process's output (stdout and stderr) line by line, copied to a log file."""

    def __init__(
        self,
        command: list[str],
        log: Any,
        env: dict[str, str],
        on_line: Callable[[str], None],
    ) -> None:
        self.command = command
        self.log = log
        self.env = env
        self.on_line = on_line
        self.returncode = -1
        self.last = ""

    def __iter__(self) -> Iterator[str]:
        try:
            process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self.env,
                text=True,
                errors="replace",
                bufsize=1,
                start_new_session=True,  # its own process group: stopped whole, below
            )
        except OSError as exc:
            raise ImageBuildError(f"cannot run {self.command[0]}: {exc.strerror}") from None
        assert process.stdout is not None
        with process:
            try:
                for raw in process.stdout:
                    line = raw.rstrip("\n")
                    self.log.write(raw)
                    if line.strip():
                        self.last = line.strip()
                    self.on_line(line)
                    yield line
            except BaseException:
                # Interrupted, or the reader gave up: stop the child and whatever it started
                # (debootstrap under make-base-image.sh, whose exit trap then cleans up).
                _stop_group(process)
                raise
        self.returncode = process.returncode
        self.log.flush()
