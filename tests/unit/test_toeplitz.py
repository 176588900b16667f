"""Tests for qkdnet.node.core.toeplitz (Toeplitz privacy amplification)."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from numpy.typing import NDArray

from qkdnet.node.core import toeplitz
from qkdnet.node.core.toeplitz import (
    ToeplitzHasher,
    fft_length,
    seed_length,
    toeplitz_hash,
    toeplitz_hash_dense,
)


def _bits(rng: np.random.Generator, size: int) -> NDArray[np.uint8]:
    return rng.integers(0, 2, size, dtype=np.uint8)


def _explicit(bits: NDArray[np.uint8], seed: NDArray[np.uint8], m: int) -> NDArray[np.uint8]:
    """T x mod 2 straight from the definition T[i, j] = seed[i - j + n - 1]."""
    n = bits.size
    matrix = np.array(
        [[seed[i - j + n - 1] for j in range(n)] for i in range(m)], dtype=np.int64
    ).reshape(m, n)
    return ((matrix @ bits.astype(np.int64)) & 1).astype(np.uint8)


def test_seed_length_and_fft_length() -> None:
    assert seed_length(1, 1) == 1
    assert seed_length(10, 4) == 13
    assert seed_length(10, 0) == 9
    for n, m in [(10, 4), (5000, 2500), (60_000, 30_000)]:
        length = fft_length(n, m)
        assert seed_length(n, m) <= length <= 1.25 * seed_length(n, m) + 8
        assert fft_length(n, m) == length  # the timed choice is remembered
        odd = length
        for p in (2, 3, 5):
            while odd % p == 0:
                odd //= p
        assert odd == 1  # 5-smooth
        assert length <= 4096 or length % 4 == 0
    with pytest.raises(ValueError, match="m"):
        seed_length(10, 11)
    with pytest.raises(ValueError, match="n"):
        seed_length(0, 0)


def test_dense_matches_definition() -> None:
    rng = np.random.default_rng(1)
    for n, m in [(1, 1), (2, 1), (2, 2), (5, 3), (17, 17), (30, 7)]:
        bits, seed = _bits(rng, n), _bits(rng, n + m - 1)
        assert np.array_equal(toeplitz_hash_dense(bits, seed, m), _explicit(bits, seed, m))


def test_matrix_orientation() -> None:
    # x = e_j selects column j of T: T[:, j] = seed[n-1-j : n-1-j+m]
    n, m = 6, 4
    seed = np.array([1, 0, 0, 1, 1, 0, 1, 0, 1], dtype=np.uint8)
    for j in range(n):
        bits = np.zeros(n, dtype=np.uint8)
        bits[j] = 1
        expected = seed[n - 1 - j : n - 1 - j + m]
        for method in ("direct", "packed"):
            assert np.array_equal(toeplitz_hash(bits, seed, m, method=method), expected)


@pytest.mark.parametrize("method", ["auto", "direct", "packed"])
def test_fft_matches_dense_small_shapes(method: toeplitz.Method) -> None:
    rng = np.random.default_rng(7)
    shapes = [(1, 1), (2, 1), (2, 2), (3, 3), (300, 300), (300, 1), (299, 150)]
    shapes += [(int(n), int(rng.integers(1, n + 1))) for n in rng.integers(1, 301, 40)]
    shapes += [(int(n), int(n)) for n in rng.integers(1, 301, 5)]
    shapes += [(int(n), 1) for n in rng.integers(1, 301, 5)]
    for n, m in shapes:
        bits, seed = _bits(rng, n), _bits(rng, n + m - 1)
        expected = toeplitz_hash_dense(bits, seed, m)
        got = toeplitz_hash(bits, seed, m, method=method, check_rounding=True)
        assert got.dtype == np.uint8
        assert got.shape == (m,)
        assert np.array_equal(got, expected), (n, m)


@pytest.mark.parametrize("fill", [0, 1])
def test_constant_inputs(fill: int) -> None:
    # all-ones maximises the convolution values (worst case for rounding)
    for n, m in [(1, 1), (64, 32), (257, 257), (5000, 2500)]:
        bits = np.full(n, fill, dtype=np.uint8)
        seed = np.full(n + m - 1, fill, dtype=np.uint8)
        expected = np.full(m, (fill * n) & 1, dtype=np.uint8)
        for method in ("direct", "packed"):
            got = toeplitz_hash(bits, seed, m, method=method, check_rounding=True)
            assert np.array_equal(got, expected)
        assert np.array_equal(ToeplitzHasher(seed, n, m).hash(bits), expected)


def test_medium_case_against_dense() -> None:
    # large enough for the FFTW engine (FFT length > 4096)
    rng = np.random.default_rng(11)
    n = 5000
    for m in (1, 2500, 5000):
        bits, seed = _bits(rng, n), _bits(rng, n + m - 1)
        expected = toeplitz_hash_dense(bits, seed, m)
        for method in ("direct", "packed"):
            got = toeplitz_hash(bits, seed, m, method=method, check_rounding=True)
            assert np.array_equal(got, expected), (m, method)
        hasher = ToeplitzHasher(seed, n, m)
        assert np.array_equal(hasher.hash(bits, check_rounding=True), expected)


def test_hasher_small_and_reuse() -> None:
    rng = np.random.default_rng(3)
    for n, m in [(1, 1), (100, 60), (1000, 999)]:
        seed = _bits(rng, n + m - 1)
        hasher = ToeplitzHasher(seed, n, m)
        assert (hasher.n, hasher.m) == (n, m)
        for _ in range(3):
            bits = _bits(rng, n)
            assert np.array_equal(hasher.hash(bits), toeplitz_hash_dense(bits, seed, m))


def test_output_length_zero() -> None:
    bits = np.ones(5, dtype=np.uint8)
    seed = np.ones(4, dtype=np.uint8)
    assert toeplitz_hash(bits, seed, 0).shape == (0,)
    assert ToeplitzHasher(seed, 5, 0).hash(bits).shape == (0,)


def test_linearity() -> None:
    rng = np.random.default_rng(5)
    n, m = 20_000, 9_000
    seed = _bits(rng, n + m - 1)
    a, b = _bits(rng, n), _bits(rng, n)
    assert np.array_equal(
        toeplitz_hash(a ^ b, seed, m), toeplitz_hash(a, seed, m) ^ toeplitz_hash(b, seed, m)
    )


def test_validation_errors() -> None:
    bits = np.array([1, 0, 1, 1], dtype=np.uint8)
    seed = np.array([0, 1, 1, 0, 1], dtype=np.uint8)  # n + m - 1 for m = 2
    with pytest.raises(ValueError, match=r"bits.*uint8"):
        toeplitz_hash(bits.astype(np.int64), seed, 2)
    with pytest.raises(ValueError, match=r"seed.*uint8"):
        toeplitz_hash(bits, seed.astype(bool), 2)
    with pytest.raises(ValueError, match=r"bits.*one-dimensional"):
        toeplitz_hash(bits.reshape(2, 2), seed, 2)
    with pytest.raises(ValueError, match="bits must not be empty"):
        toeplitz_hash(np.zeros(0, dtype=np.uint8), seed, 0)
    with pytest.raises(ValueError, match="seed has the wrong length"):
        toeplitz_hash(bits, seed[:-1], 2)
    with pytest.raises(ValueError, match="m"):
        toeplitz_hash(bits, np.zeros(8, dtype=np.uint8), 5)
    with pytest.raises(ValueError, match="m"):
        toeplitz_hash(bits, seed, -1)
    with pytest.raises(TypeError, match="m"):
        toeplitz_hash(bits, seed, True)
    with pytest.raises(TypeError, match="bits"):
        toeplitz_hash([1, 0, 1, 1], seed, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method"):
        toeplitz_hash(bits, seed, 2, method="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        ToeplitzHasher(seed[:3], 4, 2)
    with pytest.raises(ValueError, match="bits has the wrong length"):
        ToeplitzHasher(seed, 4, 2).hash(bits[:3])


def test_value_errors_do_not_leak_bits() -> None:
    secret = np.array([1, 0, 1, 1, 0, 0, 1, 7], dtype=np.uint8)
    seed = np.ones(8 + 4 - 1, dtype=np.uint8)
    with pytest.raises(ValueError, match="bits must contain only 0 and 1") as info:
        toeplitz_hash(secret, seed, 4)
    message = str(info.value)
    assert "7" not in message
    assert "[" not in message
    bad_seed = seed.copy()
    bad_seed[3] = 2
    with pytest.raises(ValueError, match="seed must contain only 0 and 1"):
        toeplitz_hash(np.ones(8, dtype=np.uint8), bad_seed, 4)


def test_packed_size_limit_falls_back_to_direct() -> None:
    # n + m - 1 = 2^22: the packed method is refused and "auto" uses the direct method
    n, m = (1 << 21) + 1, 1 << 21
    bits = np.zeros(n, dtype=np.uint8)
    bits[0] = 1
    seed = np.zeros(n + m - 1, dtype=np.uint8)
    seed[n - 1 : n - 1 + m : 3] = 1
    with pytest.raises(ValueError, match="packed"):
        toeplitz_hash(bits, seed, m, method="packed")
    # x = e_0 selects column 0 of T: seed[n-1 : n-1+m]
    assert np.array_equal(toeplitz_hash(bits, seed, m), seed[n - 1 : n - 1 + m])


def test_concurrent_calls() -> None:
    rng = np.random.default_rng(9)
    cases = []
    for n, m in [(30_000, 15_000), (30_000, 15_000), (40_000, 8_000), (30_000, 15_000)] * 2:
        bits, seed = _bits(rng, n), _bits(rng, n + m - 1)
        cases.append((bits, seed, m, toeplitz_hash(bits, seed, m, method="direct")))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda c: toeplitz_hash(c[0], c[1], c[2]), cases))
    for (_, _, _, expected), got in zip(cases, results, strict=True):
        assert np.array_equal(got, expected)


def test_large_input_balanced_output() -> None:
    rng = np.random.default_rng(2024)
    n, m = 10**6, 5 * 10**5
    bits, seed = _bits(rng, n), _bits(rng, n + m - 1)
    out = toeplitz_hash(bits, seed, m, check_rounding=True)  # packed, checked against direct
    assert out.shape == (m,)
    assert out.dtype == np.uint8
    assert set(np.unique(out).tolist()) <= {0, 1}
    assert abs(float(out.mean()) - 0.5) < 0.005
    hasher = ToeplitzHasher(seed, n, m)
    assert np.array_equal(hasher.hash(bits, check_rounding=True), out)


def test_configure_measure_and_wisdom_roundtrip() -> None:
    original = toeplitz.fftw_settings()
    try:
        settings = toeplitz.configure_fftw(
            threads=1, planner_effort="FFTW_MEASURE", planning_timelimit=5.0
        )
        assert settings.threads == 1
        assert settings.planner_effort == "FFTW_MEASURE"
        assert toeplitz.fftw_settings() == settings
        rng = np.random.default_rng(4)
        n, m = 3000, 1500  # FFT length 4608: FFTW engine, quick to measure
        bits, seed = _bits(rng, n), _bits(rng, n + m - 1)
        assert toeplitz.warm_up(n, m) == fft_length(n, m) > 4096
        expected = toeplitz_hash_dense(bits, seed, m)
        for method in ("packed", "direct"):
            assert np.array_equal(toeplitz_hash(bits, seed, m, method=method), expected)
        hasher = ToeplitzHasher(seed, n, m)
        toeplitz.clear_fft_cache()  # the next call plans a fresh workspace
        assert np.array_equal(hasher.hash(bits), expected)
        wisdom = toeplitz.export_wisdom()
        assert wisdom
        assert all(isinstance(w, bytes) for w in wisdom)
        assert toeplitz.import_wisdom(wisdom)
        with pytest.raises(ValueError, match="planner_effort"):
            toeplitz.configure_fftw(planner_effort="FFTW_FAST")
        with pytest.raises(ValueError, match="threads"):
            toeplitz.configure_fftw(threads=0)
    finally:
        toeplitz.configure_fftw(
            threads=original.threads,
            planner_effort=original.planner_effort,
            planning_timelimit=original.planning_timelimit or math.inf,
            max_idle_per_length=original.max_idle_per_length,
            max_cache_bytes=original.max_cache_bytes,
        )
    assert toeplitz.fftw_settings() == original
