"""`python -m qkdnet.node --config FILE`: run a node agent (what `qkdnet node` runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .agent import main


def run() -> int:
    parser = argparse.ArgumentParser(prog="qkdnet node", description="Run a qkdnet node agent.")
    parser.add_argument("--config", required=True, type=Path, help="node configuration (YAML)")
    args = parser.parse_args()
    return main(args.config)


if __name__ == "__main__":
    sys.exit(run())
