"""Combiners of a QKD key with a post-quantum (ML-KEM) shared secret: the key stays secret while
either part does.

- `hybrid_key` (qkdnet's, "qkdnet-hybrid-v1"): HKDF-SHA-256 (NIST SP 800-56C two-step, ETSI
  TS 103 744's CatKDF shape) with `salt = SHA-256(ciphertext)`, `IKM = ss_mlkem || k_qkd` (the
  approved secret first, the QKD key as the auxiliary secret), `info = "qkdnet-hybrid-v1" ||
  key ID (16 bytes)`, as many output bytes as the QKD key has. One encapsulation serves a batch
  of keys; the key ID in `info` keeps their outputs apart.
- `arnika_key`: the combiner arnika feeds WireGuard with, HKDF-SHA3-256 over
  `qkd || pqc`, no salt, no info, 32 bytes; for applications that combine themselves.

Both are fixed by test vectors in the test suite.
"""

from __future__ import annotations

import hashlib
import uuid

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["HYBRID_LABEL", "arnika_key", "hybrid_key"]

HYBRID_LABEL = b"qkdnet-hybrid-v1"
_MAX_BYTES = 255 * 32  # HKDF-SHA-256's longest output


def hybrid_key(shared_secret: bytes, qkd_key: bytes, ciphertext: bytes, key_id: str) -> bytes:
    """The hybrid key replacing `qkd_key` (same length) under `key_id`."""
    if not 1 <= len(qkd_key) <= _MAX_BYTES:
        raise ValueError(f"a hybrid key is 1 to {_MAX_BYTES} bytes, not {len(qkd_key)}")
    salt = hashlib.sha256(ciphertext).digest()
    info = HYBRID_LABEL + uuid.UUID(key_id).bytes
    kdf = HKDF(algorithm=hashes.SHA256(), length=len(qkd_key), salt=salt, info=info)
    return kdf.derive(shared_secret + qkd_key)


def arnika_key(qkd_key: bytes, pqc_key: bytes) -> bytes:
    """arnika's 32-byte WireGuard PSK from a QKD key and a PQC key."""
    kdf = HKDF(algorithm=hashes.SHA3_256(), length=32, salt=None, info=b"")
    return kdf.derive(qkd_key + pqc_key)
