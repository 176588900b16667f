"""enc_keys latency and keys per second over a direct link and over 2, 4 and 6 trusted-node hops.

For every hop count it deploys a chain of nodes on the process runtime (`a - r1 - ... - b`,
sae-a on node a and sae-b on node b, no SAE on the relays), lets the links accumulate key for
a bounded time (until every link holds enough for the batches below and the pool of
(sae-a, sae-b) is full, or the time is up), and then, as sae-a with its own client certificate
over one keep-alive HTTPS session (ETSI GS QKD 014 enc_keys of 256-bit keys):

1. with the pool, one key per request, in sequence: client-side latency p50/p99, the KME's
   own `ms` (key_container_extension.qkdnet_relay) and keys per wall second;
2. without the pool (`extension_optional: [{"qkdnet_pool": false}]`: every key relayed on
   demand), one key per request: the same, plus where the relay's time goes (`hop_ms`);
3. without the pool, 256 keys per request, in sequence: relay cost is per transaction, so this
   is the relay's capacity, drawing on stored link key; it ends at its bound or at the first
   503 (no route with enough link key), which is reported;
4. with the pool, up to 256 keys per request until the keys the pool held have all been
   handed out: the rate of emptying a full pool once, not a sustained one.

The pool phases come first and last: the sequential one leaves the pool nearly full (every
take wakes the refill), the drain last so that refilling competes with nothing measured.

Every relayed key spends link key on every hop: the one-time pad of the whole relay payload
(keys and key IDs) plus 128 bits of tag key, from the sender's half of the link's store (the
halves are the even and odd frames, so one-way traffic can use half of what a link makes).
The benchmark prints that cost, every link's store level (and the half usable towards b) and
wall-clock secret rate, the keys per second the slowest link could sustain, the relay
transactions node a ran (pool refills included), and the CPU the nodes, the benchmark and
anything else on the machine used during each step; rows measured while other processes used
a sizeable share of the CPU are marked.

The links run at a low speed-up by default (see AUTO_NODE_SPEEDUP): on two cores, a high one
makes hardly more key and leaves the relay, which shares the node processes with the links'
post-processing, waiting for CPU. `--speedup 100` shows that case.

    python bench/bench_relay.py [--hops 1,2,4,6] [--quick] [--speedup X] [--length-km 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import sqlite3
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from qkdnet.node.link_names import link_id_for
from qkdnet.node.protocol.relay import link_key_bits
from qkdnet.orchestrator.cli.network_commands import wait_for_key
from qkdnet.orchestrator.client.network_status import NetworkStatus
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.topology import load_topology
from qkdnet.orchestrator.runtime import runtime_for

KEY_BITS = 256
BATCH = 256
MASTER, SLAVE = "sae-a", "sae-b"
NO_POOL: list[dict[str, Any]] = [{"qkdnet_pool": False}]
TARGET_DIRECT_P50_MS = 3.0
TARGET_KEYS_PER_S = 2000.0
TARGET_HOPS = 4
REQUEST_TIMEOUT_S = 15.0
WARMUP = 5
# Other processes using more cores than this during a chain mark its rows as contended.
CONTENDED_CORES = 0.25
# Wall seconds one chain may take beyond its measuring loops: deploy, first key, teardown.
OVERHEAD_S = 15.0
# The links' speed-up unless --speedup says otherwise. A 3 km link asks for about 1.6 Mbit/s
# of secret key per emulated second, and two cores distil only a few hundred kbit/s in all
# (measured with frames of 100,000 bits: four links at speed-up 0.06 or at 100 each make
# 70-100 kbit/s, with no core idle). A higher speed-up (20..100 included) makes hardly more
# key: it makes the links CPU-bound, and the relay, which runs in the same processes, waits for
# CPU (4 hops without the pool, p50: about 120 ms at speed-up 100, 30 ms at 0.03). So a node's
# links get at most AUTO_NODE_SPEEDUP in all (a node's event loop is shared with its links'
# post-processing) and the chain's links at most AUTO_CHAIN_SPEEDUP (the machine's cores).
AUTO_NODE_SPEEDUP = 0.08
AUTO_CHAIN_SPEEDUP = 0.16


# -- the network -------------------------------------------------------------------------------
def chain_nodes(hops: int) -> list[str]:
    """a, r1 .. r<hops-1>, b: hops + 1 nodes, hops links."""
    return ["a", *(f"r{i}" for i in range(1, hops)), "b"]


def link_speedup(hops: int, args: argparse.Namespace) -> float:
    """The links' speed-up: --speedup, or what leaves the relay CPU (see AUTO_NODE_SPEEDUP)."""
    if args.speedup:
        return float(args.speedup)
    links_per_node = 1 if hops == 1 else 2
    return round(min(AUTO_NODE_SPEEDUP / links_per_node, AUTO_CHAIN_SPEEDUP / hops), 4)


def chain_topology(hops: int, args: argparse.Namespace) -> dict[str, Any]:
    ids = chain_nodes(hops)
    nodes: dict[str, dict[str, Any]] = {n: {} for n in ids}
    nodes["a"] = {"saes": [MASTER]}
    nodes["b"] = {"saes": [SLAVE]}
    return {
        # The process ID keeps two runs at once off the same loopback subnet (taken from the name).
        "name": f"bench-relay{hops}-{os.getpid()}",
        "defaults": {"speedup": link_speedup(hops, args), "frame_bits": args.frame_bits},
        "nodes": nodes,
        "links": [
            {"endpoints": [ids[i], ids[i + 1]], "length_km": args.length_km} for i in range(hops)
        ],
        "key_delivery": {"key_size": KEY_BITS, "pool_keys": args.pool_keys, "multipath": False},
    }


def relay_cost_bits(number: int) -> int:
    """Link key one hop spends on relaying `number` keys (node.relay's own formula: the keys are
    one-time padded, the rest of the payload travels in clear under the tag)."""
    return link_key_bits(KEY_BITS // 8 * number)


@dataclass
class LinkLevel:
    link_id: str
    store_bits: int  # both directions' halves (as of the link's last frame)
    wall_rate_bps: float  # key stored per wall second lately (transmitting end)
    state: str
    toward_b: int | None = None  # the half a relay from a to b can use, now


def toward_b_bits(plan: NetworkPlan) -> dict[str, int]:
    """Unconsumed key of the half of every link a relay from a towards b draws on.

    A relay hop draws from the sender's half of the link's store: the blocks of even frames
    when the sender's ID sorts first, of odd frames otherwise (KeyStoreDb.take_next). This
    reads the sender's store read-only; a link whose store cannot be read is left out.
    """
    ids = list(plan.nodes)
    out = {}
    for sender, receiver in itertools.pairwise(ids):
        link_id = link_id_for(sender, receiver)
        path = plan.nodes[sender].state_dir / "links" / f"{link_id}.sqlite"
        with contextlib.suppress(sqlite3.Error):
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
            try:
                row = db.execute(
                    "SELECT COALESCE(SUM(nbits - consumed), 0) FROM blocks "
                    "WHERE state='ready' AND frame % 2 = ?",
                    (0 if sender < receiver else 1,),
                ).fetchone()
            finally:
                db.close()
            out[link_id] = int(row[0])
    return out


@dataclass
class Levels:
    links: list[LinkLevel]
    transactions: int  # relay transactions node a committed (on-demand relays and pool fills)


async def levels(status: NetworkStatus) -> Levels:
    snapshot = await status.snapshot()
    half = toward_b_bits(status.plan)
    links = []
    for view in snapshot.links:
        tx = view.tx
        if tx is None:
            links.append(LinkLevel(view.link_id, 0, 0.0, "unreachable"))
        else:
            links.append(
                LinkLevel(
                    view.link_id,
                    tx.store_bits,
                    tx.secret_rate_bps,
                    tx.state,
                    half.get(view.link_id),
                )
            )
    origin = snapshot.nodes.get("a")
    transactions = origin.relay.transactions_committed if origin is not None else 0
    return Levels(links, transactions)


def describe(links: list[LinkLevel]) -> str:
    """Every link: key stored (the half usable towards b) and the wall-clock secret rate."""
    return ", ".join(
        f"{lv.link_id} {lv.store_bits / 1e3:,.0f} kbit"
        + ("" if lv.toward_b is None else f" ({lv.toward_b / 1e3:,.0f} towards b)")
        + f" at {lv.wall_rate_bps / 1e3:,.0f} kbit/s"
        + ("" if lv.state == "running" else f" ({lv.state})")
        for lv in links
    )


class CpuMeter:
    """CPU the node processes, this process and everything else used between two readings."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.cores = os.cpu_count() or 1
        self.others_max = 0.0  # the most cores anything else used over one reading
        self._last = self._read()

    def _read(self) -> tuple[float, dict[str, float], float, float]:
        nodes = {}
        for node, pid in self.pids.items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            nodes[node] = (int(fields[11]) + int(fields[12])) / self.ticks  # utime + stime
        times = os.times()
        cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        idle = (int(cpu[3]) + int(cpu[4])) / self.ticks  # idle + iowait
        return time.monotonic(), nodes, times.user + times.system, idle

    def reset(self) -> None:
        self._last = self._read()

    def since_last(self) -> str:
        """Cores used since the last reading: per node, the benchmark, the rest, idle."""
        now, nodes, own, idle = self._read()
        then, nodes0, own0, idle0 = self._last
        self._last = (now, nodes, own, idle)
        span = now - then
        if span < 0.05:
            return "CPU: too short to say"
        used = {n: (nodes[n] - nodes0[n]) / span for n in nodes if n in nodes0}
        bench = (own - own0) / span
        free = (idle - idle0) / span
        others = max(0.0, self.cores - free - bench - sum(used.values()))
        if span >= 0.5:
            self.others_max = max(self.others_max, others)
        return (
            "CPU (cores): "
            + " ".join(f"{n} {c:.2f}" for n, c in used.items())
            + f", benchmark {bench:.2f}, other processes {others:.2f}, idle {free:.2f}"
        )


# -- the SAE -----------------------------------------------------------------------------------
def sae_context(plan: NetworkPlan, sae: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(plan.pki_dir / "ca.pem"))
    where = plan.pki_dir / "saes" / sae
    context.load_cert_chain(str(where / "cert.pem"), str(where / "key.pem"))
    return context


@dataclass
class Sample:
    client_ms: float
    keys: int
    server_ms: float = math.nan
    source: str = ""
    pooled: int = 0
    hop_ms: list[float] = field(default_factory=list)


class Client:
    """sae-a calling its KME (node a) about sae-b over one keep-alive session."""

    def __init__(self, plan: NetworkPlan, session: aiohttp.ClientSession) -> None:
        url = plan.nodes["a"].key_api_url
        assert url, "node a serves no SAE"
        self.url = f"{url}/api/v1/keys/{SLAVE}"
        self.ssl = sae_context(plan, MASTER)
        self.session = session

    async def stored(self) -> int:
        """stored_key_count of Get status: the keys in the pool of (sae-a, sae-b)."""
        async with self.session.get(f"{self.url}/status", ssl=self.ssl) as response:
            body = await response.json(content_type=None)
            assert response.status == 200, body
            return int(body["stored_key_count"])

    async def enc(self, number: int, pool: bool) -> Sample | str:
        """One enc_keys: its sample, or the HTTP status and message of its error."""
        body: dict[str, Any] = {"number": number, "size": KEY_BITS}
        if not pool:
            body["extension_optional"] = NO_POOL
        start = time.perf_counter()
        try:
            async with self.session.post(
                f"{self.url}/enc_keys", json=body, ssl=self.ssl
            ) as response:
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"
        elapsed = (time.perf_counter() - start) * 1e3
        if response.status != 200:
            return f"{response.status} {answer.get('message', answer)}"
        relay = answer.get("key_container_extension", {}).get("qkdnet_relay", {})
        routes = relay.get("routes") or []
        return Sample(
            client_ms=elapsed,
            keys=len(answer["keys"]),
            server_ms=float(relay.get("ms", math.nan)),
            source=str(relay.get("source", "?")),
            pooled=int(relay.get("pooled", 0)),
            hop_ms=[float(x) for x in routes[0]["hop_ms"]] if routes else [],
        )


# -- the phases --------------------------------------------------------------------------------
@dataclass
class Phase:
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def keys(self) -> int:
        return sum(s.keys for s in self.samples)

    @property
    def keys_per_s(self) -> float:
        return self.keys / self.wall_s if self.wall_s > 0 and self.samples else math.nan


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank p-th percentile; nan when there is nothing."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


async def sequential(client: Client, pool: bool, requests: int, bound_s: float) -> Phase:
    """`requests` enc_keys of one key, one after the other (at most `bound_s`)."""
    phase = Phase()
    start = time.perf_counter()
    while len(phase.samples) + len(phase.errors) < requests:
        if time.perf_counter() - start > bound_s:
            phase.note = f"stopped at the bound of {bound_s:.0f} s"
            break
        result = await client.enc(1, pool)
        if isinstance(result, Sample):
            phase.samples.append(result)
        else:
            phase.errors.append(result)
            await asyncio.sleep(0.2)  # 503: the route is out of link key for now
    phase.wall_s = time.perf_counter() - start
    return phase


async def batched(client: Client, batches: int, bound_s: float) -> Phase:
    """Up to `batches` enc_keys of BATCH keys without the pool, in sequence (at most
    `bound_s`); the first error (503: the route is out of link key) ends it."""
    phase = Phase()
    start = time.perf_counter()
    while len(phase.samples) < batches:
        if time.perf_counter() - start > bound_s:
            phase.note = f"stopped at the bound of {bound_s:.0f} s"
            break
        result = await client.enc(BATCH, False)
        if not isinstance(result, Sample):
            phase.errors.append(result)
            phase.note = f"ended after {phase.keys} keys by {result}"
            break
        phase.samples.append(result)
    phase.wall_s = time.perf_counter() - start
    return phase


async def drain(client: Client, pooled: int, bound_s: float) -> Phase:
    """enc_keys of up to BATCH keys from the pool, in sequence, until the `pooled` keys it held
    at the start have been handed out (at most `bound_s`); never more than it holds, so that
    no key is relayed on demand."""
    phase = Phase()
    start = time.perf_counter()
    while phase.keys < pooled:
        if time.perf_counter() - start > bound_s:
            phase.note = f"stopped at the bound of {bound_s:.0f} s"
            break
        result = await client.enc(min(BATCH, pooled - phase.keys), True)
        if not isinstance(result, Sample):
            phase.errors.append(result)
            phase.note = f"ended after {phase.keys} keys by {result}"
            break
        phase.samples.append(result)
    else:
        relayed = phase.keys - sum(s.pooled for s in phase.samples)
        phase.note = f"pool drained: {phase.keys} keys in {len(phase.samples)} requests" + (
            f", {relayed} of them relayed on demand" if relayed else ""
        )
    phase.wall_s = time.perf_counter() - start
    return phase


# -- one chain ---------------------------------------------------------------------------------
@dataclass
class Row:
    hops: int
    pool: bool
    latency: Phase
    batch: Phase
    sustained: float  # keys/s in batches the slowest link of the route makes key for
    others: float  # the most cores other processes used during one step of this chain


def hop_breakdown(samples: list[Sample]) -> str:
    """Median time of every node of the route on its own, and what the origin did around it."""
    routed = [s for s in samples if s.hop_ms]
    if not routed:
        return ""
    width = min(len(s.hop_ms) for s in routed)
    own = [
        median([s.hop_ms[i] - (s.hop_ms[i + 1] if i + 1 < width else 0.0) for s in routed])
        for i in range(width)
    ]
    relay = median([s.hop_ms[0] for s in routed])
    rest = median([s.server_ms - s.hop_ms[0] for s in routed])
    return (
        f"KME: relay {relay:.2f} ms (each node on its own, origin first: "
        + " / ".join(f"{x:.2f}" for x in own)
        + f"), the rest of enc_keys (keys, settle) {rest:.2f} ms"
    )


def report(label: str, phase: Phase, before: Levels, after: Levels, cpu: CpuMeter) -> None:
    client = [s.client_ms for s in phase.samples]
    server = median([s.server_ms for s in phase.samples])
    sources = "/".join(sorted({s.source for s in phase.samples})) or "-"
    print(
        f"  {label}: {phase.keys} keys in {len(phase.samples)} answers, {phase.wall_s:.2f} s"
        f" = {phase.keys_per_s:,.0f} keys/s; client p50 {percentile(client, 50):.2f} ms,"
        f" p99 {percentile(client, 99):.2f} ms; KME ms median {server:.2f}"
        f" (client - KME {median(client) - server:.2f} ms); source {sources}",
        flush=True,
    )
    breakdown = hop_breakdown(phase.samples)
    if breakdown:
        print(f"    {breakdown}", flush=True)
    if phase.errors:
        print(f"    {len(phase.errors)} errors, the first: {phase.errors[0][:160]}", flush=True)
    if phase.note:
        print(f"    {phase.note[:200]}", flush=True)
    print(
        f"    relay transactions at a: {after.transactions - before.transactions};"
        f" {cpu.since_last()}",
        flush=True,
    )


async def accumulate(
    client: Client, status: NetworkStatus, need_bits: int, pool_keys: int, bound_s: float
) -> tuple[float, int, Levels]:
    """Wait until every link holds `need_bits` towards b and the pool is full (at most
    `bound_s`)."""
    start = time.perf_counter()
    while True:
        now = await levels(status)
        pool = await client.stored()
        enough = all(
            (lv.store_bits // 2 if lv.toward_b is None else lv.toward_b) >= need_bits
            for lv in now.links
        )
        if (enough and pool >= pool_keys) or time.perf_counter() - start > bound_s:
            return time.perf_counter() - start, pool, now
        await asyncio.sleep(1.0)


async def measure(
    plan: NetworkPlan, hops: int, args: argparse.Namespace, cpu: CpuMeter, budget_s: float
) -> list[Row]:
    per_key = relay_cost_bits(1)
    per_batch_key = relay_cost_bits(BATCH) / BATCH
    # Four measuring loops and the accumulation share what this chain may take.
    bound = max(3.0, min(args.phase_s, (budget_s - OVERHEAD_S) * 0.11))
    accumulate_s = max(3.0, min(args.accumulate, (budget_s - OVERHEAD_S) * 0.55))
    # What the phases take towards b: the batches, the sequential relays and pool refills.
    need = args.batches * relay_cost_bits(BATCH) + 2 * args.requests * per_key
    connector = aiohttp.TCPConnector(limit=1)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with (
        NetworkStatus(plan) as status,
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
    ):
        client = Client(plan, session)
        cpu.reset()
        waited, pool, start = await accumulate(
            client, status, int(need), args.pool_keys, accumulate_s
        )
        print(
            f"  accumulated key for {waited:.0f} s (bound {accumulate_s:.0f} s, aim"
            f" {need / 1e6:.1f} Mbit towards b per link): pool {pool}/{args.pool_keys};"
            f" {describe(start.links)}",
            flush=True,
        )
        print(f"    {cpu.since_last()}", flush=True)
        cpu.others_max = 0.0  # what counts is what ran beside the measurements
        slowest = min(lv.wall_rate_bps for lv in start.links) / 2  # one direction's half
        print(
            f"  link key per hop: {per_key} bits for 1 key alone, {per_batch_key:.0f} bits per"
            f" key in batches of {BATCH}; {TARGET_KEYS_PER_S:,.0f} keys/s need"
            f" {TARGET_KEYS_PER_S * per_batch_key / 1e6:.2f} Mbit/s one way on every link."
            f" The slowest link makes {slowest / 1e3:,.0f} kbit/s one way: it sustains about"
            f" {slowest / per_batch_key:,.0f} keys/s in batches, {slowest / per_key:,.0f} one"
            " at a time; more than that draws on stored key",
            flush=True,
        )
        for pool_flag in (True, False):  # TLS session, gRPC channels, routes
            for _ in range(WARMUP):
                await client.enc(1, pool_flag)

        before = await levels(status)
        cpu.reset()
        with_pool = await sequential(client, True, args.requests, bound)
        after = await levels(status)
        report("with pool, 1 key per request", with_pool, before, after, cpu)

        before = after
        without_pool = await sequential(client, False, args.requests, bound)
        after = await levels(status)
        report("without pool, 1 key per request", without_pool, before, after, cpu)

        before = after
        batch = await batched(client, args.batches, bound)
        after = await levels(status)
        report(f"without pool, {BATCH} keys per request", batch, before, after, cpu)

        pool = await client.stored()
        before = await levels(status)
        cpu.reset()
        emptied = await drain(client, pool, bound)
        after = await levels(status)
        report(f"with pool, up to {BATCH} keys per request", emptied, before, after, cpu)
        print(f"  links at the end: {describe(after.links)}", flush=True)
    sustained = slowest / per_batch_key
    return [
        Row(hops, True, with_pool, emptied, sustained, cpu.others_max),
        Row(hops, False, without_pool, batch, sustained, cpu.others_max),
    ]


def bench(hops: int, args: argparse.Namespace, root: Path, budget_s: float) -> list[Row]:
    path = root / f"chain{hops}.yaml"
    path.write_text(yaml.safe_dump(chain_topology(hops, args), sort_keys=False))
    plan = NetworkPlan.build(load_topology(path), root / f"state{hops}")
    runtime = runtime_for(plan)
    print(
        f"\n{hops} hop(s): {' - '.join(chain_nodes(hops))}, links at speed-up"
        f" {link_speedup(hops, args):g}; {budget_s:.0f} s of the budget",
        flush=True,
    )
    try:
        start = time.monotonic()
        info = runtime.deploy(timeout=60)
        asyncio.run(wait_for_key(plan, timeout=60))
        took = time.monotonic() - start
        print(f"  deployed, every link has key after {took:.1f} s", flush=True)
        cpu = CpuMeter({n: c.pid for n, c in info.nodes.items() if c.pid})
        return asyncio.run(measure(plan, hops, args, cpu, budget_s - took))
    finally:
        runtime.destroy()


# -- output ------------------------------------------------------------------------------------
def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| hops | pool | p50 ms | p99 ms | keys/s (single) | keys/s (batch) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        client = [s.client_ms for s in row.latency.samples]
        batch = fmt(row.batch.keys_per_s, 0)
        if row.pool:
            batch += " (pool drain)"
        elif row.batch.errors:
            batch += f" ({row.batch.keys} keys, then 503)"
        mark = " *" if row.others > CONTENDED_CORES else ""
        lines.append(
            f"| {row.hops}{mark} | {'yes' if row.pool else 'no'} | {fmt(percentile(client, 50))}"
            f" | {fmt(percentile(client, 99))} | {fmt(row.latency.keys_per_s, 0)} | {batch} |"
        )
    contended = [row.others for row in rows if row.others > CONTENDED_CORES]
    if contended:
        lines.append(
            f"\n\\* measured while other processes on the machine used up to"
            f" {max(contended):.1f} of its {os.cpu_count()} cores: slower than it would be"
        )
    return "\n".join(lines)


def targets(rows: list[Row]) -> list[str]:
    out = []
    for row in rows:
        pool = "with pool" if row.pool else "without pool"
        if row.hops == 1:
            p50 = percentile([s.client_ms for s in row.latency.samples], 50)
            verdict = "met" if p50 <= TARGET_DIRECT_P50_MS else "MISSED"
            out.append(
                f"target: direct p50 <= {TARGET_DIRECT_P50_MS:g} ms, {pool}: {fmt(p50)} ms"
                f" - {verdict}"
            )
        if row.hops == TARGET_HOPS:
            best = max(row.latency.keys_per_s, row.batch.keys_per_s)
            verdict = "met" if best >= TARGET_KEYS_PER_S else "MISSED"
            what = "draining the pool" if row.pool else "relay capacity, on stored link key"
            out.append(
                f"target: >= {TARGET_KEYS_PER_S:,.0f} keys/s across {TARGET_HOPS} hops, {pool}:"
                f" single {fmt(row.latency.keys_per_s, 0)}, batch {fmt(row.batch.keys_per_s, 0)}"
                f" ({what}) - {verdict} as a burst; sustained, the links make key for about"
                f" {fmt(row.sustained, 0)} keys/s -"
                f" {'met' if row.sustained >= TARGET_KEYS_PER_S else 'MISSED'}"
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hops", default="1,2,4,6", help="comma-separated hop counts")
    parser.add_argument("--quick", action="store_true", help="fewer requests, shorter bounds")
    parser.add_argument(
        "--speedup",
        type=float,
        help=f"link speed-up (default: {AUTO_NODE_SPEEDUP:g} per node, {AUTO_CHAIN_SPEEDUP:g}"
        " per chain)",
    )
    parser.add_argument("--length-km", type=float, default=3.0)
    parser.add_argument("--frame-bits", type=int, default=200_000)
    parser.add_argument("--pool-keys", type=int, default=1000)
    parser.add_argument("--requests", type=int, help="sequential requests per case (200)")
    parser.add_argument("--batches", type=int, help=f"requests of {BATCH} keys, no pool (12)")
    parser.add_argument("--accumulate", type=float, help="seconds of key at most (70)")
    parser.add_argument("--budget", type=float, help="wall seconds for the whole run (330)")
    args = parser.parse_args()
    try:
        hop_counts = [int(h) for h in args.hops.split(",") if h.strip()]
    except ValueError:
        hop_counts = []
    if not hop_counts or min(hop_counts) < 1:
        parser.error("--hops takes positive hop counts, e.g. 1,2,4,6")
    quick = args.quick
    args.requests = args.requests or (50 if quick else 200)
    args.batches = args.batches or (4 if quick else 12)
    args.accumulate = args.accumulate if args.accumulate is not None else (20 if quick else 70)
    args.budget = args.budget or (150 if quick else 330)
    args.phase_s = 10.0 if quick else 20.0
    print(
        f"settings: chains of {args.length_km:g} km links at speed-up"
        f" {args.speedup or f'{AUTO_NODE_SPEEDUP:g} per node, {AUTO_CHAIN_SPEEDUP:g} per chain'},"
        " frames"
        f" of {args.frame_bits:,} bits; {KEY_BITS}-bit keys, pool_keys {args.pool_keys};"
        f" {args.requests} sequential requests per case after {WARMUP} warm-up ones; up to"
        f" {args.batches} requests of {BATCH} keys without the pool; key accumulated for at most"
        f" {args.accumulate:g} s; every measuring loop at most {args.phase_s:g} s; whole run"
        f" budget {args.budget:g} s; {os.cpu_count()} cores, load average"
        f" {os.getloadavg()[0]:.1f} before the start",
        flush=True,
    )
    rows: list[Row] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qkdnet-bench-relay-") as tmp:
        for k, hops in enumerate(hop_counts):
            # What is left of the budget, shared out by chain size (longer chains make key
            # more slowly and relay more slowly).
            left = args.budget - (time.monotonic() - started)
            share = (hops + 3) / sum(h + 3 for h in hop_counts[k:])
            rows.extend(bench(hops, args, Path(tmp), left * share))
    print(f"\ntotal {time.monotonic() - started:.0f} s\n")
    print(table(rows))
    print()
    for line in targets(rows):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
