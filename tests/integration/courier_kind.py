"""A test double link kind, "courier": written as a new link kind would be, and nothing else.

It is a protocol module (the two `Courier*` ends, against the ports of
`qkdnet.node.protocol.link`) and an edge adapter (`CourierCodec`, its wire encoding: JSON), put
together as a `LinkKind`. No quantum channel and no secrecy: the transmitter draws random bits
and sends them over the authenticated conversation, the receiver stores them. Whatever a real
kind does between Hello and the stored block, the rest — sessions, cuts, pending blocks, pads,
key stores, relay, routing, the ETSI API — is the node's, unchanged.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from dataclasses import dataclass, fields, is_dataclass
from functools import partial
from typing import Any

import numpy as np

from qkdnet.node.errors import ProtocolError
from qkdnet.node.link_kinds import LinkKind
from qkdnet.node.protocol.conversation import Conversation
from qkdnet.node.protocol.link import SessionReceiver, SessionTransmitter, store_block
from qkdnet.node.protocol.link_messages import (
    ClassicalMessage,
    Hello,
    HelloReply,
    Stored,
)
from qkdnet.node.protocol.link_transport import PhotonSink
from qkdnet.node.store.key_store import KeyStoreDb

__all__ = ["COURIER"]

_BITS = 16_384  # per block
_PADS = 64  # refilled each way from every block


@dataclass(frozen=True, slots=True)
class Courier:
    """Transmitter -> receiver: a block of key as it is, and how many pads to cut from it."""

    block_id: str
    bits: bytes
    refill_forward: int
    refill_backward: int


# -- the protocol module ------------------------------------------------------------------------


class CourierTransmitter(SessionTransmitter):
    async def distil(self, conv: Conversation, photons: PhotonSink) -> None:
        frame = await self.store.run(lambda db: db.get_meta("next_frame"))
        while True:
            conv.frame = frame
            bits = np.unpackbits(np.frombuffer(secrets.token_bytes(_BITS // 8), np.uint8))
            block_id = f"{self.link_id}/{frame:08d}-{uuid.uuid4().hex[:8]}"
            await store_block(self.store, block_id, frame, bits, (_PADS, _PADS), pending=True)
            await conv.send(Courier(block_id, np.packbits(bits).tobytes(), _PADS, _PADS))
            if (await conv.expect(Stored)).block_id != block_id:
                raise ProtocolError("receiver acknowledged another block")
            await self.store.run(partial(KeyStoreDb.confirm_blocks, block_ids=[block_id]))
            await self.auth.persist()
            await self.refresh_store_level()
            self.stats.record_frame(_BITS, _BITS, _BITS)
            self.stats.record_key(
                reconciled=_BITS,
                errors=0,
                disclosed=0,
                ideal_disclosed=0.0,
                secret=_BITS - 128 * _PADS,
                auth=128 * _PADS,
            )
            frame += 1
            await self.store.run(partial(KeyStoreDb.set_meta, name="next_frame", value=frame))
            await self.clock.sleep(0.05)


class CourierReceiver(SessionReceiver):
    async def answer(self, conv: Conversation) -> None:
        while True:
            message = await conv.receive(idle=True)
            courier = message.payload
            if not isinstance(courier, Courier):
                raise ProtocolError(f"expected Courier, got {type(courier).__name__}")
            conv.frame = message.frame
            bits = np.unpackbits(np.frombuffer(courier.bits, np.uint8))
            refill = (courier.refill_forward, courier.refill_backward)
            await store_block(
                self.store, courier.block_id, message.frame, bits, refill, pending=False
            )
            await conv.send(Stored(block_id=courier.block_id))
            await self.auth.persist()
            await self.refresh_store_level()
            self.stats.record_frame(_BITS, _BITS, _BITS)


# -- the edge adapter ---------------------------------------------------------------------------

_PAYLOADS: dict[str, type[Any]] = {
    "hello": Hello,
    "hello_reply": HelloReply,
    "courier": Courier,
    "stored": Stored,
}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, tuple):
        return list(value)
    return value


def _typed(value: Any) -> Any:
    if isinstance(value, dict):
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return tuple(value)
    return value


class CourierCodec:
    """The courier's messages as JSON: the `MessageCodec` of the kind."""

    def payload_name(self, payload: object) -> str:
        return next(name for name, cls in _PAYLOADS.items() if isinstance(payload, cls))

    def encode(self, message: ClassicalMessage) -> bytes:
        payload = message.payload
        assert is_dataclass(payload)
        assert not isinstance(payload, type)
        body = {f.name: _plain(getattr(payload, f.name)) for f in fields(payload)}
        return json.dumps(
            {
                "link_id": message.link_id,
                "sender": message.sender,
                "frame": message.frame,
                "pad_index": message.pad_index,
                "payload": {self.payload_name(payload): body},
            }
        ).encode()

    def decode(self, body: bytes) -> ClassicalMessage:
        try:
            data = json.loads(body)
            ((name, values),) = data["payload"].items()
            payload = _PAYLOADS[name](**{k: _typed(v) for k, v in values.items()})
            return ClassicalMessage(
                link_id=data["link_id"],
                sender=data["sender"],
                frame=data["frame"],
                payload=payload,
                pad_index=data["pad_index"],
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProtocolError(f"not a courier message: {exc}") from None


COURIER = LinkKind("courier", CourierTransmitter, CourierReceiver, CourierCodec())
