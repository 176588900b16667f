"""The pre-shared secret a link starts from, and its file format.

Both ends of a link begin with the same secret, provisioned by the orchestrator (`qkdnet
deploy` writes one file per link, readable by its owner only): the hash key of the link's
Wegman-Carter authentication and the first one-time pads of each direction
(`protocol/authentication.py`). The file is `QKDPSK01`, the hash key and the pad count (big
endian), then the forward and the backward pads.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

__all__ = ["PAD_BYTES", "PreSharedSecret", "read_psk"]

PAD_BYTES = 8  # one Wegman-Carter tag's pad
_PSK_MAGIC = b"QKDPSK01"


@dataclass(frozen=True)
class PreSharedSecret:
    """The secret both ends of a link start from: a hash key and pads for each direction."""

    hash_key: int
    forward_pads: bytes
    backward_pads: bytes

    @classmethod
    def generate(cls, pads_per_direction: int = 4096) -> PreSharedSecret:
        size = pads_per_direction * PAD_BYTES
        return cls(
            hash_key=secrets.randbits(64),
            forward_pads=secrets.token_bytes(size),
            backward_pads=secrets.token_bytes(size),
        )

    def to_bytes(self) -> bytes:
        count = len(self.forward_pads) // PAD_BYTES
        header = _PSK_MAGIC + struct.pack(">QI", self.hash_key, count)
        return header + self.forward_pads + self.backward_pads

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "pre-shared secret") -> PreSharedSecret:
        if len(data) < 20 or data[:8] != _PSK_MAGIC:
            raise ConfigError(f"{source}: not a qkdnet pre-shared secret file")
        hash_key, count = struct.unpack(">QI", data[8:20])
        body = data[20:]
        if count < 16 or len(body) != 2 * count * PAD_BYTES:
            raise ConfigError(f"{source}: truncated or corrupt pre-shared secret")
        half = count * PAD_BYTES
        return cls(hash_key=hash_key, forward_pads=body[:half], backward_pads=body[half:])


def read_psk(path: Path) -> PreSharedSecret:
    """Read a pre-shared secret file; ConfigError names the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: pre-shared secret file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read pre-shared secret ({exc.strerror})") from None
    return PreSharedSecret.from_bytes(data, str(path))
