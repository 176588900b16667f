"""Throughput of Toeplitz privacy amplification (qkdnet.node.core.toeplitz).

Prints, for n in {1e5, 1e6, 2e6} and compression m/n in {0.2, 0.5, 0.8}, the median time per
call and the throughput in Mbit/s of *input* for the one-shot ``toeplitz_hash`` (default
method and the three-FFT ``direct`` method) and for ``ToeplitzHasher.hash`` (precomputed seed
spectrum). One-time costs are shown separately in "first ms": the choice of the FFT length
("tuning" row: candidate lengths planned and timed) and each variant's first call (planning,
buffers). "one-shot" is the default ``toeplitz_hash`` (packed, two FFTs), "direct" the
three-FFT method.

Usage: ``python bench/bench_toeplitz.py [--repeats R] [--measure] [--wisdom FILE]``.
``--measure`` plans with FFTW_MEASURE (can take minutes per FFT length unless ``--wisdom``
points to a file saved by an earlier run); runtime is otherwise well under a minute.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from qkdnet.node.core import toeplitz


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _bench_case(
    rng: np.random.Generator, bits: NDArray[np.uint8], ratio: float, repeats: int
) -> None:
    n = bits.size
    m = int(n * ratio)
    seed = rng.integers(0, 2, toeplitz.seed_length(n, m), dtype=np.uint8)
    start = time.perf_counter()
    length = toeplitz.fft_length(n, m)  # first use of a size region: times candidate lengths
    tuning = time.perf_counter() - start
    print(f"{n:>9} {ratio:>4} {length:>9} {'tuning':>10} {tuning * 1e3:>8.1f}")
    reference = toeplitz.toeplitz_hash(bits, seed, m, method="direct")
    start = time.perf_counter()
    hasher = toeplitz.ToeplitzHasher(seed, n, m)
    hasher_setup = time.perf_counter() - start
    variants: list[tuple[str, Callable[[], NDArray[np.uint8]]]] = [
        ("one-shot", lambda: toeplitz.toeplitz_hash(bits, seed, m)),
        ("direct", lambda: toeplitz.toeplitz_hash(bits, seed, m, method="direct")),
        ("hasher", lambda: hasher.hash(bits)),
    ]
    for name, fn in variants:
        start = time.perf_counter()
        result = fn()  # first call: plans the FFT length if needed
        first = time.perf_counter() - start + (hasher_setup if name == "hasher" else 0.0)
        assert np.array_equal(result, reference)
        seconds = _median_seconds(fn, repeats)
        print(
            f"{n:>9} {ratio:>4} {length:>9} {name:>10} {first * 1e3:>8.1f} "
            f"{seconds * 1e3:>10.2f} {n / seconds / 1e6:>8.1f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--measure", action="store_true", help="plan with FFTW_MEASURE")
    parser.add_argument("--wisdom", type=Path, help="FFTW wisdom file to load and save")
    args = parser.parse_args()

    if args.wisdom is not None and args.wisdom.exists():
        ok = toeplitz.import_wisdom(pickle.loads(args.wisdom.read_bytes()))
        print(f"wisdom loaded from {args.wisdom}: {ok}")
    if args.measure:
        toeplitz.configure_fftw(planner_effort="FFTW_MEASURE")
    settings = toeplitz.fftw_settings()
    print(f"FFTW threads={settings.threads} planner={settings.planner_effort}")
    reference = np.random.default_rng(0).random(1_500_000)
    numpy_fft = _median_seconds(lambda: np.fft.rfft(reference), 3)
    print(f"machine reference: numpy.fft.rfft of 1.5M points takes {numpy_fft * 1e3:.1f} ms")
    header = (
        f"{'n':>9} {'m/n':>4} {'FFT len':>9} {'variant':>10} {'first ms':>8} "
        f"{'median ms':>10} {'Mbit/s':>8}"
    )
    print(header)
    rng = np.random.default_rng(2024)
    for n in (100_000, 1_000_000, 2_000_000):
        bits = rng.integers(0, 2, n, dtype=np.uint8)
        for ratio in (0.2, 0.5, 0.8):
            _bench_case(rng, bits, ratio, args.repeats)
    if args.wisdom is not None:
        args.wisdom.write_bytes(pickle.dumps(toeplitz.export_wisdom()))
        print(f"wisdom saved to {args.wisdom}")


if __name__ == "__main__":
    main()
