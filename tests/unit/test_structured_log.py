"""Logs rotate by size, and a process's own output follows the current file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qkdnet.node.structured_log import LogRotation

# Run in a process of its own: rotation moves file descriptors 1 and 2, pytest's included.
SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path
    from qkdnet.node.structured_log import (
        LogRotation, configure_logging, log_event, rotate_output,
    )

    rotate_output(LogRotation(Path(sys.argv[1]), max_bytes=2000, files=3))
    configure_logging("n1")
    logger = logging.getLogger("qkdnet.test")
    for i in range(200):
        log_event(logger, logging.INFO, "frame_stored", frame=i)
    print("after the last event", file=sys.stderr, flush=True)
    """
)


def test_logs_rotate_by_size_and_keep_so_many_files(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "n1.log"
    subprocess.run([sys.executable, "-c", SCRIPT, str(log)], check=True, timeout=60)
    files = sorted(p.name for p in log.parent.iterdir())
    assert files == ["n1.log", "n1.log.1", "n1.log.2"]  # the oldest ones were deleted
    for name in files:
        path = log.parent / name
        assert path.stat().st_size <= 2000
        assert path.stat().st_mode & 0o777 == 0o600
    assert '"frame":199' in log.read_text()  # the newest events are in the current file
    assert '"frame":0,' not in "".join((log.parent / n).read_text() for n in files)
    # stderr followed the rotation: it went to the current file, not to a rotated one
    assert log.read_text().rstrip().endswith("after the last event")


@pytest.mark.parametrize(("max_bytes", "files"), [(100, 3), (10_000, 1)])
def test_rotation_limits(max_bytes: int, files: int) -> None:
    with pytest.raises(ValueError, match="at least"):
        LogRotation(Path("x.log"), max_bytes, files)


def test_the_launcher_refuses_a_single_log_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "qkdnet.node.launcher",
            "--node",
            str(tmp_path / "n.yaml"),
            str(tmp_path / "n.log"),
            "--log-files",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "at least 2 log files" in result.stderr
