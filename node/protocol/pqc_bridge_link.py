"""The pqc-bridge link kind: key from ML-KEM-768 exchanges, for islands no fibre joins.

No quantum channel: every `interval_s` the transmitter makes a fresh ML-KEM-768 key pair and
offers the encapsulation key over the link's authenticated classical channel (`KemOffer`); the
receiver encapsulates a shared secret to it and answers the ciphertext (`KemCapsule`), keeping
the secret in memory only; the transmitter decapsulates, expands the secret into the block
(`core/pqc_kem.expand`, bound to the link and block IDs), stores it pending and says so
(`KemCommit`); the receiver then stores the same block and answers `Stored`, and the
transmitter confirms. A session that ends in between leaves the block pending at the
transmitter only, settled at the next Hello as for any kind: never a block at one end only.
The first bits of each block refill the authentication pads of both directions, the rest is
key for relays and applications.

Such key is as strong as ML-KEM-768 (computational), not information-theoretically secure as
a QKD link's: status and telemetry carry the kind and say so (`source`). The secret, the private
key and the block's bits are never logged or sent anywhere but into the store.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..core.pqc_kem import Decapsulator, encapsulate, expand
from ..errors import ProtocolError
from ..store.key_store import KeyStoreDb
from .conversation import Conversation
from .link import SessionReceiver, SessionTransmitter, store_block
from .link_messages import Stored
from .link_transport import PhotonSink

__all__ = [
    "REFILL_PADS",
    "SOURCE",
    "KemCapsule",
    "KemCommit",
    "KemOffer",
    "PqcBridgeReceiver",
    "PqcBridgeTransmitter",
]

REFILL_PADS = 4  # pads refilled each way per block: an exchange uses two transmitter pads
SOURCE = "ML-KEM-768 over the classical channel (computational security, no quantum channel)"


@dataclass(frozen=True, slots=True)
class KemOffer:
    block_id: str = ""
    public_key: bytes = b""
    block_bits: int = 0
    refill_pads_forward: int = 0
    refill_pads_backward: int = 0


@dataclass(frozen=True, slots=True)
class KemCapsule:
    block_id: str = ""
    ciphertext: bytes = b""


@dataclass(frozen=True, slots=True)
class KemCommit:
    block_id: str = ""


def _context(link_id: str, block_id: str) -> str:
    return f"{link_id}|{block_id}"


class PqcBridgeTransmitter(SessionTransmitter):
    """Offers a key pair per block, decapsulates, stores pending, commits."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stats.source = SOURCE

    async def distil(self, conv: Conversation, photons: PhotonSink) -> None:
        settings = self.config.pqc_bridge
        bits = settings.block_bits
        refill = 64 * 2 * REFILL_PADS
        frame = await self.store.run(lambda db: db.get_meta("next_frame"))
        while True:
            await self.while_store_full(conv)
            conv.frame = frame
            block_id = f"{self.link_id}/{frame:08d}-{uuid.uuid4().hex[:8]}"
            pair = Decapsulator()
            await conv.send(KemOffer(block_id, pair.public_key, bits, REFILL_PADS, REFILL_PADS))
            capsule = await conv.expect(KemCapsule)
            if capsule.block_id != block_id:
                raise ProtocolError("KemCapsule for another block")
            try:
                secret = pair.open(capsule.ciphertext)
            except ValueError:
                raise ProtocolError("a malformed ML-KEM ciphertext") from None
            block = expand(secret, _context(self.link_id, block_id), bits)
            del secret, pair
            refills = (REFILL_PADS, REFILL_PADS)
            await store_block(self.store, block_id, frame, block, refills, pending=True)
            await conv.send(KemCommit(block_id))
            if (await conv.expect(Stored)).block_id != block_id:
                raise ProtocolError("the receiver acknowledged another block")
            await self.store.run(partial(KeyStoreDb.confirm_blocks, block_ids=[block_id]))
            await self.auth.persist()
            await self.refresh_store_level()
            self.stats.record_block(bits, refill)
            frame += 1
            await self.store.run(partial(KeyStoreDb.set_meta, name="next_frame", value=frame))
            await self.clock.sleep(settings.interval_s)


class PqcBridgeReceiver(SessionReceiver):
    """Encapsulates to each offer, and stores the block once the transmitter holds it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stats.source = SOURCE

    async def answer(self, conv: Conversation) -> None:
        while True:
            message = await conv.receive(idle=True)
            offer = message.payload
            if not isinstance(offer, KemOffer):
                raise ProtocolError(f"expected KemOffer, got {type(offer).__name__}")
            conv.frame = message.frame
            refill = (offer.refill_pads_forward, offer.refill_pads_backward)
            if offer.block_bits % 8 or offer.block_bits <= 64 * sum(refill):
                raise ProtocolError("KemOffer: a block that cannot hold its pad refills")
            if offer.block_bits > 1_048_576:
                raise ProtocolError("KemOffer: a block of more than 2^20 bits")
            try:
                secret, ciphertext = encapsulate(offer.public_key)
            except ValueError:
                raise ProtocolError("KemOffer: a malformed ML-KEM-768 public key") from None
            await conv.send(KemCapsule(offer.block_id, ciphertext))
            commit = await conv.expect(KemCommit)
            if commit.block_id != offer.block_id:
                raise ProtocolError("KemCommit for another block")
            block = expand(secret, _context(self.link_id, offer.block_id), offer.block_bits)
            del secret
            await store_block(
                self.store, offer.block_id, message.frame, block, refill, pending=False
            )
            await conv.send(Stored(block_id=offer.block_id))
            await self.auth.persist()
            await self.refresh_store_level()
            self.stats.record_block(offer.block_bits, 64 * sum(refill))
