"""Tampering with a link's classical messages on purpose: an emulated active attacker.

The controller arms a `TamperFault` on one end of a link (NodeControl's InjectFault); the next
matching message that end sends is corrupted on its way out — a wrong tag, a replay of the
previous envelope, a truncated or a garbled body — and the peer must refuse it (its link counts
the refusal and ends the session). `TamperingStream` sits between the link's conversation and
its transport (`link_grpc.classical_session`), so the link itself never knows: the same
protocol code runs under attack in the node and in memory (`qkdnet.node.testing`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from ..protocol.link_messages import Envelope, MessageCodec
from ..protocol.link_transport import Duplex

__all__ = ["TAMPER_KINDS", "ClassicalFaults", "TamperFault", "TamperingStream"]

TAMPER_KINDS = ("bad_tag", "replay", "truncate", "garble")


@dataclass(frozen=True)
class TamperFault:
    """Corrupt the next outgoing message (of payload `target`, a wire name such as `sift`,
    when given)."""

    kind: str
    target: str = ""

    def __post_init__(self) -> None:
        if self.kind not in TAMPER_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {', '.join(TAMPER_KINDS)}")


class ClassicalFaults:
    """The fault armed on one end of one link; it stays armed across sessions until used."""

    def __init__(self) -> None:
        self.armed: TamperFault | None = None

    def arm(self, fault: TamperFault) -> None:
        self.armed = fault


def tampered(envelope: Envelope, kind: str, previous: Envelope | None) -> Envelope:
    """What an attacker of `kind` sends in place of `envelope`."""
    if kind == "bad_tag":
        tag = bytearray(envelope.tag)
        tag[0] ^= 0x01
        return replace(envelope, tag=bytes(tag))
    if kind == "replay":
        return previous if previous is not None else envelope
    if kind == "truncate":
        return replace(envelope, body=envelope.body[: max(1, len(envelope.body) // 2)])
    return replace(envelope, body=os.urandom(len(envelope.body)))


class TamperingStream:
    """A `Duplex` that corrupts the outgoing message `faults` asks for, once."""

    def __init__(self, stream: Duplex, faults: ClassicalFaults, codec: MessageCodec) -> None:
        self._stream = stream
        self._faults = faults
        self._codec = codec
        self._last: Envelope | None = None

    async def read(self) -> Envelope | None:
        return await self._stream.read()

    async def write(self, message: Envelope) -> None:
        fault = self._faults.armed
        if fault is not None and (
            not fault.target
            or self._codec.payload_name(self._codec.decode(message.body).payload) == fault.target
        ):
            self._faults.armed = None
            await self._stream.write(tampered(message, fault.kind, self._last))
            return
        self._last = message
        await self._stream.write(message)
