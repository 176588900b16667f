"""Wall time of the CLI's verbs against a running network (target: 0.5 s each).

Deploys examples/chain5.yaml on the process runtime in a registry of its own (a temporary
XDG_STATE_HOME, so nothing of the user's is touched), waits for key on every link, then runs
each verb as a user would, a fresh `qkdnet` process each time, and prints the median and the
spread of the wall time of `--runs` runs (default 7), the median CPU time the verb itself used
(user + system: what it costs, whatever else the machine does), and the machine's load
average. The chain distils key all the while (it keeps both cores of a small machine busy at
its speed-up of 10), so wall times include waiting for a core. The network is destroyed
at the end, whatever happens.

    python bench/bench_verbs.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "chain5.yaml"
QKDNET = [sys.executable, "-m", "qkdnet.orchestrator"]


def verbs(graph_file: Path) -> dict[str, list[str]]:
    """The verbs measured: name -> arguments after `qkdnet`."""
    return {
        "--version": ["--version"],
        "validate": ["validate", "-t", str(EXAMPLE)],
        "inspect --all": ["inspect", "--all"],
        "inspect": ["inspect", "--name", "chain5"],
        "inspect --json": ["inspect", "--name", "chain5", "--json"],
        "key get": ["key", "get", "--name", "chain5", "--from", "sae-a", "--to", "sae-b"],
        "fault show": ["fault", "show", "--name", "chain5"],
        "graph": ["graph", "--name", "chain5", "-o", str(graph_file)],
    }


def run(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `qkdnet ARGS` (RuntimeError when it failed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([*QKDNET, *args], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"qkdnet {' '.join(args)} failed: {result.stderr.strip()[-300:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each verb (default 7)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qkdnet-bench-verbs-") as home:
        env = dict(os.environ, XDG_STATE_HOME=home)
        print(f"deploying {EXAMPLE.name} ...", flush=True)
        subprocess.run(
            [*QKDNET, "deploy", "-t", str(EXAMPLE)], env=env, check=True, capture_output=True
        )
        try:
            print(f"load average before: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
            print(
                f"{'verb':<16} {'wall s':>7} {'min':>6} {'max':>6} {'CPU s':>6}  "
                "(medians; target: wall 0.5 s)"
            )
            worst = 0.0
            for name, verb in verbs(Path(home) / "chain5.png").items():
                runs = [run(verb, env) for _ in range(args.runs)]
                walls = [wall for wall, _ in runs]
                median = statistics.median(walls)
                cpu = statistics.median(cpu for _, cpu in runs)
                worst = max(worst, median)
                mark = "ok" if median <= 0.5 else "SLOW"
                print(
                    f"{name:<16} {median:7.3f} {min(walls):6.3f} {max(walls):6.3f} {cpu:6.3f}  "
                    f"{mark}",
                    flush=True,
                )
            print(f"load average after: {os.getloadavg()[0]:.2f}; slowest median {worst:.3f} s")
        finally:
            subprocess.run([*QKDNET, "destroy", "--name", "chain5"], env=env, capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
