"""Structured logs: one JSON object per line on stderr, or in a size-rotated log file.

Use `log_event(logger, level, "event_name", field=value, ...)`; the fields become keys of the
JSON object. Never pass key material, pads or private keys as fields.

A process started with its output in a log file (the nodes and the broker of a deployment on
the process runtime) calls `rotate_output` first: its log records then go to that file, which is
rotated when it reaches `max_bytes` (`node.log` becomes `node.log.1`, `node.log.1` becomes
`node.log.2`, ..., and the oldest of `files` files is deleted), and its stdout and stderr follow
the current file, so that whatever else it prints (a traceback, a library's own messages) stays
beside its log. Every file is created 0600.
"""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .file_modes import private_dir

__all__ = [
    "DEFAULT_LOG_FILES",
    "DEFAULT_LOG_MAX_BYTES",
    "JsonFormatter",
    "LogRotation",
    "RotatingOutput",
    "configure_logging",
    "log_event",
    "rotate_output",
]

DEFAULT_LOG_MAX_BYTES = 10_000_000
"""A log file is rotated when it reaches this size (10 MB)."""
DEFAULT_LOG_FILES = 3
"""Files kept per log, the current one included: at most 30 MB a log by default."""


@dataclass(frozen=True)
class LogRotation:
    """Where a process's output goes and when it is rotated."""

    path: Path
    max_bytes: int = DEFAULT_LOG_MAX_BYTES
    files: int = DEFAULT_LOG_FILES

    def __post_init__(self) -> None:
        if self.max_bytes < 1024:
            raise ValueError(f"log files of at least 1024 bytes, not {self.max_bytes}")
        if self.files < 2:
            raise ValueError(
                f"at least 2 log files (the current one and one rotated), not {self.files}"
            )


class RotatingOutput(logging.handlers.RotatingFileHandler):
    """A size-rotated log file (0600) that also receives the process's stdout and stderr."""

    def __init__(self, rotation: LogRotation) -> None:
        private_dir(rotation.path.parent)
        super().__init__(
            rotation.path,
            maxBytes=rotation.max_bytes,
            backupCount=rotation.files - 1,
            encoding="utf-8",
        )
        self._redirect()

    def _open(self) -> io.TextIOWrapper:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return open(fd, "a", encoding=self.encoding)

    def doRollover(self) -> None:
        """Rotate, then point stdout and stderr at the new file."""
        super().doRollover()
        self._redirect()

    def _redirect(self) -> None:
        if self.stream is None:
            return
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        fd = self.stream.fileno()
        os.dup2(fd, 1)
        os.dup2(fd, 2)


_output: RotatingOutput | None = None


def rotate_output(rotation: LogRotation) -> RotatingOutput:
    """Send this process's output (stdout, stderr and, once `configure_logging` ran, its log
    records) to `rotation.path`, rotated by size; returns the handler for other loggers."""
    global _output
    if _output is not None:
        _output.close()
    _output = RotatingOutput(rotation)
    return _output


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


class JsonFormatter(logging.Formatter):
    """Formats a record as a JSON line with time, level, node, logger, event and fields."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "node": self.node_id,
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, separators=(",", ":"))


def configure_logging(node_id: str, level: str = "info") -> None:
    """Send all `qkdnet` logs as JSON lines to stderr, or to the rotated file of
    `rotate_output` when the process called it."""
    handler: logging.Handler = _output if _output is not None else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(node_id))
    root = logging.getLogger("qkdnet")
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    root.propagate = False
    logging.Formatter.converter = time.gmtime


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log `event` with structured `fields`."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})
