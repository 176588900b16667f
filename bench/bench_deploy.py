"""Deploy time and memory per node on the process runtime, for 10, 50 and 100-node networks.

For each size it writes a ring topology with a chord every fifth node (about 1.2 links per
node, 20-60 km, frames of 100,000 bits), deploys it, and
prints the time from `deploy` to nodes ready and to "every link has distilled key at both ends",
then each node's memory a few seconds later: RSS (every page the process maps, shared library
and copy-on-write pages counted in full in every process), PSS (shared pages divided among the
processes sharing them: what the node costs the machine) and USS (pages only it uses).

Each size runs at two emulation speeds: real time (speed-up 1, the node's default) and the
examples' speed-up 10. Every link at speed-up 10 asks for about 0.18 of a core (measured: 11
links keep two cores busy), so on a small machine the larger networks are CPU-bound and the
figures say how the load is shared out, not how fast one link is.

    python bench/bench_deploy.py [--sizes 10 50 100] [--speedups 1 10] [--settle 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from qkdnet.orchestrator.network_commands import wait_for_key
from qkdnet.orchestrator.network_plan import NetworkPlan
from qkdnet.orchestrator.runtime import runtime_for
from qkdnet.orchestrator.topology import load_topology


def ring_topology(n: int, speedup: float = 10) -> dict[str, object]:
    nodes: dict[str, dict[str, object]] = {f"n{i:03d}": {} for i in range(n)}
    ids = list(nodes)
    links = [
        {"endpoints": [ids[i], ids[(i + 1) % n]], "length_km": 20 + (i * 7) % 41}
        for i in range(n if n > 2 else 1)
    ]
    links += [
        {"endpoints": [ids[i], ids[(i + n // 2) % n]], "length_km": 60}
        for i in range(0, n // 2, 5)
        if n >= 10
    ]
    return {
        "name": f"bench-ring{n}",
        "defaults": {"speedup": speedup, "frame_bits": 100_000},
        "nodes": nodes,
        "links": links,
    }


def memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":")
        fields[name] = int(value.split()[0])
    return {
        "rss": fields["Rss"],
        "pss": fields["Pss"],
        "uss": fields["Private_Clean"] + fields["Private_Dirty"],
    }


def bench(n: int, speedup: float, root: Path, settle: float) -> dict[str, float]:
    path = root / f"ring{n}-x{speedup:g}.yaml"
    path.write_text(yaml.safe_dump(ring_topology(n, speedup), sort_keys=False))
    plan = NetworkPlan.build(load_topology(path), root / f"state{n}-x{speedup:g}")
    runtime = runtime_for(plan)
    try:
        start = time.monotonic()
        info = runtime.deploy(timeout=300)
        ready = time.monotonic() - start
        asyncio.run(wait_for_key(plan, timeout=600))
        key = time.monotonic() - start
        time.sleep(settle)
        pids = [node.pid for node in info.nodes.values() if node.pid]
        mem = [memory_kb(pid) for pid in pids]
    finally:
        runtime.destroy()
    return {
        "nodes": n,
        "speedup": speedup,
        "links": len(plan.links),
        "ready_s": ready,
        "every_link_key_s": key,
        "rss_mb_median": statistics.median(m["rss"] for m in mem) / 1024,
        "rss_mb_max": max(m["rss"] for m in mem) / 1024,
        "pss_mb_median": statistics.median(m["pss"] for m in mem) / 1024,
        "uss_mb_median": statistics.median(m["uss"] for m in mem) / 1024,
        "total_pss_mb": sum(m["pss"] for m in mem) / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--speedups", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="qkdnet-bench-deploy-") as tmp:
        for speedup in args.speedups:
            for n in args.sizes:
                result = bench(n, speedup, Path(tmp), args.settle)
                results.append(result)
                if not args.json:
                    print(
                        f"speed-up {speedup:3g} {n:4d} nodes {result['links']:4.0f} links:"
                        f" ready {result['ready_s']:5.1f} s,"
                        f" every link has key {result['every_link_key_s']:5.1f} s;"
                        f" per node RSS {result['rss_mb_median']:.0f} MB (max"
                        f" {result['rss_mb_max']:.0f}), PSS {result['pss_mb_median']:.0f} MB,"
                        f" USS {result['uss_mb_median']:.0f} MB; all nodes"
                        f" {result['total_pss_mb']:.0f} MB",
                        flush=True,
                    )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
