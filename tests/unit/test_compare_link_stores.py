"""Comparing both ends of a link through keyed digests, as `inspect` and the tests do."""

from __future__ import annotations

from typing import Any

from qkdnet.orchestrator.client.controller import NodeClient, compare_link_stores
from qkdnet.v1 import control_pb2


class _End:
    """A node's answer to KeyDigest, without the node."""

    def __init__(self, *blocks: tuple[str, int, int, bytes]) -> None:
        self.reply = control_pb2.KeyDigest(
            link_id="a--b",
            blocks=[
                control_pb2.BlockDigest(block_id=b, bits=n, consumed=c, digest=d, frame=i)
                for i, (b, n, c, d) in enumerate(blocks)
            ],
        )

    async def key_digest(self, link_id: str, nonce: bytes) -> Any:
        return self.reply


async def _compare(tx: _End, rx: _End) -> Any:
    return await compare_link_stores(tx, rx, "a--b")  # type: ignore[arg-type]


async def test_identical_blocks_match() -> None:
    end = _End(("b0", 8, 0, b"x"), ("b1", 8, 3, b"y"))
    result = await _compare(end, end)
    assert (result.match, result.common_blocks, result.common_bits) == (True, 2, 16)


async def test_different_key_is_a_mismatch_whatever_was_consumed() -> None:
    result = await _compare(_End(("b0", 8, 3, b"x")), _End(("b0", 8, 5, b"z")))
    assert not result.match
    assert "b0 differs" in result.detail
    both_used_up = await _compare(_End(("b0", 8, 8, b"x")), _End(("b0", 8, 8, b"z")))
    assert not both_used_up.match


async def test_a_block_used_up_at_one_end_only_is_a_relay_in_flight() -> None:
    tx = _End(("b0", 8, 8, b"\0"), ("b1", 8, 0, b"y"))  # b0 wiped: its last bits were sent
    rx = _End(("b0", 8, 4, b"x"), ("b1", 8, 0, b"y"))
    result = await _compare(tx, rx)
    assert (result.match, result.common_bits) == (True, 8)  # b0 is left out


def test_the_fake_has_the_client_method() -> None:
    assert hasattr(NodeClient, "key_digest")
