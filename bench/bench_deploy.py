"""Deploy time and memory per node on the process runtime (10, 50 and 100-node networks) or on
the docker runtime (10 and 30 containers, `--runtime docker`; images from qkdnet image build).

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

In containers, memory is also given as the container's cgroup sees it (what `docker stats`
shows: usage less inactive page cache), which counts the node's shared libraries in full, as
RSS does.

    python bench/bench_deploy.py [--runtime process|docker] [--sizes ...] [--speedups 1 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from qkdnet.orchestrator.cli.network_commands import wait_for_key
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.topology import load_topology
from qkdnet.orchestrator.runtime import runtime_for
from qkdnet.orchestrator.runtime.docker_runtime import DockerRuntime
from qkdnet.orchestrator.runtime.seam import Runtime


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


def container_memory_mb(runtime: Runtime) -> list[float]:
    """Each node container's memory as `docker stats` counts it (cgroup v1 and v2)."""
    assert isinstance(runtime, DockerRuntime)
    containers = [c for name, c in runtime.containers().items() if name in runtime.plan.nodes]

    def one(container: Any) -> float:
        stats = container.stats(stream=False)["memory_stats"]
        inner = stats.get("stats", {})
        cache = inner.get("total_inactive_file", inner.get("inactive_file", 0))
        return float(stats["usage"] - cache) / 2**20

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, containers))


def bench(n: int, speedup: float, root: Path, settle: float, runtime_name: str) -> dict[str, float]:
    path = root / f"ring{n}-x{speedup:g}.yaml"
    path.write_text(yaml.safe_dump(ring_topology(n, speedup), sort_keys=False))
    plan = NetworkPlan.build(
        load_topology(path), root / f"state{n}-x{speedup:g}", runtime=runtime_name
    )
    runtime = runtime_for(plan)
    cgroup_mb: list[float] = []
    fault_show_s = 0.0
    try:
        start = time.monotonic()
        info = runtime.deploy(timeout=300)
        ready = time.monotonic() - start
        asyncio.run(wait_for_key(plan, timeout=600))
        key = time.monotonic() - start
        time.sleep(settle)
        pids = [node.pid for node in info.nodes.values() if node.pid]
        mem = [memory_kb(pid) for pid in pids]
        if runtime_name == "docker":
            cgroup_mb = container_memory_mb(runtime)
            started = time.monotonic()
            runtime.faults()  # what `qkdnet fault show` reads: a docker exec a node
            fault_show_s = time.monotonic() - started
    finally:
        runtime.destroy()
    extra = {}
    if cgroup_mb:
        extra = {
            "container_mb_median": statistics.median(cgroup_mb),
            "container_mb_max": max(cgroup_mb),
            "fault_show_s": fault_show_s,
        }
    return extra | {
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
    parser.add_argument("--runtime", choices=["process", "docker"], default="process")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--speedups", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = args.sizes or ([10, 30] if args.runtime == "docker" else [10, 50, 100])
    unit = "containers" if args.runtime == "docker" else "nodes"
    results = []
    with tempfile.TemporaryDirectory(prefix="qkdnet-bench-deploy-") as tmp:
        for speedup in args.speedups:
            for n in sizes:
                result = bench(n, speedup, Path(tmp), args.settle, args.runtime)
                results.append(result)
                if not args.json:
                    in_containers = (
                        f"; per container {result['container_mb_median']:.0f} MiB (max "
                        f"{result['container_mb_max']:.0f}) as docker stats counts it;"
                        f" fault show {result['fault_show_s']:.2f} s"
                        if "container_mb_median" in result
                        else ""
                    )
                    print(
                        f"{args.runtime}: speed-up {speedup:3g} {n:4d} {unit}"
                        f" {result['links']:4.0f} links:"
                        f" ready {result['ready_s']:5.1f} s,"
                        f" every link has key {result['every_link_key_s']:5.1f} s;"
                        f" per node RSS {result['rss_mb_median']:.0f} MB (max"
                        f" {result['rss_mb_max']:.0f}), PSS {result['pss_mb_median']:.0f} MB,"
                        f" USS {result['uss_mb_median']:.0f} MB; all nodes"
                        f" {result['total_pss_mb']:.0f} MB{in_containers}",
                        flush=True,
                    )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
