"""The codec between relay and routing messages (`protocol/relay_messages.py`) and protobuf.

Headers and payloads become the bytes a relay frame authenticates (`RELAY_CODEC`, the
protocol's `RelayCodec`); frames, acknowledgements and link-state adverts map field for field
to the messages of `relay.proto` that the KeyRelay service carries.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from qkdnet.v1 import relay_pb2

from ..protocol.relay_messages import (
    LinkState,
    LinkStateAdvert,
    RelayAck,
    RelayFrame,
    RelayHeader,
    RelayPayload,
)
from ..store.key_store import KeyRange

__all__ = [
    "RELAY_CODEC",
    "ProtobufRelayCodec",
    "ack_from_wire",
    "ack_to_wire",
    "advert_from_wire",
    "advert_to_wire",
    "frame_from_wire",
    "frame_to_wire",
]


class ProtobufRelayCodec:
    """The `RelayCodec` of the node."""

    def encode_header(self, header: RelayHeader) -> bytes:
        return relay_pb2.RelayHeader(
            frame_id=header.frame_id,
            transaction_id=header.transaction_id,
            route=header.route,
            hop=header.hop,
            link_key=[
                relay_pb2.KeyBits(block_id=r.block_id, offset=r.offset, length=r.length)
                for r in header.link_key
            ],
        ).SerializeToString()

    def decode_header(self, data: bytes) -> RelayHeader:
        wire = relay_pb2.RelayHeader()
        try:
            wire.ParseFromString(data)
        except DecodeError:
            raise ValueError("relay header is not a valid protobuf") from None
        return RelayHeader(
            frame_id=wire.frame_id,
            transaction_id=wire.transaction_id,
            route=tuple(wire.route),
            hop=int(wire.hop),
            link_key=tuple(
                KeyRange(k.block_id, int(k.offset), int(k.length)) for k in wire.link_key
            ),
        )

    def encode_payload(self, payload: RelayPayload) -> bytes:
        return relay_pb2.RelayPayload(
            transaction_id=payload.transaction_id,
            origin=payload.origin,
            master_sae=payload.master_sae,
            slave_saes=payload.slave_saes,
            target_saes=payload.target_saes,
            key_bits=payload.key_bits,
            key_uuids=payload.key_uuids,
            share=payload.share,
            shares=payload.shares,
            share_set=payload.share_set,
            ttl_seconds=payload.ttl_seconds,
        ).SerializeToString()

    def decode_payload(self, data: bytes) -> RelayPayload:
        wire = relay_pb2.RelayPayload()
        try:
            wire.ParseFromString(data)
        except DecodeError:
            raise ValueError("relay payload is not a valid protobuf") from None
        return RelayPayload(
            transaction_id=wire.transaction_id,
            origin=wire.origin,
            master_sae=wire.master_sae,
            slave_saes=tuple(wire.slave_saes),
            target_saes=tuple(wire.target_saes),
            key_bits=int(wire.key_bits),
            key_uuids=wire.key_uuids,
            keys=wire.keys,
            share=int(wire.share),
            shares=int(wire.shares),
            share_set=wire.share_set,
            ttl_seconds=int(wire.ttl_seconds),
        )


RELAY_CODEC = ProtobufRelayCodec()


def frame_to_wire(frame: RelayFrame) -> relay_pb2.RelayFrame:
    return relay_pb2.RelayFrame(
        header=frame.header, payload=frame.payload, ciphertext=frame.ciphertext, tag=frame.tag
    )


def frame_from_wire(wire: relay_pb2.RelayFrame) -> RelayFrame:
    return RelayFrame(
        header=wire.header, payload=wire.payload, ciphertext=wire.ciphertext, tag=wire.tag
    )


def ack_to_wire(ack: RelayAck) -> relay_pb2.RelayAck:
    return relay_pb2.RelayAck(
        transaction_id=ack.transaction_id, route=ack.route, hop_micros=ack.hop_micros
    )


def ack_from_wire(wire: relay_pb2.RelayAck) -> RelayAck:
    return RelayAck(
        transaction_id=wire.transaction_id,
        route=tuple(wire.route),
        hop_micros=tuple(int(us) for us in wire.hop_micros),
    )


def advert_to_wire(advert: LinkStateAdvert) -> relay_pb2.LinkStateAdvert:
    return relay_pb2.LinkStateAdvert(
        origin=advert.origin,
        sequence=advert.sequence,
        links=[
            relay_pb2.LinkState(
                peer=s.peer,
                up=s.up,
                bits_out=s.bits_out,
                bits_in=s.bits_in,
                kind=s.kind,
                rate_out_bps=s.rate_out_bps,
            )
            for s in advert.links
        ],
        saes=advert.saes,
    )


def advert_from_wire(wire: relay_pb2.LinkStateAdvert) -> LinkStateAdvert:
    return LinkStateAdvert(
        origin=wire.origin,
        sequence=int(wire.sequence),
        links=tuple(
            LinkState(
                peer=s.peer,
                up=s.up,
                bits_out=int(s.bits_out),
                bits_in=int(s.bits_in),
                kind=s.kind,
                rate_out_bps=int(s.rate_out_bps),
            )
            for s in wire.links
        ),
        saes=tuple(wire.saes),
    )
