"""Cascade reconciliation: correctness, efficiency, message parsing, protocol accounting."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from qkdnet.node.core.cascade import (
    QBER_FLOOR,
    CascadeAlice,
    CascadeBob,
    CascadePlan,
    CascadeProtocolError,
    ParityQuery,
    binary_entropy,
    block_sizes,
    pack_parities,
    reconcile,
    unpack_parities,
)


def _frame(n: int, qber: float, seed: int) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    rng = np.random.default_rng(seed)
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    errors = (rng.random(n) < qber).astype(np.uint8)
    return alice, alice ^ errors


def _run(
    alice_key: NDArray[np.uint8], bob_key: NDArray[np.uint8], qber: float, seed: int
) -> tuple[CascadeAlice, CascadeBob, list[int]]:
    """Both roles built independently, as on two nodes; returns the answer sizes."""
    alice = CascadeAlice(alice_key, qber, seed)
    bob = CascadeBob(bob_key, qber, seed)
    sizes = []
    asked: set[tuple[int, int, int]] = set()
    while (query := bob.next_query()) is not None:
        wire = ParityQuery.from_bytes(query.to_bytes())
        ranges = set(
            zip(wire.pass_index.tolist(), wire.start.tolist(), wire.end.tolist(), strict=True)
        )
        assert len(ranges) == len(wire)
        assert not ranges & asked  # no parity is ever asked twice
        asked |= ranges
        answer = alice.answer(wire)
        sizes.append(int(answer.size))
        bob.receive(unpack_parities(pack_parities(answer), len(query)))
    return alice, bob, sizes


@pytest.mark.parametrize("qber", [0.01, 0.02, 0.05])
def test_reconcile_corrects_frames(qber: float) -> None:
    ok = 0
    for i in range(30):
        a, b = _frame(10_000, qber, seed=100 + i)
        result = reconcile(a, b, qber, seed=i)
        ok += result.residual_errors == 0
        assert result.corrected_bits >= 1
        assert result.efficiency < 1.3
    assert ok >= 29


def test_efficiency_at_two_percent() -> None:
    efficiencies = []
    for i in range(6):
        a, b = _frame(20_000, 0.02, seed=200 + i)
        result = reconcile(a, b, 0.02, seed=i)
        assert result.residual_errors == 0
        efficiencies.append(result.efficiency)
    assert float(np.mean(efficiencies)) <= 1.15


@pytest.mark.parametrize(("n", "qber"), [(30_001, 0.03), (200_000, 0.01)])
def test_roles_on_separate_nodes_agree(n: int, qber: float) -> None:
    a, b = _frame(n, qber, seed=7)
    alice, bob, sizes = _run(a, b, qber, seed=99)
    assert np.array_equal(bob.key, a)
    assert bob.done
    assert bob.corrected_bits == int(np.count_nonzero(a != b))
    assert bob.disclosed_bits == alice.disclosed_bits == sum(sizes)
    assert bob.round_trips == alice.queries_answered == len(sizes)
    assert CascadePlan(n, qber, 99).sizes == block_sizes(n, qber)


def test_zero_errors_flips_nothing() -> None:
    a, _ = _frame(12_345, 0.0, seed=3)
    result = reconcile(a, a.copy(), 0.02, seed=5)
    assert result.corrected_bits == 0
    assert result.residual_errors == 0
    assert np.array_equal(result.key, a)
    assert result.round_trips == 1  # the top-level parities show every block even
    assert result.qber_actual == 0.0
    sizes = block_sizes(12_345, 0.02)
    blocks = sum(-(-12_345 // k) for k in sizes)
    assert result.disclosed_bits == blocks - (len(sizes) - 1)  # last blocks are inferred


def test_errors_in_the_short_last_block() -> None:
    n = 10_007  # prime: every pass ends with a short block
    a, _ = _frame(n, 0.0, seed=11)
    b = a.copy()
    k0 = block_sizes(n, 0.02)[0]
    assert n % k0 != 0
    wrong = [n - 1, n - 3, 0, n // 2, n // 2 + 1]
    b[wrong] ^= 1
    result = reconcile(a, b, 0.02, seed=2)
    assert result.residual_errors == 0
    assert result.corrected_bits == len(wrong)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1_001, 4_099])
def test_odd_key_lengths(n: int) -> None:
    for seed in range(3):
        a, b = _frame(n, 0.05, seed=seed)
        if n <= 3:
            b = a.copy()
            b[seed % n] ^= 1
        result = reconcile(a, b, 0.05, seed=seed)
        assert result.residual_errors == 0
        assert result.corrected_bits == int(np.count_nonzero(a != b))


def test_long_key_uses_chunked_shuffle() -> None:
    n = (1 << 18) + 3
    plan = CascadePlan(n, 0.02, 1)
    assert np.array_equal(np.sort(plan.shuffle), np.arange(n))
    sample = np.arange(0, n, 997, dtype=np.int64)
    assert np.array_equal(plan.shuffled_positions(plan.shuffle[sample]), sample)
    a, b = _frame(n, 0.02, seed=4)
    result = reconcile(a, b, 0.02, seed=1)
    assert result.residual_errors == 0
    assert result.efficiency < 1.15


def test_block_sizes() -> None:
    sizes = block_sizes(100_000, 0.02)
    assert sizes[0] == 32
    assert sizes[1] >= sizes[0]
    assert len(sizes) == 2 + 13
    assert all(k == 50_000 for k in sizes[2:])
    assert block_sizes(100_000, 0.0) == block_sizes(100_000, QBER_FLOOR)
    assert block_sizes(100_000, 0.011) == block_sizes(100_000, 0.011)
    assert block_sizes(11, 0.001) == [11, 11] + [6] * 10
    assert len(block_sizes(10**6, 0.02)) == 2 + 16
    with pytest.raises(ValueError, match="positive"):
        block_sizes(0, 0.02)
    with pytest.raises(ValueError, match="finite"):
        block_sizes(100, float("nan"))


def test_binary_entropy() -> None:
    assert binary_entropy(0.0) == 0.0
    assert binary_entropy(1.0) == 0.0
    assert binary_entropy(0.5) == pytest.approx(1.0)
    assert binary_entropy(0.02) == pytest.approx(0.1414, abs=1e-4)


def test_query_round_trips_through_bytes() -> None:
    query = ParityQuery(
        np.array([0, 1, 11], np.uint8),
        np.array([0, 5, 70_000], np.uint32),
        np.array([3, 9, 4_000_000_000], np.uint32),
    )
    data = query.to_bytes()
    assert len(data) == 8 + 9 * 3
    back = ParityQuery.from_bytes(data)
    assert back.pass_index.dtype == np.uint8
    assert back.start.dtype == back.end.dtype == np.uint32
    assert np.array_equal(back.pass_index, query.pass_index)
    assert np.array_equal(back.start, query.start)
    assert np.array_equal(back.end, query.end)


def test_malformed_query_bytes_are_rejected() -> None:
    good = ParityQuery(
        np.array([0, 1], np.uint8), np.array([0, 4], np.uint32), np.array([4, 8], np.uint32)
    ).to_bytes()
    reversed_range = bytearray(good)
    reversed_range[8 + 2 : 8 + 6] = (100).to_bytes(4, "little")
    bad = [
        b"",
        good[:7],
        good[:-1],
        good + b"\x00",
        b"XX" + good[2:],
        good[:2] + b"\x07" + good[3:],
        bytes(reversed_range),
        good[:4] + (2**31).to_bytes(4, "little") + good[8:],
    ]
    for data in bad:
        with pytest.raises(CascadeProtocolError):
            ParityQuery.from_bytes(data)
    with pytest.raises(CascadeProtocolError):
        ParityQuery(np.zeros(2, np.uint8), np.zeros(3, np.uint32), np.ones(3, np.uint32))


def test_out_of_range_queries_are_rejected() -> None:
    a, _ = _frame(1_000, 0.0, seed=1)
    alice = CascadeAlice(a, 0.02, 1)
    passes = len(block_sizes(1_000, 0.02))

    def q(p: int, s: int, e: int) -> ParityQuery:
        return ParityQuery(
            np.array([p], np.uint8), np.array([s], np.uint32), np.array([e], np.uint32)
        )

    for query in (q(passes, 0, 1), q(0, 0, 1_001), q(1, 5, 5), q(0, 7, 3), q(255, 0, 1)):
        with pytest.raises(CascadeProtocolError):
            alice.answer(query)
    empty = ParityQuery(np.zeros(0, np.uint8), np.zeros(0, np.uint32), np.zeros(0, np.uint32))
    with pytest.raises(CascadeProtocolError):
        alice.answer(empty)
    assert alice.disclosed_bits == 0
    # Any in-range range is fine, including inside split passes not laid out yet.
    parity = alice.answer(q(passes - 1, 10, 500))
    assert parity.shape == (1,)
    assert alice.disclosed_bits == 1


def test_parities_pack_and_unpack() -> None:
    bits = np.array([1, 0, 1, 1, 0, 0, 0, 1, 1], np.uint8)
    packed = pack_parities(bits)
    assert len(packed) == 2
    assert np.array_equal(unpack_parities(packed, 9), bits)
    assert unpack_parities(b"", 0).size == 0
    bad = ((packed, 8), (packed, 17), (packed[:1], 9), (b"\x80\x01", 9), (b"", -1))
    for data, count in bad:
        with pytest.raises(CascadeProtocolError):
            unpack_parities(data, count)


def test_bob_rejects_answers_that_do_not_fit() -> None:
    a, b = _frame(2_000, 0.03, seed=8)
    bob = CascadeBob(b, 0.03, 4)
    with pytest.raises(CascadeProtocolError):
        bob.receive(np.zeros(1, np.uint8))  # nothing asked yet
    query = bob.next_query()
    assert query is not None
    assert bob.next_query() is query  # asking again repeats the outstanding query
    for wrong in (np.zeros(len(query) + 1, np.uint8), np.full(len(query), 2, np.uint8)):
        with pytest.raises(CascadeProtocolError):
            bob.receive(wrong)
    with pytest.raises(CascadeProtocolError):
        bob.receive(np.zeros(len(query), np.float64))
    assert bob.round_trips == 0
    alice = CascadeAlice(a, 0.03, 4)
    bob.receive(alice.answer(query).astype(np.int64))  # any 0/1 integers will do
    assert bob.round_trips == 1


def test_inconsistent_answers_end_or_raise() -> None:
    """Whatever Alice answers, Bob finishes or gives up; he never loops for ever."""
    rng = np.random.default_rng(5)
    for seed in range(5):
        _, b = _frame(3_000, 0.05, seed=seed)
        bob = CascadeBob(b, 0.05, seed)
        rounds = 0
        try:
            while (query := bob.next_query()) is not None:
                bob.receive(rng.integers(0, 2, len(query), dtype=np.uint8))
                rounds += 1
                assert rounds < 10_000
        except CascadeProtocolError:
            pass


def test_bad_inputs() -> None:
    a, _ = _frame(100, 0.0, seed=0)
    with pytest.raises(ValueError, match="0 or 1"):
        CascadeBob(np.array([0, 1, 2], np.uint8), 0.02, 0)
    with pytest.raises(ValueError, match="non-empty"):
        CascadeAlice(np.zeros(0, np.uint8), 0.02, 0)
    with pytest.raises(ValueError, match="1-D"):
        CascadeAlice(np.zeros((4, 4), np.uint8), 0.02, 0)
    with pytest.raises(ValueError, match="other parameters"):
        CascadeAlice(a, 0.02, 0, plan=CascadePlan(100, 0.02, 1))
    with pytest.raises(ValueError, match="length"):
        reconcile(a, a[:-1], 0.02, 0)
    result = reconcile(a.astype(bool), a.astype(np.int64), 0.02, 0)
    assert result.residual_errors == 0
    bob = CascadeBob(a, 0.02, 0)
    with pytest.raises(ValueError, match="read-only"):
        bob.key[0] = 1
