"""Benchmark Cascade reconciliation: efficiency, round trips, frame error rate, speed.

Usage: ``python bench/bench_cascade.py [--quick]``

For each key length and QBER it reconciles independent frames (Alice's key uniform, Bob's with
each bit flipped with probability QBER) through `qkdnet.node.core.cascade.reconcile`, which carries
every message through its wire encoding, and prints:

* ``f``: mean efficiency disclosed / (n H2(q)), q each frame's actual error rate;
* ``RT``: mean round trips per frame;
* ``FER``: fraction of frames with errors left after Cascade (the caller's hash catches them);
* ``BER ver.``: bit error rate of the frames that pass the 64-bit polynomial-hash verification
  (frames that fail it are discarded by the link, never stored);
* ``query kB``: largest query of a frame (the first one, all top-level blocks), mean;
* ``ms`` and ``Mbit/s``: median wall time of `reconcile` alone and n / that time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from qkdnet.node.core.cascade import (
    CascadeAlice,
    CascadeBob,
    CascadePlan,
    ParityQuery,
    binary_entropy,
    pack_parities,
    reconcile,
    unpack_parities,
)
from qkdnet.node.core.polynomial_hash import PolynomialHash

FULL = {10_000: 1000, 100_000: 50, 1_000_000: 10}
QUICK = {10_000: 30, 100_000: 4, 1_000_000: 1}
QBERS = (0.01, 0.02, 0.05)


def _frame(rng: np.random.Generator, n: int, qber: float) -> tuple[np.ndarray, np.ndarray]:
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    return alice, alice ^ (rng.random(n) < qber).astype(np.uint8)


def _largest_query(alice_key: np.ndarray, bob_key: np.ndarray, qber: float, seed: int) -> int:
    plan = CascadePlan(alice_key.size, qber, seed)
    alice = CascadeAlice(alice_key, qber, seed, plan=plan)
    bob = CascadeBob(bob_key, qber, seed, plan=plan)
    largest = 0
    while (query := bob.next_query()) is not None:
        wire = query.to_bytes()
        largest = max(largest, len(wire))
        answer = alice.answer(ParityQuery.from_bytes(wire))
        bob.receive(unpack_parities(pack_parities(answer), len(query)))
    return largest


def _row(n: int, qber: float, frames: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    efficiencies, round_trips, times = [], [], []
    failures = 0
    accepted_bits = accepted_errors = 0
    for i in range(frames):
        a, b = _frame(rng, n, qber)
        start = time.perf_counter()
        result = reconcile(a, b, qber, seed=seed * 1000 + i)
        times.append(time.perf_counter() - start)
        efficiencies.append(result.efficiency)
        round_trips.append(result.round_trips)
        failures += result.residual_errors > 0
        verify = PolynomialHash(int(rng.integers(2**63)))
        if verify.digest_bits(a) == verify.digest_bits(result.key):
            accepted_bits += n
            accepted_errors += result.residual_errors
    a, b = _frame(rng, n, qber)
    return {
        "f": statistics.fmean(efficiencies),
        "f_sd": statistics.pstdev(efficiencies),
        "rt": statistics.fmean(round_trips),
        "fer": failures / frames,
        "ber_verified": accepted_errors / max(accepted_bits, 1),
        "ms": statistics.median(times) * 1e3,
        "query_kb": _largest_query(a, b, qber, seed) / 1000,
        "ideal_bits": n * binary_entropy(qber),
    }


def _speed(n: int, qber: float, runs: int) -> list[float]:
    """Wall times of `reconcile` on one frame, repeated."""
    rng = np.random.default_rng(12345)
    a, b = _frame(rng, n, qber)
    reconcile(a, b, qber, seed=0)  # warm up
    times = []
    for run in range(runs):
        start = time.perf_counter()
        reconcile(a, b, qber, seed=run)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small subset, a few seconds")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    print(
        f"{'n':>9} {'QBER':>5} {'frames':>6} {'f':>7} {'sd(f)':>6} {'RT':>6} {'FER':>7} "
        f"{'BER ver.':>8} "
        f"{'query kB':>9} {'ms':>8} {'Mbit/s':>7}"
    )
    for n, frames in plan.items():
        for qber in QBERS:
            r = _row(n, qber, frames, seed=int(qber * 1000) + n)
            print(
                f"{n:>9} {qber:>5.0%} {frames:>6} {r['f']:>7.4f} {r['f_sd']:>6.4f} "
                f"{r['rt']:>6.1f} {r['fer']:>7.3f} {r['ber_verified']:>8.1e} "
                f"{r['query_kb']:>9.1f} {r['ms']:>8.2f} "
                f"{n / r['ms'] / 1e3:>7.1f}",
                flush=True,
            )
    runs = 3 if args.quick else 11
    times = sorted(_speed(1_000_000, 0.02, runs))
    median = statistics.median(times) * 1e3
    print(
        f"\nreconcile, n = 10^6 at 2 %, {runs} runs: median {median:.1f} ms, "
        f"min {times[0] * 1e3:.1f} ms, max {times[-1] * 1e3:.1f} ms "
        f"(wall time; other load on the machine inflates it)"
    )
    reference = []
    for run in range(5):
        start = time.perf_counter()
        np.random.default_rng(run).permutation(1_000_000)
        reference.append(time.perf_counter() - start)
    print(
        f"machine reference: numpy permutation of 10^6 takes {min(reference) * 1e3:.1f} ms "
        f"(about 13 ms on an idle 2.1 GHz Sapphire Rapids core)"
    )
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
