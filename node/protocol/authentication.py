"""Wegman-Carter authentication of a link's classical messages.

tag = h_k(body) XOR r, where h_k is the polynomial hash over GF(2^64) of `polynomial_hash.py`
with a hash key k kept for the life of the link, and r an 8-byte one-time pad used for exactly
one message. Each direction of a link has its own pad index space; the sender uses its pads in
order and the receiver refuses any pad index at or below the last it accepted, which makes a
replayed message fail. The first pads and the hash key come from the pre-shared secret the
orchestrator provisions; later pads come from distilled key (see `key_store.py`).

Sender and receiver counters are persisted, the sender's ahead of use (in leases), so that a
restarted node never uses a pad twice.
"""

from __future__ import annotations

from dataclasses import replace

from ..core.polynomial_hash import PolynomialHash, tags_equal, wegman_carter_tag
from ..errors import AuthenticationError, ProtocolError
from ..link_secret import PAD_BYTES, PreSharedSecret
from ..store.key_store import KeyStore, KeyStoreDb
from .link_messages import ClassicalMessage, Envelope, MessageCodec

__all__ = ["LinkAuthenticator"]
_LEASE = 256


class LinkAuthenticator:
    """Seals outgoing and opens incoming classical messages for one end of one link.

    `direction` is the index space this end sends in: 0 for the transmitter, 1 for the receiver.
    `codec` turns messages into the bytes the tags cover (the wire contract).
    """

    def __init__(self, store: KeyStore, hash_key: int, direction: int, codec: MessageCodec) -> None:
        self._store = store
        self.codec = codec
        self._hash = PolynomialHash(hash_key)
        self._send_dir = direction
        self._recv_dir = 1 - direction
        self._send_next = 0
        self._lease_end = 0
        self._recv_next = 0
        # Ready pads per direction as (first index, bytes) runs, so that sealing and opening a
        # message needs no trip to the store's thread; refreshed whenever pads change.
        self._pads: dict[int, list[tuple[int, bytes]]] = {0: [], 1: []}

    @classmethod
    async def load(
        cls, store: KeyStore, psk: PreSharedSecret, direction: int, codec: MessageCodec
    ) -> LinkAuthenticator:
        """Initialise the store from the pre-shared secret on first use, then load counters."""

        def load(db: KeyStoreDb) -> tuple[int, int, int]:
            if not db.initialised():
                db.initialise(psk.hash_key, {0: psk.forward_pads, 1: psk.backward_pads})
            send_lease = db.get_meta(f"send_lease_{direction}")
            recv_next = db.get_meta(f"recv_next_{1 - direction}")
            return db.hash_key(), send_lease, recv_next

        hash_key, lease, recv_next = await store.run(load)
        auth = cls(store, hash_key, direction, codec)
        # Start after everything that may have been leased before a restart.
        auth._send_next = auth._lease_end = lease
        auth._recv_next = recv_next
        await auth.reload_pads()
        return auth

    async def reload_pads(self) -> None:
        """Refresh the in-memory copy of the ready pads (after blocks were stored or settled)."""

        def read(db: KeyStoreDb) -> dict[int, list[tuple[int, bytes]]]:
            return {d: db.ready_pad_runs(d) for d in (0, 1)}

        self._pads = await self._store.run(read)

    def _pad(self, direction: int, index: int) -> bytes | None:
        for start, data in self._pads[direction]:
            if start <= index < start + len(data) // PAD_BYTES:
                offset = (index - start) * PAD_BYTES
                return data[offset : offset + PAD_BYTES]
        return None

    @property
    def send_next(self) -> int:
        return self._send_next

    async def available_pads(self) -> tuple[int, int]:
        """Ready pads left (send direction, receive direction)."""

        def end(direction: int) -> int:
            runs = self._pads[direction]
            return max((s + len(d) // PAD_BYTES for s, d in runs), default=0)

        return (
            max(0, end(self._send_dir) - self._send_next),
            max(0, end(self._recv_dir) - self._recv_next),
        )

    async def seal(self, message: ClassicalMessage) -> Envelope:
        """Give `message` the next pad index, serialise it and tag it."""
        index = self._send_next
        if index >= self._lease_end:
            new_end = index + _LEASE

            def lease(db: KeyStoreDb) -> None:
                db.set_meta(f"send_lease_{self._send_dir}", new_end)

            await self._store.run(lease)
            self._lease_end = new_end
        pad = self._pad(self._send_dir, index)
        if pad is None:
            raise AuthenticationError(
                f"no authentication pad left to send (index {index})", reason="no_pad"
            )
        self._send_next = index + 1
        body = self.codec.encode(replace(message, pad_index=index))
        return Envelope(body=body, tag=wegman_carter_tag(self._hash, pad, body))

    async def open(self, envelope: Envelope) -> ClassicalMessage:
        """Parse and authenticate an envelope; raises ProtocolError or AuthenticationError."""
        message = self.codec.decode(envelope.body)
        if len(envelope.tag) != PAD_BYTES:
            raise ProtocolError(f"tag of {len(envelope.tag)} bytes (expected {PAD_BYTES})")
        index = message.pad_index
        if index < self._recv_next:
            raise AuthenticationError(
                f"replayed message (pad index {index}, expected at least {self._recv_next})",
                reason="replay",
            )
        pad = self._pad(self._recv_dir, index)
        if pad is None:
            raise AuthenticationError(f"no pad for index {index}", reason="no_pad")
        if not tags_equal(wegman_carter_tag(self._hash, pad, envelope.body), envelope.tag):
            raise AuthenticationError("wrong authentication tag", reason="bad_tag")
        self._recv_next = index + 1
        return message

    async def persist(self) -> None:
        """Save the receive counter, forget used pads and reload the ready ones."""
        recv_next, send_next = self._recv_next, self._send_next

        def save(db: KeyStoreDb) -> dict[int, list[tuple[int, bytes]]]:
            db.set_meta(f"recv_next_{self._recv_dir}", recv_next)
            db.forget_pads_below(self._recv_dir, recv_next)
            db.forget_pads_below(self._send_dir, send_next)
            return {d: db.ready_pad_runs(d) for d in (0, 1)}

        self._pads = await self._store.run(save)
