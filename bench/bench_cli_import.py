"""Import time of the `qkdnet` command line: what every verb pays before it does anything.

Runs `python -X importtime -c "import qkdnet.orchestrator.cli.main"` in a fresh interpreter
`--runs` times (default 9) and prints the median cumulative import time of the CLI's entry
module, the number of modules it loads, and the median wall time of `qkdnet --version` (a whole
process: interpreter start, imports, parsing), with the machine's load average. `--python`
measures another checkout's interpreter (its `.venv/bin/python`), for a before/after
(`--module qkdnet.orchestrator.cli` for checkouts older than the CLI's verb groups).

    python bench/bench_cli_import.py [--runs 9] [--python PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

MODULE = "qkdnet.orchestrator.cli.main"


def import_micros(python: str, module: str) -> tuple[int, int]:
    """(cumulative µs of `module`, modules imported) from one fresh interpreter."""
    result = subprocess.run(
        [python, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    cumulative = 0
    modules = 0
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        modules += 1
        _self_us, cumulative_us, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
        if name == module:
            cumulative = int(cumulative_us)
    return cumulative, modules


def version_seconds(python: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [python, "-m", "qkdnet.orchestrator", "--version"], capture_output=True, check=True
    )
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure")
    parser.add_argument(
        "--module", default=MODULE, help=f"the CLI's entry module (default {MODULE})"
    )
    args = parser.parse_args()
    load = os.getloadavg()[0]
    imports = [import_micros(args.python, args.module) for _ in range(args.runs)]
    versions = [version_seconds(args.python) for _ in range(args.runs)]
    micros = statistics.median(cumulative for cumulative, _ in imports)
    print(f"python: {args.python}")
    print(f"load average before: {load:.2f}, after: {os.getloadavg()[0]:.2f}")
    print(
        f"import {args.module}: {micros / 1000:.1f} ms (median of {args.runs}), "
        f"{imports[0][1]} modules"
    )
    print(
        f"qkdnet --version: {statistics.median(versions) * 1000:.0f} ms wall "
        f"(median of {args.runs}; min {min(versions) * 1000:.0f}, "
        f"max {max(versions) * 1000:.0f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
