"""What crosses the QKD link two border nodes share: key values padded with its key.

When the two borders of a hand-over between domains (`interworking.BorderKms`) share a QKD
link, the key values of an ETSI GS QKD 020 transfer cross one-time-padded with that link's key,
under a Wegman-Carter tag that also covers who sends them to whom (`transfer_context`), and the
transfer names the link key it used in the mandatory extension `OTP_EXTENSION`: the 020
connection then carries no key in clear even for someone holding its TLS keys. A forged or
replayed transfer is refused without consuming link key, as a relay frame is (`KeyRelay`'s
one-hop `seal_hop` and `open_hop` do the work).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ..errors import RelayError
from .interworking_messages import ExtKey
from .relay_messages import RelayFrame

__all__ = ["OTP_EXTENSION", "HopCipher", "HopSealer", "LinkHopCipher", "transfer_context"]

# Extension names start with "E" + an IANA Private Enterprise Number; 32473 is the number
# RFC 5612 sets aside for documentation and examples, which an emulator's extension is.
OTP_EXTENSION = "E32473_qkdnet_link_otp"


def transfer_context(initiator: str, targets: Sequence[str], keys: Sequence[ExtKey]) -> bytes:
    """The bytes a link tag covers beside the keys: who, for whom, which IDs and sizes."""
    return json.dumps(
        [initiator, list(targets), [[k.key_id, len(k.value)] for k in keys]],
        separators=(",", ":"),
    ).encode()


class HopCipher(Protocol):
    """The QKD link the two borders share: one-time pad and tag with its key."""

    async def seal(self, context: bytes, keys: bytes) -> tuple[dict[str, str], bytes]:
        """`keys` padded with link key; the extension that tells the peer which key it was."""
        ...

    async def open(self, extension: Mapping[str, Any], context: bytes, ciphertext: bytes) -> bytes:
        """The keys `seal` padded (RelayError when the tag or anything else is wrong)."""
        ...


class LinkHopCipher:
    """`HopCipher` over the QKD link this border shares with the peer border (`KeyRelay`'s
    one-hop seal: one-time pad and Wegman-Carter tag with the link's key)."""

    def __init__(self, relay: HopSealer, peer_node: str) -> None:
        self._relay = relay
        self._peer = peer_node

    async def seal(self, context: bytes, keys: bytes) -> tuple[dict[str, str], bytes]:
        frame = await self._relay.seal_hop(self._peer, context, keys)
        extension = {
            "header": base64.b64encode(frame.header).decode(),
            "tag": base64.b64encode(frame.tag).decode(),
        }
        return extension, frame.ciphertext

    async def open(self, extension: Mapping[str, Any], context: bytes, ciphertext: bytes) -> bytes:
        try:
            header = base64.b64decode(str(extension["header"]), validate=True)
            tag = base64.b64decode(str(extension["tag"]), validate=True)
        except (KeyError, ValueError):
            raise RelayError(
                f"{OTP_EXTENSION} needs a base64 header and tag", reason="malformed"
            ) from None
        frame = RelayFrame(header=header, payload=b"", ciphertext=ciphertext, tag=tag)
        return await self._relay.open_hop(frame, self._peer, context)


class HopSealer(Protocol):
    """What `LinkHopCipher` needs of the relay (`KeyRelay.seal_hop`, `open_hop`)."""

    async def seal_hop(self, peer: str, context: bytes, keys: bytes) -> RelayFrame: ...

    async def open_hop(self, frame: RelayFrame, sender: str, context: bytes) -> bytes: ...
