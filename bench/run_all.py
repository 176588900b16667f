"""Run every benchmark of bench/ in turn and print their figures (`make bench`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    ["bench_cascade.py"],
    ["bench_toeplitz.py"],
    ["bench_polynomial_hash.py"],
    ["bench_postprocessing.py"],
    ["bench_deploy.py"],
    ["bench_deploy.py", "--runtime", "docker", "--speedups", "10"],
    ["bench_images.py"],
    ["bench_relay.py"],
    ["bench_cross_domain.py"],
    ["bench_key_streams.py"],
    ["bench_slow_clients.py"],
    ["bench_verbs.py"],
    ["bench_cli_import.py"],
    ["model_table.py"],
]


def main() -> int:
    failed = 0
    for command in BENCHMARKS:
        print(f"\n=== {' '.join(command)} ===", flush=True)
        result = subprocess.run([sys.executable, str(HERE / command[0]), *command[1:]])
        failed += result.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
