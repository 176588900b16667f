"""The messages of key relay and routing, as the protocols see them: frozen dataclasses.

A relayed key travels as a `RelayFrame` hop by hop (`relay.py`): the encoded `RelayHeader`
(route, hop, which link key pads it) and `RelayPayload` (transaction, SAEs, key IDs; the keys
themselves travel padded, in `ciphertext`), under one Wegman-Carter tag. The header and the
payload are bytes because the tag covers exactly the bytes sent; a `RelayCodec` (the node's is
`qkdnet.node.edge.relay_codec.RELAY_CODEC`, protobuf as in `relay.proto`) encodes and decodes
them. Nodes flood `LinkStateAdvert`s of their links for routing (`link_state.py`, `routing.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..store.key_store import KeyRange

__all__ = [
    "LinkState",
    "LinkStateAdvert",
    "RelayAck",
    "RelayCodec",
    "RelayFrame",
    "RelayHeader",
    "RelayPayload",
]


@dataclass(frozen=True, slots=True)
class RelayHeader:
    """Where a frame is on its route, and the link key (ranges of the link's store) that pads
    and authenticates it on this hop."""

    frame_id: str
    transaction_id: str
    route: tuple[str, ...]
    hop: int
    link_key: tuple[KeyRange, ...]


@dataclass(frozen=True, slots=True)
class RelayPayload:
    """What a relay delivers to a target node: keys (`keys`, `key_bits` each, concatenated)
    with their IDs (16-byte UUIDs, concatenated) for the target SAEs. `share` of `shares`
    (in `share_set`) when the keys are split as XOR shares over disjoint routes."""

    transaction_id: str
    origin: str
    master_sae: str
    slave_saes: tuple[str, ...]
    target_saes: tuple[str, ...]
    key_bits: int
    key_uuids: bytes
    keys: bytes = b""
    share: int = 0
    shares: int = 1
    share_set: str = ""
    ttl_seconds: int = 0


@dataclass(frozen=True, slots=True)
class RelayFrame:
    """One hop of a relay: encoded header and payload (without the keys), the padded keys, and
    the 8-byte tag over all three."""

    header: bytes
    payload: bytes
    ciphertext: bytes
    tag: bytes


@dataclass(frozen=True, slots=True)
class RelayAck:
    """The answer once the keys are stored at the target: the route from the answering node
    on, and how long each hop took (µs)."""

    transaction_id: str
    route: tuple[str, ...]
    hop_micros: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LinkState:
    """One link as its end advertises it: up or not, and the key it holds each way (bits)."""

    peer: str
    up: bool
    bits_out: int
    bits_in: int
    kind: str = ""  # the link kind ("" from nodes that predate it: taken as QKD)
    rate_out_bps: int = 0  # secret key the link adds per second towards the peer


@dataclass(frozen=True, slots=True)
class LinkStateAdvert:
    """A node's links and SAEs; `sequence` (nanoseconds of its clock) orders its adverts."""

    origin: str
    sequence: int
    links: tuple[LinkState, ...]
    saes: tuple[str, ...]


class RelayCodec(Protocol):
    """How relay headers and payloads become the bytes a frame's tag covers, and back.

    Decoding raises ValueError when the bytes are not one."""

    def encode_header(self, header: RelayHeader) -> bytes: ...

    def decode_header(self, data: bytes) -> RelayHeader: ...

    def encode_payload(self, payload: RelayPayload) -> bytes:
        """The payload without its keys (they travel padded, apart)."""
        ...

    def decode_payload(self, data: bytes) -> RelayPayload: ...
