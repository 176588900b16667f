"""Post-processing throughput: Cascade + verification + privacy amplification.

1. In one process: frames of 10^6 sifted bits at QBER 2 %, Cascade (through the wire encoding
   of queries and parities), polynomial-hash verification on both ends, and Toeplitz privacy
   amplification on both ends. Target: at least 10 Mbit/s of sifted bits.
2. Between two processes over loopback gRPC with mutual TLS: two real node agents run one link
   with frames of 10^6 sifted bits and no pacing limit; the transmitter's own phase timers give
   the time spent in reconciliation, verification and amplification (each including its round
   trips to the other process), and the sifted bits that went through them.

Usage: python bench/bench_postprocessing.py [--frames N] [--link-seconds S] [--skip-link]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from qkdnet.node.cascade import CascadeAlice, CascadeBob, ParityQuery, binary_entropy
from qkdnet.node.config import ChannelConfig, ProcessingConfig
from qkdnet.node.polynomial_hash import PolynomialHash
from qkdnet.node.toeplitz import toeplitz_hash
from qkdnet.node.wire import decode_bits, encode_bits
from qkdnet.orchestrator.link_demo import LinkPair

N = 1_000_000
QBER = 0.02


def one_frame(rng: np.random.Generator) -> tuple[float, float, int]:
    """Process one frame; returns (seconds, efficiency f, round trips)."""
    alice_key = rng.integers(0, 2, N, dtype=np.uint8)
    flips = rng.random(N) < QBER
    bob_key = alice_key ^ flips.astype(np.uint8)
    seed = int(rng.integers(2**62))
    start = time.perf_counter()
    alice = CascadeAlice(alice_key, QBER, seed)
    bob = CascadeBob(bob_key, QBER, seed)
    while (query := bob.next_query()) is not None:
        wire_query = ParityQuery.from_bytes(query.to_bytes())
        answer = alice.answer(wire_query)
        bob.receive(decode_bits(encode_bits(answer), answer.size, "parities"))
    hash_key = int(rng.integers(2**63))
    ok = PolynomialHash(hash_key).digest_bits(alice_key) == PolynomialHash(hash_key).digest_bits(
        bob.key
    )
    errors = int(flips.sum())
    leaked = bob.disclosed_bits + 96
    m = max(1, int(N * (1 - 2.2 * binary_entropy(errors / N))) - leaked)
    toeplitz_seed = rng.integers(0, 2, N + m - 1, dtype=np.uint8)
    if ok:
        toeplitz_hash(alice_key, toeplitz_seed, m)
        toeplitz_hash(bob.key, toeplitz_seed, m)
    elapsed = time.perf_counter() - start
    f = bob.disclosed_bits / (N * binary_entropy(errors / N))
    return elapsed, f, bob.round_trips


def in_process(frames: int) -> None:
    rng = np.random.default_rng(2026)
    one_frame(rng)  # warm-up: FFT plans, caches
    times, effs, trips = [], [], []
    for _ in range(frames):
        t, f, r = one_frame(rng)
        times.append(t)
        effs.append(f)
        trips.append(r)
    median = statistics.median(times)
    print(f"in one process ({frames} frames of {N:,} sifted bits, QBER {QBER:.0%}):")
    print(f"  median time per frame      {median * 1e3:8.1f} ms")
    print(f"  throughput                 {N / median / 1e6:8.2f} Mbit/s of sifted bits")
    print(f"  Cascade efficiency f       {statistics.mean(effs):8.3f}")
    print(f"  round trips per frame      {statistics.mean(trips):8.1f}")


async def between_processes(seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="qkdnet-bench-") as tmp:
        # 5 km: QBER about 2 %; a huge speed-up so that pacing never limits the link.
        pair = LinkPair(
            Path(tmp),
            ChannelConfig(length_km=5.0, misalignment_error=0.0185),
            ProcessingConfig(speedup=1e6, frame_bits=N),
        )
        await pair.start()
        try:
            deadline = time.monotonic() + seconds
            status = await pair.status()
            while time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                status = await pair.status()
        finally:
            await pair.stop()
    phases = dict(status.phase_seconds)
    post = sum(phases.get(k, 0.0) for k in ("reconciliation", "verification", "amplification"))
    bits = status.reconciled_bits
    print(f"between two node processes over loopback gRPC + mTLS ({seconds:.0f} s run):")
    print(f"  frames stored              {status.frames_ok:8d}   QBER {status.qber:.2%}")
    print(f"  reconciled bits            {bits:8,d}")
    for name in ("sifting", "estimation", "reconciliation", "verification", "amplification"):
        per = phases.get(name, 0.0) / max(status.frames_ok, 1)
        print(f"  {name:<26} {per * 1e3:8.1f} ms per frame")
    if post > 0 and bits:
        print(f"  post-processing throughput {bits / post / 1e6:8.2f} Mbit/s of sifted bits")
        total = sum(phases.values())
        print(f"  whole-round throughput     {bits / total / 1e6:8.2f} Mbit/s (incl. sifting)")
    print(f"  Cascade efficiency f       {status.reconciliation_efficiency:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--link-seconds", type=float, default=30.0)
    parser.add_argument("--skip-link", action="store_true")
    args = parser.parse_args()
    in_process(args.frames)
    if not args.skip_link:
        asyncio.run(between_processes(args.link_seconds))


if __name__ == "__main__":
    main()
