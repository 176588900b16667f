"""The messages of a link session, as the protocol sees them: plain frozen dataclasses.

One class per step of a round (see `link.py` for who sends what, and when); a
`ClassicalMessage` carries one of them with the link, the sender, the frame and the pad index
its authentication tag used. On the wire each is the message of the same name in
`proto/qkdnet/v1/link.proto`, with the same field names; `qkdnet.node.edge.link_codec` turns
one into the other. Bulk arrays travel as bytes in the little-endian layouts documented there
(`core/wire.py` packs and unpacks them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "Abort",
    "Amplification",
    "ClassicalMessage",
    "Envelope",
    "EstimationData",
    "EstimationResult",
    "Hello",
    "HelloReply",
    "MessageCodec",
    "ParityReply",
    "ParityRequest",
    "Payload",
    "PhotonChunk",
    "RoundStart",
    "SiftAnnouncement",
    "SiftReply",
    "Stored",
    "Verification",
    "VerificationResult",
]


@dataclass(frozen=True, slots=True)
class Hello:
    """Transmitter -> receiver at the start of a session: the blocks it holds as pending, and
    the digest of the link parameters both ends must agree on."""

    pending_blocks: tuple[str, ...] = ()
    parameters_digest: bytes = b""


@dataclass(frozen=True, slots=True)
class HelloReply:
    """Receiver -> transmitter: which of the pending blocks the receiver holds."""

    held_blocks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RoundStart:
    pulses: int = 0
    detections: int = 0


@dataclass(frozen=True, slots=True)
class SiftAnnouncement:
    """Receiver -> transmitter: its bases of every detection, and the detected slots."""

    slot_deltas: bytes = b""
    basis: bytes = b""
    detections: int = 0


@dataclass(frozen=True, slots=True)
class SiftReply:
    """Transmitter -> receiver: its bases and intensity classes of the detected slots, and the
    public seed choosing the parameter-estimation sample."""

    basis: bytes = b""
    intensity_class: bytes = b""
    sample_seed: int = 0
    sample_fraction: float = 0.0


@dataclass(frozen=True, slots=True)
class EstimationData:
    """Receiver -> transmitter: its bits at every disclosed position."""

    bits: bytes = b""
    count: int = 0


@dataclass(frozen=True, slots=True)
class EstimationResult:
    proceed: bool = False
    abort_reason: str = ""
    qber_estimate: float = 0.0
    cascade_seed: int = 0
    key_bits: int = 0


@dataclass(frozen=True, slots=True)
class ParityRequest:
    """Receiver -> transmitter: a batch of Cascade parity questions; `done` when finished."""

    query: bytes = b""
    done: bool = False


@dataclass(frozen=True, slots=True)
class ParityReply:
    parities: bytes = b""
    count: int = 0


@dataclass(frozen=True, slots=True)
class Verification:
    """Transmitter -> receiver: the verification hash key and its tag of its key."""

    hash_key: int = 0
    tag: int = 0


@dataclass(frozen=True, slots=True)
class VerificationResult:
    match: bool = False
    corrected_bits: int = 0


@dataclass(frozen=True, slots=True)
class Amplification:
    """Transmitter -> receiver: privacy amplification and commit."""

    toeplitz_seed: bytes = b""
    output_bits: int = 0
    block_id: str = ""
    refill_pads_forward: int = 0
    refill_pads_backward: int = 0


@dataclass(frozen=True, slots=True)
class Stored:
    block_id: str = ""


@dataclass(frozen=True, slots=True)
class Abort:
    reason: str = ""


Payload = (
    Hello
    | HelloReply
    | RoundStart
    | SiftAnnouncement
    | SiftReply
    | EstimationData
    | EstimationResult
    | ParityRequest
    | ParityReply
    | Verification
    | VerificationResult
    | Amplification
    | Stored
    | Abort
)


@dataclass(frozen=True, slots=True)
class ClassicalMessage:
    """One authenticated classical message. `pad_index` is the index of the one-time pad its
    tag used, in the sender's direction: strictly increasing, so a replay is refused."""

    link_id: str
    sender: str
    frame: int
    payload: object  # one of `Payload` for BB84; a link kind brings its own (link_kinds.py)
    pad_index: int = 0


@dataclass(frozen=True, slots=True)
class Envelope:
    """A classical message as it travels: its encoded `body` and the 8-byte Wegman-Carter tag
    of that body."""

    body: bytes
    tag: bytes


@dataclass(frozen=True, slots=True)
class PhotonChunk:
    """Part of a frame on the emulated quantum channel: the detected slots (uint32 deltas from
    `first_slot`) among `pulses` pulses, and the state reaching the detector in each."""

    link_id: str
    frame: int
    first_slot: int
    pulses: int
    slot_deltas: bytes
    detections: int
    basis: bytes
    value: bytes
    frame_end: bool = False


class MessageCodec(Protocol):
    """How a `ClassicalMessage` becomes the bytes its tag covers, and back: the wire contract.

    The node's is `qkdnet.node.edge.link_codec.LINK_CODEC` (protobuf)."""

    def encode(self, message: ClassicalMessage) -> bytes: ...

    def decode(self, body: bytes) -> ClassicalMessage:
        """The message in `body`; ProtocolError when it is not one."""
        ...

    def payload_name(self, payload: object) -> str:
        """The name of the payload on the wire (`hello`, `sift`, ...)."""
        ...
