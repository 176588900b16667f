"""The codec between a link's domain messages (`protocol/link_messages.py`) and protobuf.

Every payload class has a message of the same name and fields in `link.proto`, carried in the
`payload` oneof of `ClassicalMessage` under the name `PAYLOAD_NAMES` gives; envelopes and photon
chunks map field for field. Decoding a body that is not a ClassicalMessage, or carries no
payload, raises ProtocolError: the receiver refuses it as malformed.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from google.protobuf.message import DecodeError

from qkdnet.v1 import link_pb2

from ..errors import ProtocolError
from ..link_kinds import LinkKind
from ..protocol import link_messages as m
from ..protocol.external_kme_link import ExternalKeys
from ..protocol.pqc_bridge_link import KemCapsule, KemCommit, KemOffer

__all__ = [
    "BB84",
    "LINK_CODEC",
    "PAYLOAD_NAMES",
    "ProtobufLinkCodec",
    "envelope_from_wire",
    "envelope_to_wire",
    "photons_from_wire",
    "photons_to_wire",
]

PAYLOAD_NAMES: dict[type[Any], str] = {
    m.Hello: "hello",
    m.HelloReply: "hello_reply",
    m.RoundStart: "round_start",
    m.SiftAnnouncement: "sift",
    m.SiftReply: "sift_reply",
    m.EstimationData: "estimation",
    m.EstimationResult: "estimation_result",
    m.ParityRequest: "parity_request",
    m.ParityReply: "parity_reply",
    m.Verification: "verification",
    m.VerificationResult: "verification_result",
    m.Amplification: "amplification",
    m.Stored: "stored",
    m.Abort: "abort",
    ExternalKeys: "external_keys",
    KemOffer: "kem_offer",
    KemCapsule: "kem_capsule",
    KemCommit: "kem_commit",
}
_PAYLOAD_CLASSES = {name: cls for cls, name in PAYLOAD_NAMES.items()}
_FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in PAYLOAD_NAMES}


def _from_wire(cls: type[Any], wire: Any) -> Any:
    values = {}
    for name in _FIELDS[cls]:
        value = getattr(wire, name)
        values[name] = tuple(value) if not isinstance(value, str | bytes | int | float) else value
    return cls(**values)


class ProtobufLinkCodec:
    """The `MessageCodec` of the node: a ClassicalMessage as `link_pb2.ClassicalMessage`."""

    def encode(self, message: m.ClassicalMessage) -> bytes:
        payload = message.payload
        cls = type(payload)
        wire_payload = getattr(link_pb2, cls.__name__)(
            **{name: getattr(payload, name) for name in _FIELDS[cls]}
        )
        wire = link_pb2.ClassicalMessage(
            link_id=message.link_id,
            sender=message.sender,
            pad_index=message.pad_index,
            frame=message.frame,
            **{PAYLOAD_NAMES[cls]: wire_payload},
        )
        return wire.SerializeToString()

    def decode(self, body: bytes) -> m.ClassicalMessage:
        wire = link_pb2.ClassicalMessage()
        try:
            wire.ParseFromString(body)
        except DecodeError:
            raise ProtocolError("classical message is not a valid protobuf") from None
        kind = wire.WhichOneof("payload")
        if kind is None:
            raise ProtocolError("classical message without a payload")
        cls = _PAYLOAD_CLASSES[kind]
        return m.ClassicalMessage(
            link_id=wire.link_id,
            sender=wire.sender,
            frame=wire.frame,
            payload=_from_wire(cls, getattr(wire, kind)),
            pad_index=wire.pad_index,
        )

    def payload_name(self, payload: object) -> str:
        return PAYLOAD_NAMES[type(payload)]


LINK_CODEC = ProtobufLinkCodec()


def envelope_to_wire(envelope: m.Envelope) -> link_pb2.Envelope:
    return link_pb2.Envelope(body=envelope.body, tag=envelope.tag)


def envelope_from_wire(wire: link_pb2.Envelope) -> m.Envelope:
    return m.Envelope(body=wire.body, tag=wire.tag)


_CHUNK_FIELDS = tuple(f.name for f in fields(m.PhotonChunk))


def photons_to_wire(chunk: m.PhotonChunk) -> link_pb2.PhotonChunk:
    return link_pb2.PhotonChunk(**{name: getattr(chunk, name) for name in _CHUNK_FIELDS})


def photons_from_wire(wire: link_pb2.PhotonChunk) -> m.PhotonChunk:
    return m.PhotonChunk(**{name: getattr(wire, name) for name in _CHUNK_FIELDS})


def _bb84() -> LinkKind:
    from ..protocol.receiver import ReceiverLink
    from ..protocol.transmitter import TransmitterLink

    return LinkKind("bb84", TransmitterLink, ReceiverLink, LINK_CODEC)


BB84 = _bb84()
"""Decoy-state BB84 (`protocol/transmitter.py`, `protocol/receiver.py`) over this codec: the
`bb84` entry point of `qkdnet.link_kinds`."""
