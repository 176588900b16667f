"""How the state directory of a running deployment grows: the bundled chain5 on the process
runtime, sampled for a few minutes.

The benchmark deploys a copy of `examples/chain5.yaml` under a name of its own (so that it
neither meets another deployment's addresses nor its state directory), waits until every link
has key, then samples the state directory every `--every` seconds for `--minutes` minutes:
its size on disk split into key stores (SQLite files with their WAL), logs and the rest, the
key the stores hold, and the machine's load. It always destroys the deployment at the end.

With the key store cap (`store_max_bits`) the stores stop growing once every link holds the
cap and the logs stop at their rotation bound, so the last samples flatten; `--store-max-bits`
sets the cap in the copy of the topology (default: the topology's, i.e. the node's default).
`--consume` lets an application draw keys at sae-a all along (keys of 256 bits a second), so
consumed blocks are part of what is measured.

    python bench/bench_state_growth.py [--minutes 5] [--every 30] [--store-max-bits N]
                                       [--consume KEYS_PER_S] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from qkdnet.orchestrator.cli.network_commands import wait_for_key
from qkdnet.orchestrator.client.key_client import KeyApiClient, KeyApiError
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.topology import load_topology
from qkdnet.orchestrator.runtime import runtime_for

ROOT = Path(__file__).resolve().parents[1]
CHAIN5 = ROOT / "examples" / "chain5.yaml"


def _listening_hosts() -> set[str]:
    """IPv4 addresses with a listening TCP socket (from /proc/net/tcp)."""
    hosts = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] != "0A":  # LISTEN
            continue
        raw = fields[1].split(":")[0]
        octets = [str(int(raw[i : i + 2], 16)) for i in (6, 4, 2, 0)]
        hosts.add(".".join(octets))
    return hosts


def _plan(root: Path, store_max_bits: int | None) -> NetworkPlan:
    """chain5 under a fresh name, in a loopback block nobody listens on."""
    data: dict[str, Any] = yaml.safe_load(CHAIN5.read_text())
    if store_max_bits is not None:
        data["defaults"]["store_max_bits"] = store_max_bits
    data["name"] = f"growth-{secrets.token_hex(3)}"
    path = root / "chain5.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    busy = {int(host.split(".")[1]) for host in _listening_hosts() if host.startswith("127.")}
    block = next(x for x in range(230, 1, -1) if x not in busy)
    return NetworkPlan.build(load_topology(path), root / "state", runtime="process", block=block)


def _sizes(state: Path) -> dict[str, int]:
    """Bytes on disk under `state`: key stores, logs, the rest."""
    out = {"stores": 0, "logs": 0, "other": 0}
    for path in state.rglob("*"):
        try:
            st = path.lstat()
        except OSError:
            continue  # rotated or checkpointed away while walking
        if not path.is_file():
            continue
        used = st.st_blocks * 512
        if ".sqlite" in path.name:
            out["stores"] += used
        elif path.parent.name == "logs":
            out["logs"] += used
        else:
            out["other"] += used
    return out


async def _consume(plan: NetworkPlan, keys_per_s: float, stop: asyncio.Event) -> int:
    """Fetch keys sae-a -> sae-b (and let sae-b fetch them) until `stop`; returns keys taken."""
    taken = 0
    master = KeyApiClient.for_sae(plan, "sae-a")
    slave = KeyApiClient.for_sae(plan, "sae-b")
    async with master, slave:
        while not stop.is_set():
            started = time.monotonic()
            try:
                keys = await master.enc_keys("sae-b", number=max(1, int(keys_per_s)), size=256)
                await slave.dec_keys("sae-a", [k.key_id for k in keys.keys])
                taken += len(keys.keys)
            except KeyApiError:  # a refused request is part of the load
                pass
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    return taken


async def _sample(
    plan: NetworkPlan, minutes: float, every: float, consume: float
) -> tuple[list[dict[str, Any]], int]:
    stop = asyncio.Event()
    consumer = asyncio.create_task(_consume(plan, consume, stop)) if consume > 0 else None
    samples = []
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        sizes = _sizes(plan.state_dir)
        load1, _, _ = os.getloadavg()
        sample = {"s": round(elapsed), **sizes, "total": sum(sizes.values()), "load1": load1}
        samples.append(sample)
        print(
            f"  {elapsed / 60:5.1f} min  total {sample['total'] / 1e6:7.2f} MB  "
            f"stores {sizes['stores'] / 1e6:7.2f}  logs {sizes['logs'] / 1e6:6.2f}  "
            f"other {sizes['other'] / 1e6:5.2f}  load {load1:.2f}",
            flush=True,
        )
        if elapsed >= minutes * 60:
            break
        await asyncio.sleep(min(every, minutes * 60 - elapsed + 0.01))
    stop.set()
    taken = await consumer if consumer is not None else 0
    return samples, taken


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to sample")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--store-max-bits", type=int, default=None, help="key store cap per link")
    parser.add_argument("--consume", type=float, default=0.0, help="keys a second sae-a takes")
    parser.add_argument("--json", action="store_true", help="print the samples as JSON too")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="qkdnet-bench-growth-") as tmp:
        plan = _plan(Path(tmp), args.store_max_bits)
        runtime = runtime_for(plan)
        print(f"deploying {plan.name} (chain5) in {plan.state_dir}", flush=True)
        try:
            runtime.deploy(timeout=120)
            asyncio.run(wait_for_key(plan, timeout=300))
            samples, taken = asyncio.run(_sample(plan, args.minutes, args.every, args.consume))
        finally:
            runtime.destroy()
    first, last = samples[0], samples[-1]
    minutes = (last["s"] - first["s"]) / 60
    half = next(s for s in samples if s["s"] >= last["s"] / 2)
    print(
        f"chain5: state dir {first['total'] / 1e6:.2f} MB -> {last['total'] / 1e6:.2f} MB in "
        f"{minutes:.1f} min (+{(last['total'] - first['total']) / 1e6:.2f} MB; second half "
        f"+{(last['total'] - half['total']) / 1e6:.2f} MB); stores "
        f"{last['stores'] / 1e6:.2f} MB, logs {last['logs'] / 1e6:.2f} MB; "
        f"mean load {sum(s['load1'] for s in samples) / len(samples):.2f}"
        + (f"; {taken} keys consumed" if args.consume > 0 else "")
    )
    if args.json:
        print(json.dumps(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
