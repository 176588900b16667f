"""Hybrid keys: ETSI 014 keys that combine the QKD key with an ML-KEM-768 secret between the two
edge KMEs, so that a key stays secret while either part does.

An SAE asks for them with the vendor extension `qkdnet_hybrid` of enc_keys. The master's KME
gets its keys as usual (pool or relay: QKD key, which every trusted node on the route has seen),
then encapsulates a fresh 32-byte secret to the ML-KEM-768 public key of the slave's KME (one
encapsulation per request), sends the ciphertext to that KME over the nodes' mutual-TLS gRPC
(`KemPeers.seal`), which decapsulates it and replaces its copies of the keys by
`hybrid_key(secret, key, ciphertext, key ID)` (`core/hybrid_kdf.py`) before anyone can fetch
them; the master's KME does the same to its copies and only then answers. A trusted relay that
learned the QKD key does not learn the hybrid key; a quantum computer that breaks ML-KEM does
not learn it either. Fail closed: if the slave's KME cannot take part, the keys are withdrawn and
the request fails (503); no key is ever handed out half-combined.

Each KME holds an ML-KEM-768 key pair in memory only, replaced every `rotate_s` (the previous
one still opens ciphertexts made to it); other KMEs fetch its public key (`KemPeers.kem_key`)
and keep it until a seal is refused for an unknown key (the KME restarted or rotated twice).
Private keys and shared secrets never leave this module: not in logs, not in telemetry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..core.hybrid_kdf import hybrid_key
from ..core.pqc_kem import Decapsulator, encapsulate
from ..errors import KeyStoreError, Reason, RelayError
from ..store.delivered_keys import DeliveredKeys, KeyNotFound
from .clock import SYSTEM_CLOCK, Clock

__all__ = ["HYBRID_EXTENSION", "HybridKeys", "HybridSeal", "KemPeers"]

# What enc_keys answers in key_container_extension for hybrid keys.
HYBRID_EXTENSION = {
    "kem": "ML-KEM-768",
    "kdf": "HKDF-SHA-256",
    "combiner": "qkdnet-hybrid-v1",
    "between": "the master's and the slave's KMEs",
}


@dataclass(frozen=True, slots=True)
class HybridSeal:
    """The ciphertext that turns keys at the slave's KME into hybrid keys."""

    master: str
    key_ids: tuple[str, ...]
    kem_key_id: str  # which public key of the slave's KME it was made to
    ciphertext: bytes


class KemPeers(Protocol):
    """The other KMEs' side of hybrid keys, by node ID (failures as `RelayError`)."""

    async def kem_key(self, node: str) -> tuple[str, bytes]:
        """(key ID, ML-KEM-768 public key) of `node`'s KME."""
        ...

    async def seal(self, node: str, seal: HybridSeal) -> int:
        """Have `node` replace its copies of the keys; how many it replaced. Refused with
        reason `unknown_kem_key` when the ciphertext was made to a key it no longer holds."""
        ...


class _KemPair:
    def __init__(self, born: float) -> None:
        self.decapsulator = Decapsulator()
        self.public_key = self.decapsulator.public_key
        self.key_id = hashlib.sha256(self.public_key).hexdigest()[:16]
        self.born = born


class HybridKeys:
    """The hybrid-key side of one KME."""

    def __init__(
        self,
        node_id: str,
        delivered: DeliveredKeys,
        peers: KemPeers,
        *,
        rotate_s: float = 3600.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.node_id = node_id
        self._delivered = delivered
        self._peers = peers
        self._rotate_s = rotate_s
        self._clock = clock
        self._current = _KemPair(clock.monotonic())
        self._previous: _KemPair | None = None
        # node -> its (key ID, public key) and when it was fetched
        self._known: dict[str, tuple[str, bytes, float]] = {}
        self.seals_made = 0
        self.seals_opened = 0

    def rotate_if_due(self) -> bool:
        """Replace the key pair once it is `rotate_s` old (the previous one still opens
        ciphertexts made to it); whether it did."""
        if self._clock.monotonic() - self._current.born < self._rotate_s:
            return False
        self._previous, self._current = self._current, _KemPair(self._clock.monotonic())
        return True

    async def rotate_forever(self, interval_s: float = 60.0) -> None:
        """`rotate_if_due` every `interval_s`, so that the key pair is renewed on time even
        while no one asks for it."""
        while True:
            await self._clock.sleep(interval_s)
            self.rotate_if_due()

    def public_key(self) -> tuple[str, bytes]:
        """(key ID, public key) others encapsulate to; renewed every `rotate_s`."""
        self.rotate_if_due()
        return self._current.key_id, self._current.public_key

    async def combine(
        self, master: str, node: str, keys: Sequence[tuple[str, bytes]]
    ) -> list[tuple[str, bytes]]:
        """At the master's KME: turn `keys` (committed at `node`, the slave's KME) into hybrid
        keys at both ends; the hybrid keys. RelayError (with the keys unchanged here and, as
        far as this KME knows, there) when `node` cannot take part."""
        ids = tuple(key_id for key_id, _ in keys)
        for attempt in range(2):
            key_id, public_key = await self._public_key_of(node, refresh=attempt > 0)
            secret, ciphertext = encapsulate(public_key)
            seal = HybridSeal(master, ids, key_id, ciphertext)
            try:
                if node == self.node_id:
                    replaced = await self.opened(self.node_id, seal)
                else:
                    replaced = await self._peers.seal(node, seal)
            except RelayError as exc:
                if exc.reason is Reason.UNKNOWN_KEM_KEY and attempt == 0:
                    continue  # it restarted or rotated twice: fetch its key again
                raise
            if replaced != len(ids):
                raise RelayError(f"{node} replaced {replaced} of {len(ids)} keys")
            self.seals_made += 1
            return [(key_id, hybrid_key(secret, key, ciphertext, key_id)) for key_id, key in keys]
        raise AssertionError("unreachable")

    async def _public_key_of(self, node: str, *, refresh: bool) -> tuple[str, bytes]:
        if node == self.node_id:
            return self.public_key()
        known = self._known.get(node)
        # A peer's key is fetched again after half a rotation: it stays among the two the
        # peer holds, and this KME follows the peer's renewals.
        if refresh or known is None or self._clock.monotonic() - known[2] > self._rotate_s / 2:
            key_id, public_key = await self._peers.kem_key(node)
            known = (key_id, public_key, self._clock.monotonic())
            self._known[node] = known
        return known[0], known[1]

    async def opened(self, sender: str, seal: HybridSeal) -> int:
        """At the slave's KME: the seal of `sender` (the keys' origin); how many keys it
        replaced (RelayError when it cannot)."""
        self.rotate_if_due()
        pair = next(
            (p for p in (self._current, self._previous) if p and p.key_id == seal.kem_key_id),
            None,
        )
        if pair is None:
            raise RelayError(f"no ML-KEM key {seal.kem_key_id} here", reason="unknown_kem_key")
        try:
            secret = pair.decapsulator.open(seal.ciphertext)
        except ValueError:
            raise RelayError("a malformed ML-KEM ciphertext", reason="malformed") from None
        ids = list(seal.key_ids)

        def derive(key_id: str, key: bytes) -> bytes:
            return hybrid_key(secret, key, seal.ciphertext, key_id)

        try:
            replaced = await self._delivered.run(
                lambda db: db.rekey(sender, seal.master, ids, derive)
            )
        except KeyNotFound as exc:
            raise RelayError(str(exc), reason="not_replaced") from None
        except KeyStoreError as exc:
            raise RelayError(f"the key store failed: {exc}") from None
        self.seals_opened += 1
        return replaced
