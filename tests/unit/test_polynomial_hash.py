"""Tests for qkdnet.node.core.polynomial_hash (GF(2^64) polynomial hashing)."""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from numpy.typing import NDArray

from qkdnet.node.core import polynomial_hash as ph
from qkdnet.node.core.polynomial_hash import (
    GF64_MODULUS,
    PolynomialHash,
    collision_bound,
    gf64_mul,
    gf64_mul_array,
    tags_equal,
    wegman_carter_tag,
)

MASK = (1 << 64) - 1


def reference_digest(key: int, data: bytes) -> int:
    """Slow Horner evaluation straight from the definition."""
    padded = data + bytes(-len(data) % 8)
    h = 0
    for i in range(0, len(padded), 8):
        h = gf64_mul(h ^ int.from_bytes(padded[i : i + 8], "big"), key)
    return gf64_mul(h ^ len(data), key)


def reference_digest_bits(key: int, bits: NDArray[np.uint8]) -> int:
    padded = bytes(np.packbits(bits).tobytes())
    padded += bytes(-len(padded) % 8)
    h = 0
    for i in range(0, len(padded), 8):
        h = gf64_mul(h ^ int.from_bytes(padded[i : i + 8], "big"), key)
    return gf64_mul(h ^ (bits.size | (1 << 63)), key)


def carryless_mul(a: int, b: int) -> int:
    result = 0
    for i in range(b.bit_length()):
        if (b >> i) & 1:
            result ^= a << i
    return result


def reduce_naive(value: int) -> int:
    for bit in range(value.bit_length() - 1, 63, -1):
        if (value >> bit) & 1:
            value ^= GF64_MODULUS << (bit - 64)
    return value


# ------------------------------------------------------------------------------- field


def test_modulus_identities() -> None:
    assert GF64_MODULUS == (1 << 64) | (1 << 4) | (1 << 3) | (1 << 1) | 1
    # x * x^63 = x^64 = x^4 + x^3 + x + 1
    assert gf64_mul(2, 1 << 63) == 0b11011
    assert gf64_mul(1 << 63, 1 << 63) == reduce_naive(1 << 126)
    for a in (0, 1, 2, MASK, 0x123456789ABCDEF0):
        assert gf64_mul(a, 1) == a
        assert gf64_mul(1, a) == a
        assert gf64_mul(a, 0) == 0


def test_field_axioms_on_random_values() -> None:
    rng = random.Random(1)
    for _ in range(200):
        a, b, c = (rng.getrandbits(64) for _ in range(3))
        assert gf64_mul(a, b) == gf64_mul(b, a)
        assert gf64_mul(a, b ^ c) == gf64_mul(a, b) ^ gf64_mul(a, c)
        assert gf64_mul(gf64_mul(a, b), c) == gf64_mul(a, gf64_mul(b, c))
        assert gf64_mul(a, b) == reduce_naive(carryless_mul(a, b))


def test_multiplicative_group_order() -> None:
    # a^(2^64 - 1) = 1 for a != 0 (the modulus is irreducible)
    rng = random.Random(2)
    for _ in range(3):
        a = rng.getrandbits(64) | 1
        result, base, exponent = 1, a, (1 << 64) - 1
        while exponent:
            if exponent & 1:
                result = gf64_mul(result, base)
            base = gf64_mul(base, base)
            exponent >>= 1
        assert result == 1


def test_scalar_validation() -> None:
    with pytest.raises(ValueError, match="a"):
        gf64_mul(1 << 64, 1)
    with pytest.raises(ValueError, match="b"):
        gf64_mul(1, -1)
    with pytest.raises(TypeError):
        gf64_mul(1.0, 1)  # type: ignore[arg-type]


def test_vectorised_matches_scalar() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 2**64, size=500, dtype=np.uint64)
    b = rng.integers(0, 2**64, size=500, dtype=np.uint64)
    a[:4] = [0, 1, 2**63, 2**64 - 1]
    b[:4] = [2**64 - 1, 2**63, 2**63, 2**64 - 1]
    product = gf64_mul_array(a, b)
    assert product.dtype == np.uint64
    assert [int(p) for p in product] == [
        gf64_mul(int(x), int(y)) for x, y in zip(a, b, strict=True)
    ]
    constant = 0xFEDCBA9876543210
    by_constant = gf64_mul_array(a.reshape(20, 25), constant)
    assert by_constant.shape == (20, 25)
    assert [int(p) for p in by_constant.ravel()] == [gf64_mul(int(x), constant) for x in a]
    with pytest.raises(TypeError):
        gf64_mul_array(a.astype(np.int64), b)


def test_square_helper() -> None:
    rng = random.Random(4)
    for _ in range(50):
        a = rng.getrandbits(64)
        assert ph._gf64_square(a) == gf64_mul(a, a)


# ------------------------------------------------------------------------------- digest


@pytest.mark.parametrize("key", [1, 2, 0x9E3779B97F4A7C15, MASK])
def test_digest_matches_reference_small(key: int) -> None:
    hasher = PolynomialHash(key)
    rng = random.Random(key)
    for length in range(51):
        data = rng.randbytes(length)
        assert hasher.digest(data) == reference_digest(key, data), length


def test_digest_matches_reference_around_threshold_and_large() -> None:
    key = 0xD1B54A32D192ED03
    hasher = PolynomialHash(key)
    rng = random.Random(5)
    edge = ph._SMALL_BLOCKS * 8
    lengths = [edge - 16, edge - 9, edge - 8, edge - 1, edge, edge + 1, edge + 8, 4097, 20_001]
    for length in lengths:
        data = rng.randbytes(length)
        assert hasher.digest(data) == reference_digest(key, data), length
    big = rng.randbytes(125_000)
    assert hasher.digest(big) == reference_digest(key, big)


def test_digest_input_types() -> None:
    hasher = PolynomialHash(12345)
    data = os.urandom(3000)
    expected = hasher.digest(data)
    assert hasher.digest(bytearray(data)) == expected
    assert hasher.digest(memoryview(data)) == expected
    assert hasher.digest(np.frombuffer(data, dtype=np.uint8).data) == expected
    assert 0 <= expected <= MASK


def test_lengths_are_distinguished() -> None:
    hasher = PolynomialHash(0x0123456789ABCDEF)
    digests = {hasher.digest(b"\0" * length) for length in range(40)}
    assert len(digests) == 40
    assert hasher.digest(b"") != hasher.digest(b"\0")
    assert hasher.digest(b"") == 0  # only the (zero) length block: h = 0 * k


def test_polynomial_structure() -> None:
    # one block m: h = m k^2 + 8 k
    key = 0xA5A5A5A55A5A5A5A
    block = 0x0102030405060708
    k2 = gf64_mul(key, key)
    expected = gf64_mul(block, k2) ^ gf64_mul(8, key)
    assert PolynomialHash(key).digest(block.to_bytes(8, "big")) == expected


def test_key_zero_is_allowed() -> None:
    assert PolynomialHash(0).digest(b"anything at all") == 0


def test_digest_bits() -> None:
    key = 0x5DEECE66D1234567
    hasher = PolynomialHash(key)
    rng = np.random.default_rng(6)
    for size in [0, 1, 7, 8, 9, 63, 64, 65, 1000, 1535, 1536, 1537, 100_000]:
        bits = rng.integers(0, 2, size, dtype=np.uint8)
        assert hasher.digest_bits(bits) == reference_digest_bits(key, bits), size
    # keys of different bit lengths never collide trivially
    zeros = {hasher.digest_bits(np.zeros(size, dtype=np.uint8)) for size in range(1, 130)}
    assert len(zeros) == 129
    # bit-string domain is separated from the byte-string domain
    assert hasher.digest_bits(np.zeros(8, dtype=np.uint8)) != hasher.digest(b"\0")
    assert hasher.digest_bits(np.array([1, 0, 1], dtype=np.uint8)) == hasher.digest_bits(
        np.array([1, 0, 1], dtype=np.uint8)[::1]
    )


def test_digest_bits_validation() -> None:
    hasher = PolynomialHash(99)
    with pytest.raises(ValueError, match="uint8"):
        hasher.digest_bits(np.zeros(8, dtype=np.int64))
    with pytest.raises(ValueError, match="one-dimensional"):
        hasher.digest_bits(np.zeros((2, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="0 and 1"):
        hasher.digest_bits(np.array([0, 1, 2], dtype=np.uint8))


def test_key_validation_never_echoes_the_key() -> None:
    for bad in (-1, 1 << 64, (1 << 64) + 987654321, -123456789):
        with pytest.raises(ValueError, match="key") as info:
            PolynomialHash(bad)
        assert str(bad) not in str(info.value)
        assert str(abs(bad)) not in str(info.value)
    for bad_type in (1.5, "7", None, True):
        with pytest.raises(TypeError, match="key"):
            PolynomialHash(bad_type)  # type: ignore[arg-type]
    secret = 0x1122334455667788
    hasher = PolynomialHash(secret)
    assert str(secret) not in repr(hasher)
    assert hex(secret)[2:] not in repr(hasher)
    assert PolynomialHash(np.uint64(secret)).digest(b"abc") == hasher.digest(b"abc")


def test_concurrent_use_of_one_instance() -> None:
    hasher = PolynomialHash(0xC0FFEE0DDF00D)
    rng = random.Random(8)
    messages = [rng.randbytes(rng.choice([10, 100, 5000, 70_000])) for _ in range(32)]
    expected = [reference_digest(0xC0FFEE0DDF00D, m) for m in messages[:6]]
    fresh = PolynomialHash(0xC0FFEE0DDF00D)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(fresh.digest, messages))
    assert results[:6] == expected
    assert results == [hasher.digest(m) for m in messages]


def test_collision_bound() -> None:
    assert collision_bound(0) == 1 / 2**64
    assert collision_bound(1) == 2 / 2**64
    assert collision_bound(8) == 2 / 2**64
    assert collision_bound(9) == 3 / 2**64
    assert collision_bound(125_000) == (15_625 + 1) / 2**64
    with pytest.raises(ValueError, match="length_bytes"):
        collision_bound(-1)


# ------------------------------------------------------------------------------- Wegman-Carter


def test_wegman_carter_tag_roundtrip() -> None:
    key = random.Random(9).getrandbits(64)
    sender, receiver = PolynomialHash(key), PolynomialHash(key)
    pad = bytes.fromhex("0011223344556677")
    message = b"sifting: basis list for frame 42" * 3
    tag = wegman_carter_tag(sender, pad, message)
    assert len(tag) == 8
    assert tag == (sender.digest(message) ^ int.from_bytes(pad, "big")).to_bytes(8, "big")
    assert tags_equal(tag, wegman_carter_tag(receiver, pad, message))

    flipped = bytearray(message)
    flipped[5] ^= 0x10
    assert not tags_equal(tag, wegman_carter_tag(receiver, pad, bytes(flipped)))
    other_pad = bytes([pad[0] ^ 1]) + pad[1:]
    assert not tags_equal(tag, wegman_carter_tag(receiver, other_pad, message))
    assert not tags_equal(tag, wegman_carter_tag(receiver, pad, message + b"\0"))
    assert not tags_equal(tag, tag[:7])


def test_wegman_carter_pad_validation() -> None:
    hasher = PolynomialHash(3)
    for pad in (b"", b"1234567", b"123456789"):
        with pytest.raises(ValueError, match="8 bytes"):
            wegman_carter_tag(hasher, pad, b"msg")
    with pytest.raises(TypeError, match="pad"):
        wegman_carter_tag(hasher, "12345678", b"msg")  # type: ignore[arg-type]
