"""Where and how the CLI writes: to a terminal (colours, live tables, spinners) or to pipes and
files (full-width tables, one line per update, progress as lines on stderr).

Rich draws for a terminal; redirected, it would cut tables at 80 columns and show no spinner,
so a console that is not a terminal is made wide, and `Progress` writes its steps as lines on
stderr (throttled) instead of a spinner that nobody would see.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.console import Console
from rich.status import Status

__all__ = ["PIPE_WIDTH", "Progress", "make_console"]

PIPE_WIDTH = 400  # columns of a console that is not a terminal: wide enough for any table
_LINE_EVERY_S = 2.0  # at most one progress line this often when nothing changed but numbers


def make_console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr), full-width when that is not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=PIPE_WIDTH, soft_wrap=False)


class Progress:
    """A step that takes a while: a spinner on a terminal, else lines on stderr.

    Use as a context manager; `update(text)` says how far it got. Off a terminal a line is
    written at the start, whenever the text changes but at most every two seconds, and the
    last text at the end, so a log shows what happened without one line per poll."""

    def __init__(self, console: Console, text: str) -> None:
        self.console = console
        self.text = text
        self._status: Status | None = None
        self._written = ""
        self._written_at = 0.0

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self._status = self.console.status(self.text)
            self._status.start()
        else:
            self._write(self.text)
        return self

    def update(self, text: str) -> None:
        self.text = text
        if self._status is not None:
            self._status.update(text)
        elif time.monotonic() - self._written_at >= _LINE_EVERY_S:
            self._write(text)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._status is not None:
            self._status.stop()
        elif self.text != self._written:
            self._write(self.text)

    def _write(self, text: str) -> None:
        print(f"… {text}", file=sys.stderr, flush=True)
        self._written = text
        self._written_at = time.monotonic()
