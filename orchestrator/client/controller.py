"""The orchestrator's client for NodeControl, over mutual TLS with the orchestrator certificate."""

from __future__ import annotations

import os
from dataclasses import dataclass

from qkdnet.node.edge.grpc_dial import credentials_from_files, dial
from qkdnet.v1 import control_pb2, control_pb2_grpc

from ..plan.credentials import CertificatePaths

__all__ = ["LinkComparison", "NodeClient", "compare_link_stores"]


class NodeClient:
    """Talks to one node's NodeControl service."""

    def __init__(self, node_id: str, address: str, paths: CertificatePaths) -> None:
        self.node_id = node_id
        self._channel = dial(
            address, node_id, credentials_from_files(paths.ca, paths.cert, paths.key)
        )
        self._stub = control_pb2_grpc.NodeControlStub(self._channel)

    async def status(self, timeout: float = 5.0) -> control_pb2.NodeStatus:
        return await self._stub.GetStatus(control_pb2.StatusRequest(), timeout=timeout)

    async def key_digest(
        self, link_id: str, nonce: bytes, timeout: float = 10.0
    ) -> control_pb2.KeyDigest:
        request = control_pb2.KeyDigestRequest(link_id=link_id, nonce=nonce)
        return await self._stub.GetKeyDigest(request, timeout=timeout)

    async def close(self) -> None:
        await self._channel.close()


@dataclass(frozen=True)
class LinkComparison:
    """Both ends' stores compared through keyed digests."""

    match: bool
    common_blocks: int
    common_bits: int
    detail: str


async def compare_link_stores(
    transmitter: NodeClient, receiver: NodeClient, link_id: str
) -> LinkComparison:
    """Check that both ends hold identical key under the same block IDs.

    The receiver is asked first: every block it holds must then be at the transmitter (which
    stores first) with the same digest; blocks only the transmitter holds must be newer than
    anything the receiver had (a frame in flight), never older. A block that one end has used up
    (a store wipes used-up blocks) and the other not yet is skipped: a relay is on its way.
    """
    nonce = os.urandom(32)
    rx = await receiver.key_digest(link_id, nonce)
    tx = await transmitter.key_digest(link_id, nonce)
    tx_blocks = {b.block_id: b for b in tx.blocks}
    rx_last = max((b.frame for b in rx.blocks), default=-1)
    bits = 0
    for block in rx.blocks:
        other = tx_blocks.get(block.block_id)
        if other is None:
            return LinkComparison(False, 0, 0, f"{block.block_id} missing at the transmitter")
        if other.bits != block.bits:
            return LinkComparison(False, 0, 0, f"{block.block_id} differs between the ends")
        if other.digest != block.digest:
            if (other.consumed >= other.bits) != (block.consumed >= block.bits):
                # Used up (and so wiped) at one end only: a relay drawing on its last bits is
                # on its way between the two. Not comparable now, not a difference.
                continue
            return LinkComparison(False, 0, 0, f"{block.block_id} differs between the ends")
        bits += block.bits
    rx_ids = {b.block_id for b in rx.blocks}
    for block in tx.blocks:
        if block.block_id not in rx_ids and block.frame <= rx_last and not block.pending:
            return LinkComparison(False, 0, 0, f"{block.block_id} missing at the receiver")
    return LinkComparison(True, len(rx.blocks), bits, "identical")
