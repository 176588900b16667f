"""Slow and abusive clients against a node's ETSI GS QKD 014 API, the issue 13 probe at scale.

Deploys the two-node example (process runtime), then, several times over: opens N connections
to node alice's key API that never finish (by default 800 that complete TLS and send half a
request head, and 200 that send half a TLS ClientHello), and while they are held, has sae-alice
fetch keys (enc_keys at alice, dec_keys at bob) one request after another. It prints, per run:

- alice's open file descriptors before, while held (peak) and after;
- how long until the node had closed every held connection (the floor: within 30 s);
- enc_keys latency (p50, p99) before and while the connections are held, and how many of the
  well-behaved requests failed (none should);
- the connections the node evicted or refused at its cap (NodeControl status).

The medians over the runs come last, with the machine's load average.

    python bench/bench_slow_clients.py [--runs 3] [--tls 800] [--raw 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from qkdnet.orchestrator.cli.network_commands import wait_for_key
from qkdnet.orchestrator.client.controller import NodeClient
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.topology import load_topology
from qkdnet.orchestrator.runtime import runtime_for
from qkdnet.v1 import control_pb2

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HELD_DEADLINE_S = 60.0


def _context(plan: NetworkPlan, sae: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(plan.pki_dir / "ca.pem"))
    where = plan.pki_dir / "saes" / sae
    context.load_cert_chain(str(where / "cert.pem"), str(where / "key.pem"))
    return context


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _hold(
    host: str, port: int, context: ssl.SSLContext, tls: int, raw: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    held = []
    for index in range(tls + raw):
        secure = index < tls
        reader, writer = await asyncio.open_connection(host, port, ssl=context if secure else None)
        writer.write(
            b"POST /api/v1/keys/sae-bob/enc_keys HTTP/1.1\r\nHost: kme\r\n"
            if secure
            else b"\x16\x03\x01\x02\x00"
        )
        held.append((reader, writer))
    return held


async def _dropped(reader: asyncio.StreamReader) -> float:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while await reader.read(1024):
            pass
    return time.monotonic()


async def _round_trips(
    plan: NetworkPlan, session: aiohttp.ClientSession, count: int
) -> tuple[list[float], int]:
    """enc_keys at alice then dec_keys at bob, `count` times: latencies (ms), failures."""
    alice = f"{plan.nodes['alice'].key_api_url}/api/v1/keys"
    bob = f"{plan.nodes['bob'].key_api_url}/api/v1/keys"
    master, slave = _context(plan, "sae-alice"), _context(plan, "sae-bob")
    latencies, failures = [], 0
    for _ in range(count):
        started = time.perf_counter()
        try:
            async with session.post(
                f"{alice}/sae-bob/enc_keys", json={"number": 1}, ssl=master
            ) as answer:
                body = await answer.json()
            latencies.append((time.perf_counter() - started) * 1e3)
            ids = [{"key_ID": key["key_ID"]} for key in body["keys"]]
            async with session.post(
                f"{bob}/sae-alice/dec_keys", json={"key_IDs": ids}, ssl=slave
            ) as answer:
                assert answer.status == 200
        except (aiohttp.ClientError, KeyError, AssertionError, TimeoutError):
            failures += 1
    return latencies, failures


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _delivery(plan: NetworkPlan) -> control_pb2.DeliveryStatus:
    client = NodeClient("alice", plan.nodes["alice"].address, plan.controller_credentials)
    try:
        return (await client.status()).delivery
    finally:
        await client.close()


async def _run(plan: NetworkPlan, pid: int, tls: int, raw: int) -> dict[str, float]:
    host, port = plan.nodes["alice"].key_api_address.rsplit(":", 1)  # type: ignore[union-attr]
    first = await _delivery(plan)
    async with aiohttp.ClientSession() as session:
        quiet, _ = await _round_trips(plan, session, 50)
        before = _fds(pid)
        started = time.monotonic()
        held = await _hold(host, int(port), _context(plan, "sae-alice"), tls, raw)
        opened_s = time.monotonic() - started
        await asyncio.sleep(0.5)
        peak = _fds(pid)
        drops = [asyncio.create_task(_dropped(reader)) for reader, _ in held]
        busy, failures = await _round_trips(plan, session, 50)
        try:
            ends = await asyncio.wait_for(asyncio.gather(*drops), HELD_DEADLINE_S)
        finally:
            for _, writer in held:
                writer.close()
        all_dropped = max(ends) - started
        await asyncio.sleep(1.0)
        after = _fds(pid)
    delivery = await _delivery(plan)
    return {
        "fds_before": before,
        "fds_peak": peak,
        "fds_after": after,
        "open_s": opened_s,
        "all_dropped_s": all_dropped,
        "p50_quiet_ms": statistics.median(quiet),
        "p50_held_ms": statistics.median(busy),
        "p99_held_ms": _p(busy, 0.99),
        "failures": failures,
        "evicted": delivery.key_api_connections_evicted - first.key_api_connections_evicted,
        "refused": delivery.key_api_connections_refused - first.key_api_connections_refused,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tls", type=int, default=800, help="held TLS connections (800)")
    parser.add_argument("--raw", type=int, default=200, help="held pre-TLS connections (200)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qkdnet-bench-slow-") as root:
        plan = NetworkPlan.build(load_topology(EXAMPLES / "two-node.yaml"), Path(root) / "s")
        runtime = runtime_for(plan)
        runtime.deploy(timeout=90)
        try:
            asyncio.run(wait_for_key(plan, timeout=120))
            pid = runtime.inspect().nodes["alice"].pid
            assert pid is not None
            results = []
            for run in range(args.runs):
                result = asyncio.run(_run(plan, pid, args.tls, args.raw))
                results.append(result)
                print(
                    f"run {run + 1}: {args.tls}+{args.raw} held; fds {result['fds_before']:.0f}"
                    f" -> {result['fds_peak']:.0f} -> {result['fds_after']:.0f}; all dropped "
                    f"{result['all_dropped_s']:.1f} s after the first opened (opening took "
                    f"{result['open_s']:.1f} s); enc_keys p50 {result['p50_quiet_ms']:.1f} ms "
                    f"quiet, {result['p50_held_ms']:.1f} ms held (p99 "
                    f"{result['p99_held_ms']:.1f}), {result['failures']:.0f} failed of 50; "
                    f"evicted {result['evicted']:.0f}, refused {result['refused']:.0f}",
                    flush=True,
                )
        finally:
            runtime.destroy()
    med = {key: statistics.median(r[key] for r in results) for key in results[0]}
    load = os.getloadavg()
    print(
        f"\nmedian of {args.runs} runs ({args.tls} half-sent heads + {args.raw} half-sent TLS "
        f"handshakes): every connection dropped within {med['all_dropped_s']:.1f} s (floor: "
        f"30 s); alice's file descriptors {med['fds_before']:.0f} -> {med['fds_peak']:.0f} -> "
        f"{med['fds_after']:.0f}; enc_keys p50 {med['p50_quiet_ms']:.1f} ms quiet, "
        f"{med['p50_held_ms']:.1f} ms while held; {med['failures']:.0f} well-behaved requests "
        f"failed\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores"
    )
    return 0 if med["all_dropped_s"] < 30 and med["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
