"""Cascade information reconciliation, vectorised with numpy, split into Alice's and Bob's roles.

Protocol
--------
Cascade (Brassard-Salvail 1993, with the improvements collected in Martinez-Mateo et al.,
"Demystifying the information reconciliation protocol Cascade", QIC 15, 453 (2015),
arXiv:1407.3257) corrects Bob's noisy copy of Alice's key by asking Alice for the parities of
ranges of her key.  Alice only answers; Bob drives and flips bits of his copy.

* The key is read in several orders ("passes", see `CascadePlan`): pass 0 in its natural
  order, pass 1 through a public random shuffle, passes 2+ ("split" passes) as two random
  halves.  Pass ``p`` cuts its order into blocks of ``block_sizes(n, qber)[p]`` bits (the last
  block of a pass may be shorter).
* A block whose parity differs between Alice and Bob holds an odd number of errors.  Bob
  bisects it, asking only for the parity of the left half of the current range (the right
  half's follows from the range's), until a single wrong bit is left, which he flips.
* A flip changes the parity of the block holding that bit in every other pass: blocks of the
  passes run so far that turn odd are bisected in turn (the "cascade").
* Nothing that can be inferred is asked: sub-range parities revealed by an earlier bisection
  of a block are remembered, and the last block of every pass after the first follows from
  the parity of the whole key, known from pass 0.
* Passes are corrected one after the other.  Cascade can leave an even number of errors
  hidden, so the caller must still verify the result (a hash) and discard the frame on
  mismatch.

Message flow
------------
Bob drives, Alice answers, the caller carries the messages::

    while (query := bob.next_query()) is not None:          # None: bob.key is reconciled
        wire = query.to_bytes()                              # Bob -> Alice
        parities = alice.answer(ParityQuery.from_bytes(wire))
        wire = pack_parities(parities)                       # Alice -> Bob
        bob.receive(unpack_parities(wire, len(query)))

The first query asks for the top-level parities of the blocks of *all* passes at once (every
pass is always run, so asking early discloses nothing extra and saves a round trip per pass).
Every later query carries one range per active bisection, so all blocks being searched -- in
the current pass and, through the cascade, in earlier ones -- advance together, one level per
round trip.  When only a few bisections remain, Bob asks two or three levels at once (see
`CascadeBob`), trading a few extra parities for round trips.

Both roles derive the same schedule from ``(n, qber, seed)``; the seed is public (Alice picks
it and sends it in the clear).  Every answered parity is one disclosed bit; both sides count
them (``disclosed_bits``) for privacy amplification.

Sizes: a query takes 9 bytes per range plus 8, an answer one bit per range.  The first query
is the largest, about ``9 n (1/k0 + 1/k1)`` bytes (420 kB for n = 10^6 at 2 %, 840 kB at 5 %);
later ones carry one range per active bisection (one to three per bisection when few remain),
at most about a third of the first one.  ``CascadeBob.receive`` raises `CascadeProtocolError`
if Alice's answers contradict each other (a bit would have to be flipped twice), which also
bounds the work whatever she sends.
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "QBER_FLOOR",
    "CascadeAlice",
    "CascadeBob",
    "CascadePlan",
    "CascadeProtocolError",
    "CascadeResult",
    "ParityQuery",
    "binary_entropy",
    "block_sizes",
    "pack_parities",
    "reconcile",
    "unpack_parities",
]

QBER_FLOOR: Final = 0.005
"""Error-rate estimates below this are raised to it when choosing block sizes."""
_QBER_CEIL: Final = 0.25
_K0_SCALE: Final = 0.73  # pass-0 blocks of about 0.73/q bits (Brassard-Salvail)
_CHAIN_LOAD: Final = 0.8  # errors left by pass 0 per pass-1 block, at most
_SPLIT_PASSES: Final = (10, 20)  # at least / at most; about log2(n) - 4 in between
_CHUNKED_FROM: Final = 1 << 18  # shorter keys get a uniformly random shuffle
# Bob asks two (three) levels deep once at most ideal/1000 (ideal/8000) bisections are
# active, ideal = n H2(q): the extra parities then cost a few permille of the disclosure.
_SPECULATE_2: Final = 1000
_SPECULATE_3: Final = 8000

_QUERY_MAGIC: Final = b"CQ"
_QUERY_VERSION: Final = 1
_QUERY_HEADER: Final = struct.Struct("<2sBxI")  # magic, version, padding, range count

U8 = NDArray[np.uint8]
I64 = NDArray[np.int64]
U64 = NDArray[np.uint64]


class CascadeProtocolError(ValueError):
    """A Cascade message is malformed, truncated or does not fit the session."""


# ---------------------------------------------------------------------------------------------
# Messages


@dataclass(frozen=True, eq=False)  # array fields: compare and hash by identity
class ParityQuery:
    """Ranges [start, end) in the permuted order of pass `pass_index`.

    Alice answers each range's parity.  The three arrays are 1-D and of equal length; the
    answers come back in the same order.
    """

    pass_index: NDArray[np.uint8]
    start: NDArray[np.uint32]
    end: NDArray[np.uint32]

    def __post_init__(self) -> None:
        shape = self.start.shape
        if len(shape) != 1 or self.pass_index.shape != shape or self.end.shape != shape:
            raise CascadeProtocolError("query arrays must be 1-D and of equal length")

    def __len__(self) -> int:
        return int(self.start.size)

    def to_bytes(self) -> bytes:
        """Serialise: an 8-byte header (magic, version, count), then the three arrays (LE).

        9 bytes per range.
        """
        return b"".join(
            (
                _QUERY_HEADER.pack(_QUERY_MAGIC, _QUERY_VERSION, len(self)),
                self.pass_index.astype(np.uint8, copy=False).tobytes(),
                self.start.astype("<u4", copy=False).tobytes(),
                self.end.astype("<u4", copy=False).tobytes(),
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ParityQuery:
        """Parse `to_bytes` output; raise `CascadeProtocolError` on anything malformed."""
        size = _QUERY_HEADER.size
        if len(data) < size:
            raise CascadeProtocolError("parity query truncated")
        magic, version, count = _QUERY_HEADER.unpack_from(data)
        if magic != _QUERY_MAGIC or version != _QUERY_VERSION:
            raise CascadeProtocolError("not a parity query of a known version")
        if len(data) != size + 9 * count:
            raise CascadeProtocolError("parity query length does not match its count")
        pass_index = np.frombuffer(data, np.uint8, count, size).copy()
        start = np.frombuffer(data, "<u4", count, size + count).astype(np.uint32)
        end = np.frombuffer(data, "<u4", count, size + 5 * count).astype(np.uint32)
        if not bool(np.all(start < end)):
            raise CascadeProtocolError("parity query has an empty or reversed range")
        return cls(pass_index, start, end)


def pack_parities(bits: NDArray[np.uint8]) -> bytes:
    """Pack an answer (0/1 values) eight to a byte, first parity in the most significant bit.

    The count is not encoded: the receiver knows it (the length of its query).
    """
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes()


def unpack_parities(data: bytes, count: int) -> NDArray[np.uint8]:
    """Inverse of `pack_parities` for an answer of `count` parities.

    Raises `CascadeProtocolError` if the length does not match or the padding is not zero.
    """
    if count < 0 or len(data) != (count + 7) // 8:
        raise CascadeProtocolError("parity answer length does not match the query")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if bool(bits[count:].any()):
        raise CascadeProtocolError("parity answer has non-zero padding")
    return bits[:count]


# ---------------------------------------------------------------------------------------------
# Schedule


def binary_entropy(p: float) -> float:
    """Binary entropy H2(p) in bits (0 for p <= 0 or p >= 1)."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def _clamp_qber(qber: float) -> float:
    if not math.isfinite(qber):
        raise ValueError("qber must be finite")
    return min(max(float(qber), QBER_FLOOR), _QBER_CEIL)


def _left_after_pass(q: float, k: int) -> float:
    """Expected fraction of bits still wrong after one pass with blocks of `k` bits.

    An odd block loses one error, so a block keeps ``k q - P(odd)`` of them on average.
    """
    return (k * q - (1.0 - (1.0 - 2.0 * q) ** k) / 2.0) / k


def _size_at_most(x: float) -> int:
    """The largest ``2^j`` or ``3 * 2^(j-1)`` not above `x` (at least 2)."""
    if x < 3:
        return 2
    j = math.floor(math.log2(x))
    return 3 << (j - 1) if 3 << (j - 1) <= x else 1 << j


def block_sizes(n: int, qber: float) -> list[int]:
    """Top-level block size of each pass, as used by both roles.

    With ``q`` = `qber` clamped to [`QBER_FLOOR`, 0.25]:

    * pass 0: ``k0 = 2^round(log2(0.73 / q))`` -- Brassard-Salvail's 0.73/q rounded to a power
      of two, so bisecting a block takes exactly ``log2 k0`` parities (k0 = 32 at 2 %);
    * pass 1: ``k1 >= k0``, the largest ``2^j`` or ``1.5 * 2^j`` such that a block holds at
      most 0.8 of the errors pass 0 leaves behind on average (k1 = 64 at 2 %).  Larger blocks
      disclose fewer top-level parities, but the cascades bouncing between passes 0 and 1
      grow longer, and near one error per block they percolate through the whole key;
    * passes 2+: split passes of two halves (``ceil(n/2)``, like the Demystifying paper's
      ``k = n/2`` for late passes), ``log2(n) - 4`` of them but at least 10 and at most 20.
      Each costs one parity (the other half follows from the key's parity) and exposes an
      error pattern hidden so far with probability 1/2; they catch the rare errors that
      share both their pass-0 and their pass-1 block (in about a fifth of the frames), so
      each halves the frame error rate for one more disclosed bit -- worth more passes on
      longer frames, which cost more to lose.

    Every size is capped at ``n``.
    """
    if not 1 <= n < 1 << 31:
        raise ValueError("key length must be positive and below 2^31")
    q = _clamp_qber(qber)
    k0 = 1 << max(1, round(math.log2(_K0_SCALE / q)))
    k1 = max(k0, _size_at_most(_CHAIN_LOAD / _left_after_pass(q, k0)))
    splits = min(max(int(n).bit_length() - 4, _SPLIT_PASSES[0]), _SPLIT_PASSES[1])
    return [min(k0, n), min(k1, n)] + [n - n // 2] * splits


def _pair_tables() -> tuple[U8, U8]:
    """Lookup tables: 16 consecutive bits (a big-endian uint16) -> their even / odd bits."""
    v = np.arange(1 << 16, dtype=np.int64)
    even = np.zeros(v.size, np.int64)
    odd = np.zeros(v.size, np.int64)
    for i in range(8):
        even |= ((v >> (15 - 2 * i)) & 1) << (7 - i)
        odd |= ((v >> (14 - 2 * i)) & 1) << (7 - i)
    return even.astype(np.uint8), odd.astype(np.uint8)


_EVEN_BITS, _ODD_BITS = _pair_tables()


class _RandomShuffle:
    """A uniformly random permutation (for keys shorter than `_CHUNKED_FROM`)."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.order: I64 = rng.permutation(n)
        self._inverse: NDArray[np.int32] | None = None

    def positions(self, orig: I64) -> I64:
        if self._inverse is None:
            inv = np.empty(self.order.size, dtype=np.int32)
            inv[self.order] = np.arange(self.order.size, dtype=np.int32)
            self._inverse = inv
        return self._inverse[orig].astype(np.int64)


class _ChunkShuffle:
    """A random-looking permutation that is cheap to build and to invert pointwise.

    Drawing a uniformly random permutation of 10^6 elements costs as much as the rest of
    Cascade, and Bob would need its inverse too; this one is built from small random pieces.
    Bit ``x = 128 c + j`` (chunk ``c``, offset ``j``) goes to column ``col = T[h[c], j]`` --
    ``T`` holds 256 random permutations of the offsets, ``h`` picks one per chunk -- and
    within its column to row ``R[(c + s[col]) mod M]``, with ``R`` a random permutation of
    the ``M`` chunks and ``s`` distinct random shifts.  The bits of a chunk (so of a pass-0
    block) land in distinct columns, and whether two chunks meet in a column window is a
    separate random event for each column, so block incidences between passes 0 and 1 look
    random.  Positions past ``n`` (the partial last chunk) are skipped by cycle walking.
    """

    _BITS: Final = 7
    _WIDTH: Final = 1 << _BITS
    _TABLES: Final = 256

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        w = self._WIDTH
        self._n = n
        m = self._rows = -(-n // w)
        self._row = rng.permutation(m)
        row_inv = np.empty(m, np.int64)
        row_inv[self._row] = np.arange(m)
        self._shift = rng.choice(m, w, replace=False)
        table = rng.permuted(np.tile(np.arange(w, dtype=np.int64), (self._TABLES, 1)), axis=1)
        self._table = table.reshape(-1)
        table_inv = np.empty((self._TABLES, w), np.uint8)
        table_inv[np.arange(self._TABLES)[:, None], table] = np.arange(w, dtype=np.uint8)
        pick = rng.integers(0, self._TABLES, m)
        self._which = pick * w
        # The order (original bit at each position), column by column, with few passes over
        # the n entries: every fresh large temporary costs page faults.
        wrap = np.concatenate((np.arange(m), np.arange(m))) * w
        index = wrap[row_inv[None, :] + (m - self._shift)[:, None]]  # w ((R^-1 - s) mod m)
        col = np.arange(w, dtype=np.int64)[:, None]
        index += col
        offset = table_inv[pick].reshape(-1)[index]  # T^-1[h[chunk], col]
        index -= col
        index += offset
        full = index.reshape(-1)
        order = full[:n]
        walk = np.flatnonzero(order >= n)
        while walk.size:
            order[walk] = full[order[walk]]
            walk = walk[order[walk] >= n]
        self.order: I64 = order

    def _forward(self, x: I64) -> I64:
        chunk = x >> self._BITS
        col = self._table[self._which[chunk] + (x & (self._WIDTH - 1))]
        pos: I64 = col * self._rows + self._row[(chunk + self._shift[col]) % self._rows]
        return pos

    def positions(self, orig: I64) -> I64:
        pos = self._forward(orig)
        walk = np.flatnonzero(pos >= self._n)
        while walk.size:
            pos[walk] = self._forward(pos[walk])
            walk = walk[pos[walk] >= self._n]
        return pos


class CascadePlan:
    """The public schedule both roles derive from ``(n, qber, seed)``.

    * Pass 0 reads the key in its natural order.
    * Pass 1 reads it shuffled: its position ``t`` holds original bit ``shuffle[t]``.  The
      shuffle comes from ``Generator(PCG64(seed))``: a uniformly random permutation for keys
      shorter than 2^18 bits, the cheaper `_ChunkShuffle` construction from there on.
    * Split pass ``2 + s`` pairs the bits ``(o + 2j, o + 2j + 1)``, ``o = s mod 2`` (the
      offset alternates, so that no error pattern made of whole pairs escapes every split
      pass), puts bit ``o + 2j + r_s[j]`` of each pair at position ``j`` of its first half and
      the other one at position ``j`` of its second half, with the one or two unpaired bits in
      between.  The ``r_s`` are random bits from the same generator.  These orders need no
      gather, so they are laid out only if one of their blocks has to be bisected.

    Building the plan (mostly the shuffle) is the costliest fixed step for long keys, so an
    in-process driver may build it once and hand it to both roles.
    """

    def __init__(self, n: int, qber: float, seed: int) -> None:
        self.n: Final = int(n)
        self.qber: Final = float(qber)
        self.seed: Final = int(seed)
        self.sizes: Final = block_sizes(self.n, self.qber)
        self.passes: Final = len(self.sizes)
        rng = np.random.Generator(np.random.PCG64(self.seed))
        n = self.n
        self._shuffler = _ChunkShuffle(n, rng) if n >= _CHUNKED_FROM else _RandomShuffle(n, rng)
        self.shuffle: Final[I64] = self._shuffler.order
        # Split passes with pairing offset o = 0, 1: pair count, unpaired bits.
        self.pairs: Final = (n // 2, (n - 1) // 2)
        self.unpaired: Final = (
            np.arange(2 * self.pairs[0], n, dtype=np.int64),
            np.concatenate(([0], np.arange(1 + 2 * self.pairs[1], n))).astype(np.int64),
        )
        width = max(1, -(-self.pairs[0] // 64)) * 8  # bytes of choice bits, whole words
        self.split_bits: Final[U8] = rng.integers(
            0, 256, size=(self.passes - 2, width), dtype=np.uint8
        )
        self.half: Final = n - n // 2
        k = np.asarray(self.sizes, dtype=np.int64)
        nb = -(-n // k)
        self.block_size: Final[I64] = k
        # Global block numbering: the blocks of pass p are block_offset[p] ... [p + 1] - 1.
        self.block_offset: Final[I64] = np.concatenate(([0], np.cumsum(nb))).astype(np.int64)
        gp = np.repeat(np.arange(self.passes, dtype=np.int64), nb)
        local = np.arange(int(self.block_offset[-1]), dtype=np.int64) - self.block_offset[gp]
        self.block_pass: Final[I64] = gp
        self.block_start: Final[I64] = local * k[gp]
        self.block_end: Final[I64] = np.minimum(self.block_start + k[gp], n)
        # Bisection trees are heap-numbered (root 1, children 2h and 2h + 1); the internal
        # nodes of a block of at most 2^d bits are numbered below 2^d.
        self.tree_slots: Final[I64] = np.array(
            [1 << (int(x) - 1).bit_length() for x in k], dtype=np.int64
        )
        self.words: Final = n // 64 + 1  # prefix-parity words per pass

    def matches(self, n: int, qber: float, seed: int) -> bool:
        """Whether this plan was built for these parameters."""
        return (self.n, self.qber, self.seed) == (int(n), float(qber), int(seed))

    def shuffled_positions(self, orig: I64) -> I64:
        """Pass-1 positions of original bits `orig`."""
        return self._shuffler.positions(orig)

    def _pair_halves(self, bits: U8, offset: int) -> tuple[U8, U8]:
        """Packed first and second bits of the pairs at `offset`, padded like `split_bits`."""
        m = self.pairs[offset]
        packed = np.zeros(2 * self.split_bits.shape[1], np.uint8)
        chunk = np.packbits(bits[offset : offset + 2 * m])
        packed[: chunk.size] = chunk
        words = packed.view(">u2")
        return _EVEN_BITS[words], _ODD_BITS[words]

    def split_first_parities(self, bits: U8) -> U8:
        """Parity of the first block of every split pass of `bits` (natural order)."""
        out = np.zeros(self.passes - 2, np.uint8)
        for offset in (0, 1):
            first, second = self._pair_halves(bits, offset)
            chosen = first ^ ((first ^ second) & self.split_bits[offset::2])
            folded = np.bitwise_xor.reduce(chosen.view(np.uint64), axis=1)
            parity = (np.bitwise_count(folded) & 1).astype(np.uint8)
            if self.unpaired[offset].size:  # the first unpaired bit closes the first half
                parity ^= bits[self.unpaired[offset][0]]
            out[offset::2] = parity
        return out

    def split_order(self, s: int, bits: U8) -> U8:
        """`bits` (natural order) read in the order of split pass ``2 + s``."""
        offset = s & 1
        m = self.pairs[offset]
        first, second = self._pair_halves(bits, offset)
        chosen = first ^ ((first ^ second) & self.split_bits[s])
        unpaired = self.unpaired[offset]
        out = np.empty(self.n, dtype=np.uint8)
        out[:m] = np.unpackbits(chosen, count=m)
        out[m : m + unpaired.size] = bits[unpaired]
        out[m + unpaired.size :] = np.unpackbits(first ^ second ^ chosen, count=m)
        return out

    def _choice(self, s: I64, j: I64) -> I64:
        byte = self.split_bits[s, j >> 3].astype(np.int64)
        bit: I64 = (byte >> (7 - (j & 7))) & 1
        return bit

    def split_positions(self, orig: I64, passes: I64) -> I64:
        """Positions of original bits `orig` in split passes `passes` (an outer product)."""
        s = passes[:, None] - 2
        offset = s & 1
        m = np.asarray(self.pairs, dtype=np.int64)[offset]
        unpaired = np.asarray([u.size for u in self.unpaired], dtype=np.int64)[offset]
        rel = orig[None, :] - offset
        j = rel >> 1
        paired = (rel >= 0) & (j < m)
        j = np.where(paired, j, 0)
        first = (rel & 1) == self._choice(s, j)
        pos = np.where(first, j, m + unpaired + j)
        # Unpaired bits: bit n - 1, or (offset 1) bit 0 then bit n - 1.
        rank = (offset == 1) & (orig[None, :] != 0)
        return np.where(paired, pos, m + rank)

    def originals(self, p: I64, t: I64) -> I64:
        """Original index of position `t` of pass `p` (element-wise)."""
        out = t.copy()
        sel = p == 1
        if bool(sel.any()):
            out[sel] = self.shuffle[t[sel]]
        sel = p >= 2
        if bool(sel.any()):
            s = p[sel] - 2
            ts = t[sel]
            offset = s & 1
            m = np.asarray(self.pairs, dtype=np.int64)[offset]
            unpaired = np.asarray([u.size for u in self.unpaired], dtype=np.int64)[offset]
            first = ts < m
            j = np.clip(np.where(first, ts, ts - m - unpaired), 0, np.maximum(m - 1, 0))
            r = self._choice(s, j)
            orig = offset + 2 * j + np.where(first, r, 1 - r)
            middle = (ts >= m) & (ts < m + unpaired)
            if bool(middle.any()):
                leading = (offset[middle] == 1) & (ts[middle] == m[middle])
                orig[middle] = np.where(leading, 0, self.n - 1)
            out[sel] = orig
        return out


def _check_key(key: NDArray[np.uint8]) -> U8:
    arr = np.asarray(key)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError("key must be a non-empty 1-D array of bits")
    if arr.dtype != np.uint8:
        if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError("key must hold 0/1 integers")
        if int(arr.min()) < 0 or int(arr.max()) > 1:
            raise ValueError("key bits must be 0 or 1")
        return arr.astype(np.uint8)
    if int(arr.max()) > 1:
        raise ValueError("key bits must be 0 or 1")
    return arr


@functools.lru_cache(maxsize=2)
def _cached_plan(n: int, qber: float, seed: int) -> CascadePlan:
    # Both roles of a frame built in one process (tests, benchmarks, an emulator running both
    # ends) share the plan instead of drawing the shuffle twice; plans are read-only.
    return CascadePlan(n, qber, seed)


def _check_plan(plan: CascadePlan | None, n: int, qber: float, seed: int) -> CascadePlan:
    if plan is None:
        return _cached_plan(n, float(qber), int(seed))
    if not plan.matches(n, qber, seed):
        raise ValueError("plan was built for other parameters")
    return plan


def _prefix_words(bits: U8, words: int) -> U64:
    """Prefix parities of each row of `bits` (2-D), 64 to a word.

    Bit ``r`` of word ``w`` of a row of the result is the parity of bits ``[0, 64 w + r)`` of
    that row, so the parity of any range takes two word lookups.
    """
    packed = np.packbits(bits, axis=-1, bitorder="little")
    buf = np.zeros((bits.shape[0], words * 8), dtype=np.uint8)
    buf[:, : packed.shape[1]] = packed
    w = buf.view("<u8").astype(np.uint64, copy=False)
    for shift in (1, 2, 4, 8, 16, 32):
        w ^= w << np.uint64(shift)
    parity = w >> np.uint64(63)
    carry = np.bitwise_xor.accumulate(parity, axis=-1) ^ parity
    w <<= np.uint64(1)
    w ^= np.uint64(0) - carry  # all ones where the bits before this word are odd
    return w


def _prefix_bit(flat: U64, flat_pos: I64) -> U8:
    """Prefix parity at flat coordinates ``p * 64 * words + x`` of `_prefix_words` rows."""
    word = flat[flat_pos >> 6]
    word >>= (flat_pos & 63).view(np.uint64)  # flat positions are never negative
    bit: U8 = (word & np.uint64(1)).astype(np.uint8)
    return bit


def _top_parities(plan: CascadePlan, bits: U8, flat_prefix: U64, split: bool = True) -> U8:
    """Parity of every top-level block (global numbering) of `bits`.

    Needs the prefix rows of passes 0 and 1 in `flat_prefix`; leaves the blocks of split
    passes at 0 unless `split`.
    """
    off = plan.block_offset
    top = np.zeros(int(off[-1]), dtype=np.uint8)
    upto = int(off[2])
    base = plan.block_pass[:upto] * (64 * plan.words)
    ends = _prefix_bit(
        flat_prefix, np.concatenate((base + plan.block_start[:upto], base + plan.block_end[:upto]))
    )
    top[:upto] = ends[:upto] ^ ends[upto:]
    if not split:
        return top
    total = np.bitwise_xor.reduce(top[: off[1]])
    first = plan.split_first_parities(bits)
    top[off[2:-1]] = first
    second = off[2:-1] + 1
    two = second < off[3:]  # a 1-bit key has a single block per split pass
    top[second[two]] = first[two] ^ total
    return top


def _sorted_unique(x: I64) -> I64:
    if x.size < 2:
        return x
    x = np.sort(x)
    return x[np.concatenate(([True], x[1:] != x[:-1]))]


def _merge_sorted(sorted_keys: I64, new: I64) -> I64:
    """`sorted_keys` with `new` (any order) merged in, still sorted."""
    if new.size == 0:
        return sorted_keys
    new = np.sort(new)
    if sorted_keys.size == 0:
        return new
    return np.insert(sorted_keys, np.searchsorted(sorted_keys, new), new)


def _toggle(target: U8, idx: I64) -> None:
    """``target[i] ^= 1`` once per occurrence of ``i`` in `idx` (duplicates allowed)."""
    if idx.size < 1024:
        np.bitwise_xor.at(target, idx, 1)
    else:
        target ^= (np.bincount(idx, minlength=target.size) & 1).astype(np.uint8)


def _odd_multiplicity(x: I64) -> I64:
    """The distinct values occurring an odd number of times in `x`."""
    if x.size < 2:
        return x
    x = np.sort(x)
    head = np.concatenate(([True], x[1:] != x[:-1]))
    count = np.diff(np.concatenate((np.flatnonzero(head), [x.size])))
    odd: I64 = x[head][count & 1 == 1]
    return odd


# ---------------------------------------------------------------------------------------------
# Alice


class CascadeAlice:
    """Alice's side: holds the reference key and answers parity queries.

    She precomputes the parity of every top-level block and the prefix parities of her key in
    the orders of passes 0 and 1, so an answer takes a few gathers whatever the range lengths;
    a split pass is laid out the first time Bob asks about a range inside one of its blocks.
    """

    def __init__(
        self,
        key: NDArray[np.uint8],
        qber: float,
        seed: int,
        *,
        plan: CascadePlan | None = None,
    ) -> None:
        """`plan` may be given to share one with a `CascadeBob` in the same process."""
        bits = _check_key(key)
        self._n = int(bits.size)
        self._plan = plan = _check_plan(plan, self._n, qber, seed)
        self._bits = bits.copy()  # split passes are laid out from it later
        self._stride = 64 * plan.words
        self._prefix = np.zeros((plan.passes, plan.words), dtype=np.uint64)
        first = np.empty((2, self._n), np.uint8)
        first[0] = bits
        np.take(bits, plan.shuffle, out=first[1])
        self._prefix[:2] = _prefix_words(first, plan.words)
        self._flat = self._prefix.reshape(-1)
        self._laid_out = np.zeros(plan.passes, dtype=np.bool_)
        self._laid_out[:2] = True
        self._top = _top_parities(plan, bits, self._flat)
        self.disclosed_bits: int = 0
        """Parities revealed so far (sum of answer lengths)."""
        self.queries_answered: int = 0
        """Queries answered so far."""

    def answer(self, query: ParityQuery) -> NDArray[np.uint8]:
        """Parities of the queried ranges of Alice's key, in query order.

        Raises `CascadeProtocolError` for an empty query, an unknown pass or a range outside
        ``0 <= start < end <= n``.
        """
        if len(query) == 0:
            raise CascadeProtocolError("empty parity query")
        plan = self._plan
        p = query.pass_index.astype(np.int64)
        s = query.start.astype(np.int64)
        e = query.end.astype(np.int64)
        if int(p.max()) >= plan.passes:
            raise CascadeProtocolError("parity query names an unknown pass")
        if not bool(np.all(s < e)) or int(e.max()) > self._n:
            raise CascadeProtocolError("parity query range out of bounds")
        missing = ~self._laid_out[p]
        if self.queries_answered and not bool(missing.any()):
            return self._count(self._range_parity(p, s, e))
        # Whole blocks (all of the first query) come from the table of top-level parities;
        # any other range in a split pass not laid out yet makes Alice lay it out.
        block = plan.block_offset[p] + s // plan.block_size[p]
        whole = (s == plan.block_start[block]) & (e == plan.block_end[block])
        for q in np.unique(p[missing & ~whole]).tolist():
            row = plan.split_order(q - 2, self._bits)
            self._prefix[q] = _prefix_words(row[None, :], plan.words)[0]
            self._laid_out[q] = True
        out = self._top[block]
        ranges = np.flatnonzero(~whole)
        if ranges.size:
            out[ranges] = self._range_parity(p[ranges], s[ranges], e[ranges])
        return self._count(out)

    def _range_parity(self, p: I64, s: I64, e: I64) -> U8:
        base = p * self._stride
        ends = _prefix_bit(self._flat, np.concatenate((base + s, base + e)))
        return ends[: p.size] ^ ends[p.size :]

    def _count(self, out: U8) -> U8:
        self.disclosed_bits += int(out.size)
        self.queries_answered += 1
        return out


# ---------------------------------------------------------------------------------------------
# Bob


class CascadeBob:
    """Bob's side: holds the noisy key, drives the protocol and corrects his key.

    Call `next_query`, send it to Alice, hand her answers to `receive`; repeat until
    `next_query` returns ``None``, then read `key`.

    While many bisections are active each advances one level per round trip (one parity
    each).  Once at most ``n H2(q) / 1000`` remain Bob also asks for the left halves of both
    halves (two levels per round trip for 1.5 parities per level), and at most
    ``n H2(q) / 8000`` three levels (2.3 parities per level): the tail of the cascade and the
    bisections of the split passes are bound by round trips, not by disclosure.
    """

    def __init__(
        self,
        key: NDArray[np.uint8],
        qber: float,
        seed: int,
        *,
        plan: CascadePlan | None = None,
    ) -> None:
        """`plan` may be given to share one with a `CascadeAlice` in the same process."""
        bits = _check_key(key)
        n = self._n = int(bits.size)
        self._plan = plan = _check_plan(plan, n, qber, seed)
        P = plan.passes
        self._stride = stride = 64 * plan.words
        # Bob's key in the order of each laid-out pass, kept current as he flips bits (rows
        # of split passes are only filled if one of their blocks gets bisected).
        self._bits = np.empty((P, n), dtype=np.uint8)
        self._bits[0] = bits
        np.take(bits, plan.shuffle, out=self._bits[1])
        self._flat_bits = self._bits.reshape(-1)
        self._laid_out = np.zeros(P, dtype=np.bool_)
        self._laid_out[:2] = True
        # Prefix parities of a snapshot of those rows, and the flips made since (sorted flat
        # coordinates, see below): a flip toggles every prefix past it.
        self._prefix = np.zeros((P, plan.words), dtype=np.uint64)
        self._prefix[:2] = _prefix_words(self._bits[:2], plan.words)
        self._flat_prefix = self._prefix.reshape(-1)
        self._since: I64 = np.zeros(0, np.int64)
        self._since_limit = max(4096, n // 64)
        nblocks = int(plan.block_offset[-1])
        # (Split passes are only tracked once reached, see `_start_split_passes`.)
        self._bob_top = _top_parities(plan, bits, self._flat_prefix, split=False)
        self._alice_top = np.zeros(nblocks, np.uint8)
        self._odd = np.zeros(nblocks, np.uint8)  # Alice's block parity != Bob's current one
        # At most one bisection per block, its state kept per block: the current range
        # [lo, hi) in flat coordinates (position x of pass p is p * stride + x, the stride a
        # multiple of 64 above n, so a flat coordinate also addresses a prefix word), its heap
        # number in the block's bisection tree, and Alice's parity of it (the range is always
        # odd, so Bob's is the other one).
        self._busy = np.zeros(nblocks, np.bool_)
        self._base = plan.block_pass * stride
        self._lo = np.zeros(nblocks, np.int64)
        self._hi = np.zeros(nblocks, np.int64)
        self._heap = np.zeros(nblocks, np.int64)
        self._apar = np.zeros(nblocks, np.uint8)
        self._active: I64 = np.zeros(0, np.int64)  # blocks being bisected
        # Alice's parity of the left half of bisection-tree nodes, plus one (0: unknown);
        # block b's tree starts at _tree[b].  Mostly never touched (np.zeros maps lazily).
        slots = plan.tree_slots[plan.block_pass]
        self._tree = np.cumsum(slots) - slots
        self._known = np.zeros(int(slots.sum()) + 2, np.uint8)
        # Whether a block's bisection is its first one: then none of its parities is known.
        self._fresh = np.zeros(nblocks, np.bool_)
        self._bisected = np.zeros(nblocks, np.bool_)
        self._unit_blocks = bool(np.any(plan.block_end - plan.block_start == 1))
        # Each flip fixes a real error if Alice's parities are consistent, so no bit is ever
        # flipped twice; checking it also bounds the work whatever she answers.
        self._flipped = np.zeros(n, np.bool_)
        ideal = n * binary_entropy(_clamp_qber(qber))
        self._speculate = (int(ideal // _SPECULATE_2), int(ideal // _SPECULATE_3))
        self._current = 0
        self._started = False
        self._done = False
        self._pending: ParityQuery | None = None
        self._pending_slots: I64 | None = None
        self._top_mask: NDArray[np.bool_] | None = None
        self.disclosed_bits: int = 0
        """Parities Alice revealed so far (sum of answer lengths)."""
        self.round_trips: int = 0
        """Queries answered so far."""
        self.corrected_bits: int = 0
        """Bits flipped so far: Bob's estimate of the number of errors."""

    # -- public -----------------------------------------------------------------------------

    @property
    def key(self) -> NDArray[np.uint8]:
        """Bob's current key (a read-only view); reconciled once `next_query` returns None."""
        view: U8 = self._bits[0].view()
        view.flags.writeable = False
        return view

    @property
    def done(self) -> bool:
        """Whether reconciliation has finished."""
        return self._done

    def next_query(self) -> ParityQuery | None:
        """The next query to send to Alice, or ``None`` when reconciliation is finished.

        Calling it again before `receive` returns the same query.
        """
        if self._pending is not None:
            return self._pending
        if self._done:
            return None
        plan = self._plan
        if not self._started:
            mask = np.ones(plan.block_pass.size, np.bool_)
            mask[plan.block_offset[2:] - 1] = False  # inferred from the key's parity
            self._top_mask = mask
            query = ParityQuery(
                plan.block_pass[mask].astype(np.uint8),
                plan.block_start[mask].astype(np.uint32),
                plan.block_end[mask].astype(np.uint32),
            )
        else:
            query = self._bisection_query()
        self._pending = query
        return query

    def receive(self, parities: NDArray[np.uint8]) -> None:
        """Take Alice's answers to the last query (same order) and advance.

        Raises `CascadeProtocolError` if no query is outstanding, the answer does not fit it,
        or the answers contradict earlier ones; the session is then unusable.
        """
        query = self._pending
        if query is None:
            raise CascadeProtocolError("no parity query is outstanding")
        answer = np.asarray(parities)
        if answer.shape != (len(query),):
            raise CascadeProtocolError("parity answer does not match the query")
        if answer.dtype != np.uint8:
            if answer.dtype != np.bool_ and not np.issubdtype(answer.dtype, np.integer):
                raise CascadeProtocolError("parities must be 0/1 integers")
            answer = answer.astype(np.uint8)
        if answer.size and int(answer.max()) > 1:
            raise CascadeProtocolError("parities must be 0 or 1")
        self._pending = None
        self.round_trips += 1
        self.disclosed_bits += int(answer.size)
        if not self._started:
            self._started = True
            self._advance(self._take_top(answer))
        else:
            assert self._pending_slots is not None
            self._known[self._pending_slots] = answer + 1
            self._pending_slots = None
            self._advance(self._active)  # every active bisection just got its answer

    # -- queries ----------------------------------------------------------------------------

    def _bisection_query(self) -> ParityQuery:
        """Ask for the left half of every active range, and deeper when few are active."""
        g = self._active
        lo = self._lo[g]
        hi = self._hi[g]
        tree = self._tree[g]
        heap = self._heap[g]
        if g.size > self._speculate[0]:
            self._pending_slots = tree + heap
            return self._query(g, lo, hi)
        depth = 3 if g.size <= self._speculate[1] else 2
        self._fresh[g] = False  # deeper parities will be known
        los, his, blocks, slots = [lo], [hi], [g], [tree + heap]
        for _ in range(depth - 1):
            mid = lo + ((hi - lo + 1) >> 1)
            lo = np.concatenate((lo, mid))
            hi = np.concatenate((mid, hi))
            g = np.concatenate((g, g))
            tree = np.concatenate((tree, tree))
            heap = np.concatenate((2 * heap, 2 * heap + 1))
            inner = hi - lo > 1
            lo, hi, g, tree, heap = lo[inner], hi[inner], g[inner], tree[inner], heap[inner]
            ask = self._known[tree + heap] == 0
            los.append(lo[ask])
            his.append(hi[ask])
            blocks.append(g[ask])
            slots.append((tree + heap)[ask])
        self._pending_slots = np.concatenate(slots)
        return self._query(np.concatenate(blocks), np.concatenate(los), np.concatenate(his))

    def _query(self, g: I64, lo: I64, hi: I64) -> ParityQuery:
        """Ask for the left half of ranges [lo, hi) (flat coordinates) of blocks `g`."""
        start = lo - self._base[g]
        mid = start + ((hi - lo + 1) >> 1)
        return ParityQuery(
            self._plan.block_pass[g].astype(np.uint8),
            start.astype(np.uint32),
            mid.astype(np.uint32),
        )

    # -- state machine ----------------------------------------------------------------------

    def _prefix_at(self, flat_pos: I64) -> U8:
        """Parity of Bob's current bits before `flat_pos`, up to a constant per pass."""
        bit = _prefix_bit(self._flat_prefix, flat_pos)
        if self._since.size:
            bit ^= (np.searchsorted(self._since, flat_pos) & 1).astype(np.uint8)
        return bit

    def _take_top(self, answer: U8) -> I64:
        plan = self._plan
        assert self._top_mask is not None
        top = self._alice_top
        top[self._top_mask] = answer
        off = plan.block_offset
        total = np.bitwise_xor.reduce(top[: off[1]])
        top[off[2:] - 1] = np.bitwise_xor.reduceat(top, off[1:-1]) ^ total
        self._odd = top ^ self._bob_top
        return self._spawn(np.arange(off[0], off[1], dtype=np.int64))

    def _snapshot(self) -> None:
        live = np.flatnonzero(self._laid_out)
        self._prefix[live] = _prefix_words(self._bits[live], self._plan.words)
        self._since = np.zeros(0, np.int64)

    def _lay_out(self, p: int) -> None:
        plan = self._plan
        self._bits[p] = plan.split_order(p - 2, self._bits[0])
        self._prefix[p] = _prefix_words(self._bits[p][None, :], plan.words)[0]
        self._laid_out[p] = True

    def _spawn(self, blocks: I64) -> I64:
        """Start a bisection in each of `blocks` that is odd and not already being searched.

        Returns the new ones that can take a step without asking Alice.
        """
        blocks = blocks[(self._odd[blocks] == 1) & ~self._busy[blocks]]
        if blocks.size == 0:
            return blocks
        blocks = _sorted_unique(blocks)
        plan = self._plan
        p = plan.block_pass[blocks]
        if not bool(self._laid_out[p].all()):
            for q in np.unique(p[~self._laid_out[p]]).tolist():
                self._lay_out(q)
        base = self._base[blocks]
        lo = base + plan.block_start[blocks]
        hi = base + plan.block_end[blocks]
        self._lo[blocks] = lo
        self._hi[blocks] = hi
        self._heap[blocks] = 1
        self._apar[blocks] = self._alice_top[blocks]
        self._busy[blocks] = True
        fresh = ~self._bisected[blocks]
        self._fresh[blocks] = fresh
        self._bisected[blocks] = True
        self._active = np.concatenate((self._active, blocks))
        ready = ~fresh
        ready[ready] = self._known[self._tree[blocks[ready]] + 1] != 0
        if self._unit_blocks:
            ready |= hi - lo == 1
        return blocks[ready]

    def _advance(self, todo: I64) -> None:
        """Take every step that needs no answer from Alice; then a query is due or Bob is done.

        `todo` holds blocks whose bisection can step (next parity known, or one bit left).
        """
        plan = self._plan
        while True:
            if todo.size:
                todo = self._step(todo)
            elif self._active.size:
                return
            elif self._current + 1 < plan.passes:
                self._current += 1
                if self._current == 2:
                    self._start_split_passes()
                off = plan.block_offset
                todo = self._spawn(
                    np.arange(off[self._current], off[self._current + 1], dtype=np.int64)
                )
            else:
                self._done = True
                return

    def _step(self, g: I64) -> I64:
        """Advance the bisections of blocks `g` by one level; flip the errors found.

        Every active range is odd (Alice's and Bob's parities differ), so exactly one of its
        halves is.  Returns the blocks that can step again without asking Alice.
        """
        lo = self._lo[g]
        hi = self._hi[g]
        found = g[:0]
        if self._unit_blocks:
            roots = hi - lo == 1  # one-bit blocks, started because odd: wrong bits
            if bool(roots.any()):
                found = g[roots]
                keep = ~roots
                g, lo, hi = g[keep], lo[keep], hi[keep]
        length = hi - lo
        size_left = (length + 1) >> 1
        mid = lo + size_left
        k = g.size
        pre = self._prefix_at(np.concatenate((lo, mid)))
        tree = self._tree[g]
        heap = self._heap[g]
        alice_left = self._known[tree + heap] - 1
        # Branch-free: `right` is 1 where the left half is even, so the right one is odd.
        right = (alice_left == pre[:k] ^ pre[k:]).view(np.uint8)
        new_lo = lo + right * size_left
        new_hi = mid + right * (hi - mid)
        heap = 2 * heap + right
        self._lo[g] = new_lo
        self._hi[g] = new_hi
        self._heap[g] = heap
        self._apar[g] = alice_left ^ (right & self._apar[g])
        last = new_hi - new_lo == 1
        # Where an earlier bisection of the block (or a deeper question) revealed the next
        # parity, go on locally.  Slot 0 of a tree is never known: single bits look there.
        old = ~self._fresh[g]
        todo = g[:0]
        if bool(old.any()):
            todo = g[old][self._known[tree[old] + (heap * ~last)[old]] != 0]
        if bool(last.any()):
            found = np.concatenate((found, g[last]))
        if found.size == 0:
            return todo
        self._busy[found] = False
        self._active = self._active[self._busy[self._active]]
        spawned = self._flip(self._plan.block_pass[found], self._lo[found] - self._base[found])
        # Ranges the flips made even are gone (or restarted: `_spawn` reports those).
        todo = todo[self._busy[todo] & (self._heap[todo] > 1)]
        return _sorted_unique(np.concatenate((todo, spawned)))

    def _flip(self, passes: I64, positions: I64) -> I64:
        """Flip the bits found at `positions` of `passes` and cascade the parity changes.

        Returns the newly started bisections that can step without asking Alice.
        """
        plan = self._plan
        n = self._n
        orig = plan.originals(passes, positions)
        if int(passes.min()) != int(passes.max()):  # two passes may find the same bit
            orig = _sorted_unique(orig)
        if bool(self._flipped[orig].any()):
            raise CascadeProtocolError("Alice's parities are inconsistent")
        self._flipped[orig] = True
        # Split passes are only tracked once reached (see `_start_split_passes`).
        tracked = plan.passes if self._current >= 2 else 2
        pos = np.empty((tracked, orig.size), np.int64)
        pos[0] = orig
        pos[1] = plan.shuffled_positions(orig)
        if tracked > 2:
            pos[2:] = plan.split_positions(orig, np.arange(2, tracked, dtype=np.int64))
        live = np.flatnonzero(self._laid_out)
        self._flat_bits[(live[:, None] * n + pos[live]).ravel()] ^= 1
        flat = pos + np.arange(tracked)[:, None] * self._stride
        if self._since.size + live.size * orig.size > self._since_limit:
            self._snapshot()
        else:
            self._since = _merge_sorted(self._since, flat[live].ravel())
        blocks = (
            plan.block_offset[:tracked, None] + pos // plan.block_size[:tracked, None]
        ).ravel()
        flat = flat.ravel()
        _toggle(self._odd, blocks)
        self.corrected_bits += int(orig.size)
        # A bisection range holding an odd number of the flipped bits turns even: it is
        # dropped, and its block bisected afresh if still odd.
        busy = self._busy[blocks]
        restart = blocks[:0]
        if bool(busy.any()):
            b = blocks[busy]
            f = flat[busy]
            restart = _odd_multiplicity(b[(self._lo[b] <= f) & (f < self._hi[b])])
            if restart.size:
                self._busy[restart] = False
                self._active = self._active[self._busy[self._active]]
        touched = blocks[blocks < plan.block_offset[self._current + 1]]
        return self._spawn(np.concatenate((touched, restart)))

    def _start_split_passes(self) -> None:
        """Refresh Bob's parities of the split passes' blocks, not tracked until now."""
        plan = self._plan
        off = plan.block_offset
        bits = self._bits[0]
        first = plan.split_first_parities(bits)
        total = np.bitwise_xor.reduce(np.bitwise_count(np.packbits(bits))) & 1
        bob = np.empty(int(off[-1] - off[2]), np.uint8)
        starts = off[2:-1] - off[2]
        bob[starts] = first
        second = starts + 1
        two = second < off[3:] - off[2]
        bob[second[two]] = first[two] ^ total
        self._odd[off[2] :] = self._alice_top[off[2] :] ^ bob


# ---------------------------------------------------------------------------------------------
# In-process driver


@dataclass(frozen=True, eq=False)
class CascadeResult:
    """Outcome of `reconcile`."""

    key: NDArray[np.uint8] = field(repr=False)
    """Bob's reconciled key."""
    disclosed_bits: int
    """Parities Alice revealed."""
    round_trips: int
    """Query/answer exchanges."""
    corrected_bits: int
    """Bits Bob flipped."""
    efficiency: float
    """disclosed / (n H2(q)), q the actual error rate (`qber` if the keys were equal)."""
    qber_actual: float
    """Fraction of bits that differed before reconciliation."""
    residual_errors: int
    """Bits still differing afterwards (only an in-process driver can know this)."""


def reconcile(
    alice_key: NDArray[np.uint8], bob_key: NDArray[np.uint8], qber: float, seed: int
) -> CascadeResult:
    """Run Cascade between two keys in one process, serialising messages as a network would."""
    a = _check_key(alice_key)
    b = _check_key(bob_key)
    if a.size != b.size:
        raise ValueError("keys differ in length")
    n = int(a.size)
    plan = CascadePlan(n, qber, seed)
    alice = CascadeAlice(a, qber, seed, plan=plan)
    bob = CascadeBob(b, qber, seed, plan=plan)
    while (query := bob.next_query()) is not None:
        answer = alice.answer(ParityQuery.from_bytes(query.to_bytes()))
        bob.receive(unpack_parities(pack_parities(answer), len(query)))
    errors = int(np.count_nonzero(a != b))
    ideal = n * binary_entropy(errors / n if errors else qber)
    key = bob.key.copy()
    return CascadeResult(
        key=key,
        disclosed_bits=bob.disclosed_bits,
        round_trips=bob.round_trips,
        corrected_bits=bob.corrected_bits,
        efficiency=bob.disclosed_bits / ideal if ideal > 0 else math.inf,
        qber_actual=errors / n,
        residual_errors=int(np.count_nonzero(key != a)),
    )
