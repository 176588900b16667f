"""Keys relayed across a border against the same hop count inside one domain.

Two networks of three hops between sae-a (node a) and sae-b (node b), every link the same
length of decoy BB84 at the same settings (3 km at speed-up 1 by default: as in
bench_relay.py, the links then leave the relay, which shares the node processes with their
post-processing, the CPU), pools off (every key relayed on demand):

- one domain: a - r1 - r2 - b, one CA, the relay hop by hop;
- two domains: a - ab | db - b, each domain its own deployment and CA; ab and db are border
  nodes sharing a BB84 link, and keys cross between them over ETSI GS QKD 020 (HTTPS, mutual
  TLS) padded with that link's key, then are relayed on and acknowledged back.

Both are deployed through the CLI on the process runtime (in a state directory of their own),
their links given time to store key, and then, as sae-a over one keep-alive HTTPS session:

1. `--requests` enc_keys of one 256-bit key in sequence: client-side latency p50/p99;
2. `--batches` enc_keys of 10 keys in sequence: keys per second of enc_keys time (sae-b's
   dec_keys and waits on a 503 while the links' key catches up are left out).

Each key is fetched by sae-b (dec_keys, not timed) and compared. The measurement is repeated
`--runs` times on the same deployment and the median of the runs is printed, with the machine's
load average before and after.

    python bench/bench_cross_domain.py [--runs 3] [--requests 100] [--batches 30] [--settle 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ONE_DOMAIN = """\
name: bench-chain3
defaults: {speedup: SPEEDUP, frame_bits: 100000}
key_delivery: {pool_keys: 0}
nodes:
  a: {saes: [sae-a]}
  r1: {}
  r2: {}
  b: {saes: [sae-b]}
links:
  - {endpoints: [a, r1], length_km: LENGTH}
  - {endpoints: [r1, r2], length_km: LENGTH}
  - {endpoints: [r2, b], length_km: LENGTH}
"""

TWO_DOMAINS = """\
name: bench-fed3
defaults: {speedup: SPEEDUP, frame_bits: 100000}
key_delivery: {pool_keys: 0}
domains:
  x: {}
  y: {}
nodes:
  a: {domain: x, saes: [sae-a]}
  ab: {domain: x}
  db: {domain: y}
  b: {domain: y, saes: [sae-b]}
links:
  - {endpoints: [a, ab], length_km: LENGTH}
  - {endpoints: [ab, db], length_km: LENGTH}
  - {endpoints: [db, b], length_km: LENGTH}
"""

CLI = [sys.executable, "-m", "qkdnet.orchestrator.cli.main"]


def _cli(*args: str, timeout: float = 180) -> None:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"qkdnet {' '.join(args)} failed:\n{done.stderr}")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _plans(name: str) -> dict[str, object]:
    from qkdnet.orchestrator.plan.network_plan import NetworkPlan
    from qkdnet.orchestrator.plan.registry import Registry

    out: dict[str, object] = {}
    for entry in Registry().all():
        if entry.name == name or entry.name.startswith(f"{name}-"):
            plan = NetworkPlan.load(entry.state_dir)
            assert plan is not None
            for node in plan.nodes.values():
                for sae in node.saes:
                    out[sae] = plan
    return out


def _one_run(plan_of: dict[str, object], requests: int, batches: int) -> tuple[float, float, float]:
    """(p50 ms, p99 ms) of one-key requests, and keys per second of 10-key requests."""
    from qkdnet.orchestrator.client.key_client import BlockingKeyApiClient, KeyApiError

    latencies: list[float] = []
    with (
        BlockingKeyApiClient.for_sae(plan_of["sae-a"], "sae-a", timeout=30) as master,  # type: ignore[arg-type]
        BlockingKeyApiClient.for_sae(plan_of["sae-b"], "sae-b", timeout=30) as slave,  # type: ignore[arg-type]
    ):

        def ask(number: int) -> float:
            while True:
                started = time.perf_counter()
                try:
                    sent = master.enc_keys("sae-b", number, 256)
                except KeyApiError as exc:
                    if exc.status != 503:
                        raise
                    time.sleep(0.2)  # the links' key catching up: not timed
                    continue
                ms = (time.perf_counter() - started) * 1e3
                got = slave.dec_keys("sae-a", [key.key_id for key in sent.keys])
                if [k.key for k in got.keys] != [k.key for k in sent.keys]:
                    raise SystemExit("the slave's keys differ from the master's")
                return ms

        for _ in range(requests):
            latencies.append(ask(1))
        spent = 0.0  # enc_keys time only: dec_keys and 503 waits are not counted
        for _ in range(batches):
            spent += ask(10) / 1e3
    return _percentile(latencies, 0.5), _percentile(latencies, 0.99), 10 * batches / spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--settle", type=float, default=15.0, help="seconds of key before")
    parser.add_argument("--speedup", type=float, default=1.0, help="the links' (default 1)")
    parser.add_argument("--length-km", type=float, default=3.0, help="every link's (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qkdnet-bench-") as home:
        os.environ["XDG_STATE_HOME"] = home  # deployments of its own, whatever else runs
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        rows = []
        for label, text in (("one domain", ONE_DOMAIN), ("two domains", TWO_DOMAINS)):
            path = Path(home) / "topology.yaml"
            path.write_text(
                text.replace("SPEEDUP", f"{args.speedup:g}").replace(
                    "LENGTH", f"{args.length_km:g}"
                )
            )
            name = text.splitlines()[0].split(": ")[1]
            _cli("deploy", "-t", str(path))
            try:
                time.sleep(args.settle)
                plan_of = _plans(name)
                runs = [_one_run(plan_of, args.requests, args.batches) for _ in range(args.runs)]
            finally:
                _cli("destroy", "-t", str(path))
            p50 = statistics.median(r[0] for r in runs)
            p99 = statistics.median(r[1] for r in runs)
            rate = statistics.median(r[2] for r in runs)
            rows.append((label, p50, p99, rate))
            print(
                f"{label:12s} 3 hops: enc_keys of 1 key p50 {p50:6.1f} ms  p99 {p99:6.1f} ms; "
                f"10-key requests {rate:7.0f} keys/s  (median of {args.runs} runs: "
                + ", ".join(f"{r[0]:.1f}/{r[1]:.1f} ms {r[2]:.0f}/s" for r in runs)
                + ")",
                flush=True,
            )
        (_, p50a, p99a, ratea), (_, p50b, p99b, rateb) = rows
        print(
            f"across the border: p50 x{p50b / p50a:.2f}, p99 x{p99b / p99a:.2f}, "
            f"keys/s x{rateb / ratea:.2f} of one domain; load average after "
            f"{os.getloadavg()[0]:.2f}"
        )


if __name__ == "__main__":
    main()
