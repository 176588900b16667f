"""ML-KEM-768 (FIPS 203) key establishment and the expansion of its secret into key bits.

The pqc-bridge link kind (`protocol/pqc_bridge_link.py`) makes each block of key from one
ML-KEM-768 exchange: the transmitter offers a fresh encapsulation key, the receiver
encapsulates a 32-byte shared secret to it, the transmitter decapsulates it. `expand` turns
that secret into the block's bits with SHAKE-256, bound to the link and the block, so no two
blocks share bits. The security of such key is computational (it holds while ML-KEM does),
unlike a QKD link's: status and telemetry say so.

`cryptography` (OpenSSL 3.5+ inside its wheels) provides ML-KEM; nothing here does I/O.
"""

from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives.asymmetric import mlkem
from numpy.typing import NDArray

__all__ = [
    "CIPHERTEXT_BYTES",
    "PUBLIC_KEY_BYTES",
    "SECRET_BYTES",
    "Decapsulator",
    "encapsulate",
    "expand",
]

PUBLIC_KEY_BYTES = 1184
CIPHERTEXT_BYTES = 1088
SECRET_BYTES = 32


class Decapsulator:
    """A fresh ML-KEM-768 key pair: its public (encapsulation) key to offer, and `open` for the
    ciphertext that comes back. Its private key lives only in this object."""

    def __init__(self) -> None:
        self._key = mlkem.MLKEM768PrivateKey.generate()

    @property
    def public_key(self) -> bytes:
        return self._key.public_key().public_bytes_raw()

    def open(self, ciphertext: bytes) -> bytes:
        """The shared secret (ValueError for a ciphertext of the wrong length)."""
        return self._key.decapsulate(ciphertext)


def encapsulate(public_key: bytes) -> tuple[bytes, bytes]:
    """(shared secret, ciphertext) for an encapsulation key (ValueError when malformed)."""
    key = mlkem.MLKEM768PublicKey.from_public_bytes(public_key)
    secret, ciphertext = key.encapsulate()
    return secret, ciphertext


def expand(secret: bytes, context: str, bits: int) -> NDArray[np.uint8]:
    """`bits` key bits (one per byte, 0/1) from a shared secret, bound to `context` (the link
    and block IDs) with SHAKE-256."""
    if bits <= 0 or bits % 8:
        raise ValueError(f"bits must be a positive multiple of 8, not {bits}")
    stream = hashlib.shake_256(b"qkdnet pqc-bridge\0" + context.encode() + b"\0" + secret)
    return np.unpackbits(np.frombuffer(stream.digest(bits // 8), np.uint8))
