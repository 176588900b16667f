"""Speed of GF(2^64) polynomial hashing (qkdnet.node.core.polynomial_hash).

For several message sizes prints the median digest time with a warm instance (key kept, as
for Wegman-Carter authentication), the time of a fresh instance's first digest (new key, as
for key verification: includes building the lookup tables) and the throughput.
Runtime: a few seconds.
"""

from __future__ import annotations

import os
import secrets
import statistics
import time
from collections.abc import Callable

import numpy as np

from qkdnet.node.core.polynomial_hash import PolynomialHash, wegman_carter_tag


def _median_seconds(fn: Callable[[], object], min_time: float = 0.2, max_runs: int = 2000) -> float:
    times: list[float] = []
    deadline = time.perf_counter() + min_time
    while len(times) < 5 or (time.perf_counter() < deadline and len(times) < max_runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e6:10.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:10.3f} ms"


def main() -> None:
    hasher = PolynomialHash(secrets.randbits(64))
    print(f"{'message':>12} {'warm digest':>13} {'fresh key':>13} {'MB/s (warm)':>12}")
    for label, size in [
        ("64 B", 64),
        ("100 B", 100),
        ("1 KB", 1024),
        ("125 KB", 125_000),
        ("1 MB", 1 << 20),
    ]:
        data = os.urandom(size)
        hasher.digest(data)  # grow the instance's tables once
        warm = _median_seconds(lambda d=data: hasher.digest(d))  # type: ignore[misc]
        cold = _median_seconds(
            lambda d=data: PolynomialHash(secrets.randbits(64)).digest(d),  # type: ignore[misc]
            max_runs=200,
        )
        print(f"{label:>12} {_fmt(warm)} {_fmt(cold)} {size / warm / 1e6:12.1f}", flush=True)

    bits = np.random.default_rng(1).integers(0, 2, 10**6, dtype=np.uint8)
    warm = _median_seconds(lambda: hasher.digest_bits(bits))
    cold = _median_seconds(
        lambda: PolynomialHash(secrets.randbits(64)).digest_bits(bits), max_runs=200
    )
    print(f"{'10^6 bits':>12} {_fmt(warm)} {_fmt(cold)} {125_000 / warm / 1e6:12.1f}")

    pad = os.urandom(8)
    message = os.urandom(100)
    tag = _median_seconds(lambda: wegman_carter_tag(hasher, pad, message))
    print(f"wegman_carter_tag on 100 B: {_fmt(tag).strip()}")


if __name__ == "__main__":
    main()
