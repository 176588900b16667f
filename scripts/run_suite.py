"""The whole suite, as `make test` runs it: two pytest sessions side by side.

The container tier runs in a session of its own, started first, in the background: it builds
the images (minutes, on a machine without them) and then runs the container tests, its output
going to `build/container-tests.log`. Meanwhile the checks (`make lint typecheck proto-check`)
and then the unit and integration tiers run in the foreground. When they are done, the
container session's output is shown (followed live until it ends), and the exit status is the
first failure's. On two cores this overlaps the container tests with the integration tests,
which leave the machine idle much of the time (nodes waiting for key, processes starting).

    python scripts/run_suite.py              # what `make test` runs
    python scripts/run_suite.py --serial     # one session, every tier in turn (plain `pytest`)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOG = ROOT / "build" / "container-tests.log"
PYTEST = [sys.executable, "-m", "pytest"]


def _follow(process: subprocess.Popen[bytes], log: Path) -> int:
    """Copy `log` to stdout from the start, until `process` has ended; its exit status."""
    with log.open("rb") as source:
        while True:
            chunk = source.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                continue
            if process.poll() is not None:
                rest = source.read()
                sys.stdout.buffer.write(rest)
                sys.stdout.flush()
                return process.returncode
            time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serial", action="store_true", help="one pytest session")
    args = parser.parse_args()
    checks = ["make", "--no-print-directory", "lint", "typecheck", "proto-check"]
    if args.serial:
        status = subprocess.run(checks, cwd=ROOT).returncode
        return status or subprocess.run(PYTEST, cwd=ROOT).returncode
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with LOG.open("wb") as log:
        containers = subprocess.Popen(
            [*PYTEST, "tests/container"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    print(f"==> container tier: started in the background (output in {LOG})", flush=True)
    try:
        status = subprocess.run(checks, cwd=ROOT).returncode
        if status == 0:
            print("==> unit and integration tiers", flush=True)
            tiers = [*PYTEST, "tests/unit", "tests/integration"]
            status = subprocess.run(tiers, cwd=ROOT).returncode
        else:  # as Ctrl-C would: the session stops its image build and cleans up
            containers.send_signal(signal.SIGINT)
        print("==> container tier (its output so far, then live until it ends)", flush=True)
        container_status = _follow(containers, LOG)
    except KeyboardInterrupt:
        containers.send_signal(signal.SIGINT)
        containers.wait()
        return 130
    return status or container_status


if __name__ == "__main__":
    sys.exit(main())
