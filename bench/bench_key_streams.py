"""ETSI GS QKD 004 key streams across one relay: call latency, paced rate, streams held at once.

Deploys the chain a - r - b (sae-a on node a, sae-b on node b, two 5 km links of decoy BB84 at
speed-up 20 and frames of 100 000 bits, as in tests/integration/test_key_streams.py; ETSI 014
pools off, so that no pool refill draws on the link key the streams use) through the CLI on the
process runtime, in a temporary state directory, and then, as sae-a and sae-b each over one TLS
connection to its node's 004 server (`KeyStreamClient`, port 25575):

1. latency: sae-a opens one stream of 32-byte chunks at `--latency-share` of the rate the route
   has left (the counter-proposal of an open asking for more than any route carries), sae-b
   joins it; client-side time of that OPEN_CONNECT (status 1) and of the join (status 0); then,
   `--settle` seconds later, or later still if the calls below would otherwise catch up with
   the stream's schedule (so that every chunk they ask is due and relayed already: the time is
   the call's, not the pacing's), `--calls` GET_KEY as sae-b, index after index, each timed:
   p50 and p99 ms;
2. sustained rate: one stream at each of `--rates` bit/s and one at `--high-share` of what the
   route has left, 32-byte chunks; both ends read in order for `--seconds` seconds at once;
   bit/s each end measured (first to last chunk read) against the rate asked, and the calls that
   did not answer a chunk (status 2 or 6);
3. streams held at once: sae-a opens streams of `--small-bps` bit/s with 8-byte chunks, and
   sae-b joins each, until an open is refused (7: the route's rate is all reserved; 4: the
   node's max_streams), `--cap` are open or `--open-budget` seconds are spent; then one GET_KEY
   of chunk 0 on each, at both ends at once (each end in sequence): how many answered the
   chunk, and the time of that sweep; the OPEN_CONNECT and join latency over all those streams
   (p50/p99); then every stream is closed at both ends.

A stream reserves its max_bps on every hop of its route until it is closed; its chunks are
relayed as ordinary keys of the SAE pair (one relay transaction per batch, each with its own
one-time pad of IDs and tag key), so many slow streams cost the links more key, and the nodes
more relay transactions, than the rate they reserve.

Each of the three is repeated `--runs` times on the same deployment and the median of the runs
is printed (with every run's figures), and the machine's load average before and after. The
deployment is always destroyed.

    python bench/bench_key_streams.py [--runs 3] [--calls 200] [--rates 8192] [--seconds 10]
        [--cap 1024] [--speedup 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from qkdnet.node.edge.etsi004_client import KeyStreamClient, StreamQos, StreamStatus
from qkdnet.orchestrator.client.stream_client import stream_client_for
from qkdnet.orchestrator.plan.network_plan import NetworkPlan

TOPOLOGY = """\
name: bench-streams
defaults: {speedup: SPEEDUP, frame_bits: 100000}
key_delivery: {pool_keys: 0}
nodes:
  a: {saes: [sae-a]}
  r: {}
  b: {saes: [sae-b]}
links:
  - {endpoints: [a, r], length_km: LENGTH}
  - {endpoints: [r, b], length_km: LENGTH}
"""

CLI = [sys.executable, "-m", "qkdnet.orchestrator.cli.main"]
SOURCE, DESTINATION = "qkd://sae-a", "qkd://sae-b"
ANY_RATE = 2**32 - 1  # more than any route carries: the answer says what is left
ROUTE_WAIT_S = 60.0  # for routing to know the route's rate (status 4, or 7 offering 0)
CLIENT_TIMEOUT_S = 30.0


def _cli(*args: str, timeout: float = 240) -> None:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"qkdnet {' '.join(args)} failed:\n{done.stderr}")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1e3


async def _route_rate(a: KeyStreamClient) -> int:
    """The rate (bit/s) a new stream sae-a -> sae-b may still reserve, once routing knows it."""
    deadline = time.monotonic() + ROUTE_WAIT_S
    while True:
        answer = await a.open_connect(SOURCE, DESTINATION, StreamQos(max_bps=ANY_RATE))
        if answer.status is StreamStatus.QOS_NOT_MET and answer.qos is not None:
            if answer.qos.max_bps > 0:
                return answer.qos.max_bps
        elif answer.status is not StreamStatus.NO_QKD_CONNECTION:
            raise SystemExit(f"an open asking {ANY_RATE} bit/s answered {answer.status.name}")
        if time.monotonic() > deadline:
            raise SystemExit(f"no rate on the route a -> b after {ROUTE_WAIT_S:.0f} s")
        await asyncio.sleep(0.5)


async def _open_pair(
    a: KeyStreamClient, b: KeyStreamClient, qos: StreamQos
) -> tuple[uuid.UUID, float, float, int]:
    """A stream sae-a -> sae-b joined by sae-b: (KSID, open ms, join ms, bit/s granted). The
    route's rate may have moved since it was read: a refusal is retried (bounded) at what is
    offered."""
    for _ in range(10):
        started = time.perf_counter()
        opened = await a.open_connect(SOURCE, DESTINATION, qos)
        open_ms = _ms(started)
        if opened.status is StreamStatus.PEER_NOT_CONNECTED and opened.ksid is not None:
            break
        if opened.status is not StreamStatus.QOS_NOT_MET or opened.qos is None:
            raise SystemExit(f"open at {qos.max_bps} bit/s answered {opened.status.name}")
        qos = qos.but(max_bps=opened.qos.max_bps)
        await asyncio.sleep(0.5)
    else:
        raise SystemExit(f"open refused ten times, last at {qos.max_bps} bit/s")
    started = time.perf_counter()
    joined = await b.open_connect(DESTINATION, SOURCE, StreamQos(), opened.ksid)
    join_ms = _ms(started)
    if joined.status is not StreamStatus.SUCCESS:
        raise SystemExit(f"sae-b's join answered {joined.status.name}")
    return opened.ksid, open_ms, join_ms, qos.max_bps


async def _close_pair(a: KeyStreamClient, b: KeyStreamClient, ksid: uuid.UUID) -> None:
    await b.close(ksid)
    await a.close(ksid)


@dataclass(frozen=True)
class Latency:
    open_ms: float
    join_ms: float
    p50_ms: float
    p99_ms: float
    rate_bps: int
    failed: int


async def _latency(a: KeyStreamClient, b: KeyStreamClient, opts: argparse.Namespace) -> Latency:
    rate = int(opts.latency_share * await _route_rate(a))
    qos = StreamQos(key_chunk_size=32, max_bps=rate, timeout=5000, ttl=600)
    ksid, open_ms, join_ms, rate = await _open_pair(a, b, qos)
    try:
        # Chunk i is due i x chunk bits / rate after the join: wait until the last call's is.
        await asyncio.sleep(max(opts.settle, opts.calls * qos.chunk_bits / rate + 0.5))
        times: list[float] = []
        failed = 0
        for index in range(opts.calls):
            started = time.perf_counter()
            got = await b.get_key(ksid, index)
            times.append(_ms(started))
            failed += got.status is not StreamStatus.SUCCESS
    finally:
        await _close_pair(a, b, ksid)
    p50, p99 = _percentile(times, 0.5), _percentile(times, 0.99)
    return Latency(open_ms, join_ms, p50, p99, rate, failed)


@dataclass(frozen=True)
class Rate:
    asked_bps: int
    at_a_bps: float
    at_b_bps: float
    missed: int  # calls at either end that answered no chunk


async def _read_for(client: KeyStreamClient, ksid: uuid.UUID, seconds: float) -> tuple[float, int]:
    """Read chunks in order for `seconds`: (bits per second first to last chunk, misses)."""
    stop = time.monotonic() + seconds
    first = last = 0.0
    bits = chunks = misses = 0
    index = 0
    while time.monotonic() < stop:  # bounded: each call by the stream's Timeout
        got = await client.get_key(ksid, index)
        index += 1
        if got.status is not StreamStatus.SUCCESS:
            misses += 1
            continue
        now = time.monotonic()
        if chunks == 0:
            first = now
        else:
            bits += 8 * len(got.key)
        last = now
        chunks += 1
    return (bits / (last - first) if last > first else 0.0), misses


async def _rate(a: KeyStreamClient, b: KeyStreamClient, asked: int, seconds: float) -> Rate:
    """One stream at `asked` bit/s, both ends reading in order for `seconds`."""
    qos = StreamQos(key_chunk_size=32, max_bps=asked, timeout=5000, ttl=600)
    ksid, _, _, asked = await _open_pair(a, b, qos)
    try:
        (at_a, miss_a), (at_b, miss_b) = await asyncio.gather(
            _read_for(a, ksid, seconds), _read_for(b, ksid, seconds)
        )
    finally:
        await _close_pair(a, b, ksid)
    return Rate(asked, at_a, at_b, miss_a + miss_b)


@dataclass(frozen=True)
class Held:
    streams: int
    stopped_by: str
    open_p50_ms: float
    open_p99_ms: float
    join_p50_ms: float
    sweep_ok_a: int
    sweep_ok_b: int
    sweep_failed: str  # statuses other than 0 in the sweep, both ends
    sweep_s: float
    close_s: float


async def _sweep(client: KeyStreamClient, ksids: list[uuid.UUID]) -> Counter[int]:
    """Chunk 0 of every stream, one after the other: how many calls answered each status."""
    statuses: Counter[int] = Counter()
    for ksid in ksids:
        statuses[(await client.get_key(ksid, 0)).status.value] += 1
    return statuses


async def _held(a: KeyStreamClient, b: KeyStreamClient, opts: argparse.Namespace) -> Held:
    qos = StreamQos(key_chunk_size=8, max_bps=opts.small_bps, timeout=5000, ttl=600)
    ksids: list[uuid.UUID] = []
    opens: list[float] = []
    joins: list[float] = []
    stopped_by = f"the cap of {opts.cap}"
    budget = time.monotonic() + opts.open_budget
    try:
        for _ in range(opts.cap):
            if time.monotonic() > budget:
                stopped_by = f"the time budget of {opts.open_budget:g} s"
                break
            started = time.perf_counter()
            opened = await a.open_connect(SOURCE, DESTINATION, qos)
            open_ms = _ms(started)
            if opened.status is not StreamStatus.PEER_NOT_CONNECTED or opened.ksid is None:
                stopped_by = f"status {opened.status.value} ({opened.status.name})"
                break
            ksids.append(opened.ksid)
            opens.append(open_ms)
            started = time.perf_counter()
            joined = await b.open_connect(DESTINATION, SOURCE, StreamQos(), opened.ksid)
            joins.append(_ms(started))
            if joined.status is not StreamStatus.SUCCESS:
                stopped_by = f"join status {joined.status.value} ({joined.status.name})"
                break
        started = time.perf_counter()
        at_a, at_b = await asyncio.gather(_sweep(a, ksids), _sweep(b, ksids))
        sweep_s = time.perf_counter() - started
    finally:
        started = time.perf_counter()
        for ksid in ksids:
            await _close_pair(a, b, ksid)
        close_s = time.perf_counter() - started
    return Held(
        len(ksids),
        stopped_by,
        _percentile(opens, 0.5) if opens else 0.0,
        _percentile(opens, 0.99) if opens else 0.0,
        _percentile(joins, 0.5) if joins else 0.0,
        at_a[StreamStatus.SUCCESS.value],
        at_b[StreamStatus.SUCCESS.value],
        " ".join(
            f"{end}:{status}x{count}"
            for end, statuses in (("a", at_a), ("b", at_b))
            for status, count in sorted(statuses.items())
            if status != StreamStatus.SUCCESS.value
        ),
        sweep_s,
        close_s,
    )


async def _one_run(plan: NetworkPlan, opts: argparse.Namespace) -> tuple[Latency, list[Rate], Held]:
    async with (
        stream_client_for(plan, "sae-a", CLIENT_TIMEOUT_S) as a,
        stream_client_for(plan, "sae-b", CLIENT_TIMEOUT_S) as b,
    ):
        latency = await _latency(a, b, opts)
        rates = []
        asked = [int(r) for r in opts.rates.split(",")]
        asked.append(int(opts.high_share * await _route_rate(a)))
        for rate in asked:
            rates.append(await _rate(a, b, rate, opts.seconds))
        held = await _held(a, b, opts)
    return latency, rates, held


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _report(runs: list[tuple[Latency, list[Rate], Held]]) -> None:
    lat = [r[0] for r in runs]
    n = len(runs)
    print(
        f"latency   OPEN_CONNECT (1) {_med([x.open_ms for x in lat]):6.1f} ms, "
        f"join (0) {_med([x.join_ms for x in lat]):6.1f} ms; GET_KEY at sae-b "
        f"p50 {_med([x.p50_ms for x in lat]):6.2f} ms  p99 {_med([x.p99_ms for x in lat]):6.2f} ms "
        f"(median of {n} runs: "
        + ", ".join(
            f"{x.open_ms:.1f}/{x.join_ms:.1f}/{x.p50_ms:.2f}/{x.p99_ms:.2f} ms"
            f" at {x.rate_bps} bit/s{f', {x.failed} failed' if x.failed else ''}"
            for x in lat
        )
        + ")",
        flush=True,
    )
    for column in range(len(runs[0][1])):
        rows = [r[1][column] for r in runs]
        asked = _med([x.asked_bps for x in rows])
        at_a, at_b = _med([x.at_a_bps for x in rows]), _med([x.at_b_bps for x in rows])
        print(
            f"rate      asked {asked:8.0f} bit/s: sae-a {at_a:8.0f} ({at_a / asked:6.1%}), "
            f"sae-b {at_b:8.0f} ({at_b / asked:6.1%}) (median of {n} runs: "
            + ", ".join(
                f"{x.asked_bps}: {x.at_a_bps:.0f}/{x.at_b_bps:.0f}"
                + (f", {x.missed} missed" if x.missed else "")
                for x in rows
            )
            + ")",
            flush=True,
        )
    held = [r[2] for r in runs]
    print(
        f"held      {_med([x.streams for x in held]):.0f} streams open at once; chunk 0 of each "
        f"at sae-a {_med([x.sweep_ok_a for x in held]):.0f}, sae-b "
        f"{_med([x.sweep_ok_b for x in held]):.0f} in {_med([x.sweep_s for x in held]):.2f} s; "
        f"open p50 {_med([x.open_p50_ms for x in held]):.1f} ms p99 "
        f"{_med([x.open_p99_ms for x in held]):.1f} ms, join p50 "
        f"{_med([x.join_p50_ms for x in held]):.1f} ms; closing all "
        f"{_med([x.close_s for x in held]):.2f} s (median of {n} runs: "
        + ", ".join(
            f"{x.streams} until {x.stopped_by}, {x.sweep_ok_a}/{x.sweep_ok_b} read "
            f"in {x.sweep_s:.2f} s" + (f" (status {x.sweep_failed})" if x.sweep_failed else "")
            for x in held
        )
        + ")",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200, help="GET_KEY timed per run")
    parser.add_argument("--settle", type=float, default=1.5, help="seconds before the calls")
    parser.add_argument("--latency-share", type=float, default=0.8, help="of the route's rate")
    parser.add_argument("--rates", default="8192", help="bit/s of the paced streams, comma list")
    parser.add_argument("--high-share", type=float, default=0.9, help="of the route's rate")
    parser.add_argument("--seconds", type=float, default=10.0, help="each paced stream's read")
    parser.add_argument("--small-bps", type=int, default=64, help="each held stream's rate")
    parser.add_argument("--cap", type=int, default=1024, help="streams held at most")
    parser.add_argument(
        "--open-budget", type=float, default=60.0, help="seconds of opening streams at most"
    )
    parser.add_argument("--speedup", type=float, default=20.0, help="the links' (default 20)")
    parser.add_argument("--length-km", type=float, default=5.0, help="each link's (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qkdnet-bench-") as home:
        os.environ["XDG_STATE_HOME"] = home  # deployments of its own, whatever else runs
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
        path = Path(home) / "topology.yaml"
        path.write_text(
            TOPOLOGY.replace("SPEEDUP", f"{args.speedup:g}").replace(
                "LENGTH", f"{args.length_km:g}"
            )
        )
        state = Path(home) / "state"
        started = time.monotonic()
        _cli("deploy", "-t", str(path), "--state-dir", str(state), "--runtime", "process")
        try:
            print(
                f"deployed a - r - b with key on both links in {time.monotonic() - started:.0f} s"
            )
            plan = NetworkPlan.load(state)
            assert plan is not None
            runs = []
            for run in range(args.runs):
                started = time.monotonic()
                runs.append(asyncio.run(_one_run(plan, args)))
                print(
                    f"run {run + 1}/{args.runs} in {time.monotonic() - started:.0f} s, "
                    f"load average {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
        finally:
            _cli("destroy", "-t", str(path), "--state-dir", str(state))
        _report(runs)
        print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
