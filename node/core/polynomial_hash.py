"""Polynomial hashing over GF(2^64) for Wegman-Carter authentication and key verification.

Field
-----
GF(2^64) is represented as GF(2)[x] / (x^64 + x^4 + x^3 + x + 1). An element is a 64-bit
unsigned integer whose bit ``i`` is the coefficient of ``x^i``; addition is XOR and
multiplication is carry-less multiplication followed by reduction modulo the (irreducible)
pentanomial above. :func:`gf64_mul` is a plain, bit-by-bit reference implementation;
:func:`gf64_mul_array` is its element-wise numpy counterpart.

Hash family
-----------
For a 64-bit key ``k`` and a message ``M`` of ``len(M)`` bytes:

* ``M`` is zero-padded to a multiple of 8 bytes and cut into ``L = ceil(len(M) / 8)``
  big-endian 64-bit blocks ``m_1 .. m_L``;
* a final block ``m_{L+1} = len(M)`` (the length in *bytes*) is appended;
* the hash is the polynomial, evaluated at ``k``,

  ``h_k(M) = m_1 k^(L+1) + m_2 k^L + ... + m_L k^2 + m_{L+1} k``

  i.e. the Horner recurrence ``h = 0; for each block b: h = (h + b) * k``.

``h_k`` has degree at most ``L + 1`` in ``k`` and no constant term. For two distinct messages
``M != M'`` the difference ``h_k(M) - h_k(M')`` is a non-zero polynomial (if the lengths differ,
the coefficients of ``k`` differ; otherwise some data block differs), so for any ``c`` the
polynomial ``h_k(M) + h_k(M') + c`` is non-zero of degree ``<= L_max + 1`` and has at most that
many roots. With ``k`` uniform, the family is therefore ``epsilon``-almost-XOR-universal with
``epsilon = (L_max + 1) / 2^64`` (:func:`collision_bound`), which is exactly what the
Wegman-Carter construction ``tag = h_k(M) XOR r`` (``r`` a fresh one-time pad) needs: an
adversary who sees ``(M, tag)`` forges ``(M', tag')`` with probability at most ``epsilon``,
and ``k`` can be reused as long as every tag is encrypted with fresh pad bits.

:meth:`PolynomialHash.digest_bits` hashes a 0/1 bit array (a reconciled key) the same way
after packing it MSB-first (``np.packbits``, big-endian bit order): the blocks are the packed
bits zero-padded to a multiple of 64 bits and the final block is the *bit* count with its top
bit (bit 63) set. The bit count keeps keys of different bit lengths apart; the flag separates
this domain from byte-message hashing.

Evaluation
----------
Short messages use a pure-Python Horner loop; multiplication by the fixed key is done with
eight 256-entry lookup tables (``k * a = XOR_j T_j[byte_j(a)]``, where
``T_j[v] = v x^(8j) k mod p``), built once per instance.

Long messages use a vectorised, Horner-equivalent binary tree (Estrin's scheme):
``E_c(v_0, ..., v_{2n-1}) = E_{c^2}(v_0 c + v_1, v_2 c + v_3, ...)``, halving the array at
each level with the constant ``c = k^(2^t)``. Multiplication of a whole array by a constant
uses the same byte-table trick with numpy gathers (``np.take``), so one level costs eight
table look-ups per pair and the whole tree costs about eight look-ups per block. The tables
for all levels are cached per instance and grown on demand.
"""

from __future__ import annotations

import hmac
import struct
import sys
import threading
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "BLOCK_BYTES",
    "GF64_MODULUS",
    "TAG_BYTES",
    "PolynomialHash",
    "collision_bound",
    "gf64_mul",
    "gf64_mul_array",
    "tags_equal",
    "wegman_carter_tag",
]

GF64_MODULUS: Final[int] = (1 << 64) | 0b11011
"""The reduction polynomial x^64 + x^4 + x^3 + x + 1 as an integer (bit i = coefficient of x^i)."""

BLOCK_BYTES: Final[int] = 8
"""Size of one message block (one field element), in bytes."""

TAG_BYTES: Final[int] = 8
"""Size of a Wegman-Carter tag and of its one-time pad, in bytes."""

_MASK64: Final[int] = (1 << 64) - 1
_BITS_DOMAIN_FLAG: Final[int] = 1 << 63

# Messages of up to this many blocks (length block included) take the pure-Python path.
_SMALL_BLOCKS: Final[int] = 192

# Column j of ``a.view(np.uint8).reshape(-1, 8)`` holds byte _BYTE_COLUMNS[j] (LSB = byte 0).
_BYTE_COLUMNS: Final[tuple[int, ...]] = (
    tuple(range(8)) if sys.byteorder == "little" else tuple(range(7, -1, -1))
)

# _SPREAD[b] interleaves the bits of the byte b with zeros (squaring in GF(2)[x]).
_SPREAD: Final[tuple[int, ...]] = tuple(
    sum(((b >> i) & 1) << (2 * i) for i in range(8)) for b in range(256)
)


# --------------------------------------------------------------------------------------------
# Scalar arithmetic
# --------------------------------------------------------------------------------------------


def _check_element(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int")
    if not 0 <= value <= _MASK64:
        raise ValueError(f"{name} must be in [0, 2^64)")


def gf64_mul(a: int, b: int) -> int:
    """Multiply two GF(2^64) elements (reference implementation, bit by bit).

    Both operands must be integers in ``[0, 2^64)``; the result is in the same range.
    """
    _check_element(a, "a")
    _check_element(b, "b")
    result = 0
    while b:
        if b & 1:
            result ^= a
        b >>= 1
        a <<= 1
        if a >> 64:
            a ^= GF64_MODULUS
    return result


def _reduce128(value: int) -> int:
    """Reduce a carry-less product of degree < 128 modulo p."""
    hi = value >> 64
    lo = (value & _MASK64) ^ hi ^ (hi << 1) ^ (hi << 3) ^ (hi << 4)
    hi = lo >> 64  # at most 4 bits
    return (lo ^ hi ^ (hi << 1) ^ (hi << 3) ^ (hi << 4)) & _MASK64


def _gf64_square(a: int) -> int:
    """Square in GF(2^64): spread the bits (Frobenius is linear), then reduce."""
    spread = 0
    for j in range(8):
        spread |= _SPREAD[(a >> (8 * j)) & 0xFF] << (16 * j)
    return _reduce128(spread)


def _times_x_powers(c: int) -> list[int]:
    """Return ``[c * x^s mod p for s in range(64)]``."""
    out = []
    for _ in range(64):
        out.append(c)
        c <<= 1
        if c >> 64:
            c ^= GF64_MODULUS
    return out


def _byte_tables(constants: list[int]) -> NDArray[np.uint64]:
    """Multiplication tables for several constants: shape ``(len(constants), 8, 256)``.

    ``tables[i, j, v] = v * x^(8j) * constants[i] mod p``, so that for any element ``a``,
    ``a * constants[i] = XOR_j tables[i, j, byte_j(a)]``.
    """
    basis = np.array([_times_x_powers(c) for c in constants], dtype=np.uint64)
    basis = basis.reshape(len(constants), 8, 8)  # [i, j, t] = constants[i] * x^(8j + t)
    tables = np.zeros((len(constants), 8, 256), dtype=np.uint64)
    for t in range(8):
        lo, hi = 1 << t, 2 << t
        np.bitwise_xor(tables[:, :, :lo], basis[:, :, t, None], out=tables[:, :, lo:hi])
    return tables


def _mul_by_table(values: NDArray[np.uint8], table: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """Multiply elements given as a ``(n, 8)`` native-order byte view by a tabled constant."""
    planes = np.ascontiguousarray(values.T)  # (8, n): one contiguous row per byte column
    col = _BYTE_COLUMNS
    result: NDArray[np.uint64] = table[col[0]].take(planes[0])
    for j in range(1, 8):
        result ^= table[col[j]].take(planes[j])
    return result


# --------------------------------------------------------------------------------------------
# Vectorised arithmetic
# --------------------------------------------------------------------------------------------


def gf64_mul_array(a: NDArray[np.uint64], b: NDArray[np.uint64] | int) -> NDArray[np.uint64]:
    """Element-wise GF(2^64) product of uint64 arrays (``b`` may also be a scalar int).

    A scalar ``b`` uses the byte-table method; arrays use a 64-step shift/XOR carry-less
    multiplication over the whole array followed by a single vectorised reduction.
    """
    a_arr = np.asarray(a)
    if a_arr.dtype != np.uint64:
        raise TypeError("a must be a uint64 array")
    if isinstance(b, int) and not isinstance(b, bool):
        _check_element(b, "b")
        flat = np.ascontiguousarray(a_arr).reshape(-1)
        table = _byte_tables([b])[0]
        return _mul_by_table(flat.view(np.uint8).reshape(-1, 8), table).reshape(a_arr.shape)
    b_arr = np.asarray(b)
    if b_arr.dtype != np.uint64:
        raise TypeError("b must be a uint64 array or an int")
    a_arr, b_arr = np.broadcast_arrays(a_arr, b_arr)
    lo = np.zeros(a_arr.shape, dtype=np.uint64)
    hi = np.zeros(a_arr.shape, dtype=np.uint64)
    one = np.uint64(1)
    mask = np.empty(a_arr.shape, dtype=np.uint64)
    for i in range(64):
        shift = np.uint64(i)
        # mask = all-ones where bit i of b is set (0 - 1 wraps around in uint64)
        np.right_shift(b_arr, shift, out=mask)
        mask &= one
        np.negative(mask, out=mask)
        lo ^= (a_arr << shift) & mask
        if i:
            hi ^= (a_arr >> np.uint64(64 - i)) & mask
    return _reduce128_array(lo, hi)


def _reduce128_array(lo: NDArray[np.uint64], hi: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """Vectorised reduction of 128-bit carry-less products ``hi * 2^64 + lo`` modulo p."""
    u1, u3, u4 = np.uint64(1), np.uint64(3), np.uint64(4)
    # hi * (x^4 + x^3 + x + 1) = overflow * x^64 + low part
    overflow = (hi >> np.uint64(63)) ^ (hi >> np.uint64(61)) ^ (hi >> np.uint64(60))
    out: NDArray[np.uint64] = lo ^ hi ^ (hi << u1) ^ (hi << u3) ^ (hi << u4)
    out ^= overflow ^ (overflow << u1) ^ (overflow << u3) ^ (overflow << u4)
    return out


# --------------------------------------------------------------------------------------------
# Hash
# --------------------------------------------------------------------------------------------


def collision_bound(length_bytes: int) -> float:
    """Collision (and forgery) probability bound for messages of at most ``length_bytes``.

    ``(ceil(length_bytes / 8) + 1) / 2^64``: the degree of the hash polynomial over 2^64 keys.
    For :meth:`PolynomialHash.digest_bits` pass ``ceil(n_bits / 8)``.
    """
    if isinstance(length_bytes, bool) or not isinstance(length_bytes, int):
        raise TypeError("length_bytes must be an int")
    if length_bytes < 0:
        raise ValueError("length_bytes must be non-negative")
    blocks = -(-length_bytes // BLOCK_BYTES)
    return float(blocks + 1) / float(1 << 64)


class PolynomialHash:
    """Polynomial hash ``h_k`` over GF(2^64) keyed by a 64-bit integer (see module docstring).

    Instances are immutable from the caller's point of view and safe to share between threads
    (the lazily grown lookup tables are protected by a lock).
    """

    __slots__ = ("__key", "_level_tables", "_lock", "_small_tables")

    def __init__(self, key: int | np.integer[Any]) -> None:
        if isinstance(key, bool) or not isinstance(key, int | np.integer):
            raise TypeError("key must be an int")
        key = int(key)
        if not 0 <= key <= _MASK64:
            raise ValueError("key must be in [0, 2^64)")  # never echo the key
        self.__key = key
        self._lock = threading.Lock()
        self._small_tables: tuple[list[int], ...] | None = None
        # _level_tables[t] multiplies by k^(2^t); shape (levels, 8, 256)
        self._level_tables: NDArray[np.uint64] = np.empty((0, 8, 256), dtype=np.uint64)

    def __repr__(self) -> str:
        return "PolynomialHash(key=<hidden>)"

    # ---------------------------------------------------------------- public API

    def digest(self, data: bytes | bytearray | memoryview) -> int:
        """Hash a byte string; returns a 64-bit integer."""
        view = memoryview(data).cast("B")
        n = view.nbytes
        pad = -n % BLOCK_BYTES
        buf = bytes(view) + bytes(pad) if pad else view
        return self._evaluate(buf, n)

    def digest_bits(self, bits: NDArray[np.uint8]) -> int:
        """Hash a 1-D array of 0/1 ``uint8`` values (e.g. a reconciled key); 64-bit result."""
        arr = np.asarray(bits)
        if arr.dtype != np.uint8:
            raise ValueError("bits must be a uint8 array")
        if arr.ndim != 1:
            raise ValueError("bits must be one-dimensional")
        if arr.size and int(arr.max()) > 1:
            raise ValueError("bits must contain only 0 and 1")
        n_bits = int(arr.size)
        packed = np.packbits(arr)  # big-endian bit order, last byte zero-padded
        pad = -packed.size % BLOCK_BYTES
        if pad:
            packed = np.concatenate((packed, np.zeros(pad, dtype=np.uint8)))
        return self._evaluate(packed.data, n_bits | _BITS_DOMAIN_FLAG)

    # ---------------------------------------------------------------- evaluation

    def _evaluate(self, buf: bytes | memoryview, length_word: int) -> int:
        """Hash of the blocks in ``buf`` (length a multiple of 8) followed by ``length_word``."""
        n_blocks = len(buf) // BLOCK_BYTES
        if n_blocks + 1 <= _SMALL_BLOCKS:
            return self._horner(buf, n_blocks, length_word)
        return self._tree(buf, n_blocks, length_word)

    def _horner(self, buf: bytes | memoryview, n_blocks: int, length_word: int) -> int:
        tables = self._small_tables
        if tables is None:
            tables = self._build_small_tables()
        t0, t1, t2, t3, t4, t5, t6, t7 = tables
        h = 0
        for block in (*struct.unpack(f">{n_blocks}Q", buf), length_word):
            h ^= block
            h = (
                t0[h & 0xFF]
                ^ t1[(h >> 8) & 0xFF]
                ^ t2[(h >> 16) & 0xFF]
                ^ t3[(h >> 24) & 0xFF]
                ^ t4[(h >> 32) & 0xFF]
                ^ t5[(h >> 40) & 0xFF]
                ^ t6[(h >> 48) & 0xFF]
                ^ t7[h >> 56]
            )
        return h

    def _tree(self, buf: bytes | memoryview, n_blocks: int, length_word: int) -> int:
        # Coefficients, highest power first: m_1 .. m_L, length, 0 (the trailing zero block
        # supplies the final multiplication by k), with one leading zero if needed to make
        # the count even.
        count = n_blocks + 2
        lead = count & 1
        values = np.empty(count + lead, dtype=np.uint64)
        values[:lead] = 0
        values[lead : lead + n_blocks] = np.frombuffer(buf, dtype=">u8")
        values[-2] = length_word
        values[-1] = 0
        tables = self._tables_for(values.size)
        level = 0
        while values.size > 1:
            size = values.size
            if size & 1:
                # Logically prepend a zero: the pair (0, v_0) evaluates to v_0.
                pairs = values[1:]
                nxt = np.empty(size // 2 + 1, dtype=np.uint64)
                nxt[0] = values[0]
                out = nxt[1:]
            else:
                pairs = values
                nxt = np.empty(size // 2, dtype=np.uint64)
                out = nxt
            high = pairs.view(np.uint8).reshape(-1, 16)[:, :8]
            np.bitwise_xor(_mul_by_table(high, tables[level]), pairs[1::2], out=out)
            values = nxt
            level += 1
        return int(values[0])

    # ---------------------------------------------------------------- tables

    def _build_small_tables(self) -> tuple[list[int], ...]:
        with self._lock:
            if self._small_tables is None:
                tables = self._level_tables
                table = tables[0] if tables.shape[0] else _byte_tables([self.__key])[0]
                self._small_tables = tuple(table.tolist())  # one list per byte position
            return self._small_tables

    def _tables_for(self, size: int) -> NDArray[np.uint64]:
        """Tables for every tree level needed to reduce ``size`` values to one."""
        levels = max(1, (size - 1).bit_length())
        tables = self._level_tables
        if tables.shape[0] >= levels:
            return tables
        with self._lock:
            tables = self._level_tables
            have = tables.shape[0]
            if have < levels:
                constants = [self.__key]
                for _ in range(levels - 1):
                    constants.append(_gf64_square(constants[-1]))
                new = _byte_tables(constants[have:])
                tables = np.concatenate((tables, new)) if have else new
                tables.setflags(write=False)
                self._level_tables = tables
            return tables


# --------------------------------------------------------------------------------------------
# Wegman-Carter helpers
# --------------------------------------------------------------------------------------------


def wegman_carter_tag(
    hash: PolynomialHash,
    pad: bytes,
    message: bytes | bytearray | memoryview,
) -> bytes:
    """Wegman-Carter tag: ``h_k(message) XOR pad`` as 8 big-endian bytes.

    ``pad`` must be exactly 8 fresh one-time-pad bytes, never reused.
    """
    if not isinstance(pad, bytes | bytearray | memoryview):
        raise TypeError("pad must be bytes")
    if len(pad) != TAG_BYTES:
        raise ValueError(f"pad must be exactly {TAG_BYTES} bytes")
    value = hash.digest(message) ^ int.from_bytes(pad, "big")
    return value.to_bytes(TAG_BYTES, "big")


def tags_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two tags."""
    return hmac.compare_digest(a, b)
