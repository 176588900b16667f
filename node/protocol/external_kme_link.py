"""The external-KME link kind: key from a pair of ETSI GS QKD 014 KMEs outside the deployment.

For devices in the loop: the two ends of the link are SAEs of two KMEs that are not qkdnet's
own (a vendor's QKD pair, another KMS, another qkdnet deployment). The link distils nothing
itself. Every `pull_interval_s` the transmitter asks its KME for `keys_per_pull` keys shared
with the receiver's SAE (enc_keys) and sends their IDs over the link's authenticated classical
channel; the receiver asks its own KME for the keys with those IDs (dec_keys). Both ends then
hold the same bits and store them as any link's block: the first bits refill the
authentication pads of both directions, the rest is key for relays and applications. Blocks
stay pending at the transmitter until the receiver says it stored them, so a session cut in
the middle settles at the next Hello as for any kind.

A KME that does not answer, refuses, or returns keys of the wrong size ends the session with a
`key_source` fault, which status and telemetry show as the link's fault; the transmitter
retries with back-off, as after any failed session. `KeySource` is the port: the edge adapter
(`qkdnet.node.edge.external_kme`) speaks HTTPS with mutual TLS to the KME.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np

from ..errors import LinkError, ProtocolError
from ..store.key_store import KeyStoreDb
from .conversation import Conversation
from .link import LinkEnd, SessionReceiver, SessionTransmitter, store_block
from .link_messages import Abort, Stored
from .link_transport import PhotonSink

__all__ = [
    "REFILL_PADS",
    "ExternalKeys",
    "ExternalKmeReceiver",
    "ExternalKmeTransmitter",
    "KeySource",
    "KeySourceError",
]

REFILL_PADS = 4  # pads refilled each way per block: a block's exchange uses one each way


class KeySourceError(LinkError):
    """The external KME failed: no answer, a refusal, or keys that are not what was asked."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="key_source")


class KeySource(Protocol):
    """This end's KME outside the deployment, as its SAE (the port the edge fills)."""

    @property
    def description(self) -> str:
        """Where the key comes from, for status: the KME's URL and this end's SAE ID."""
        ...

    async def enc_keys(self, number: int, size: int) -> list[tuple[str, bytes]]:
        """`number` new keys of `size` bits shared with the peer's SAE: (key ID, key)."""
        ...

    async def dec_keys(self, key_ids: Sequence[str]) -> list[tuple[str, bytes]]:
        """The keys the peer's SAE was given with these IDs, in that order."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ExternalKeys:
    """Transmitter -> receiver: the IDs of keys to fetch, the block they make, and how many
    pads of each direction its first bits refill."""

    block_id: str = ""
    key_ids: tuple[str, ...] = ()
    refill_pads_forward: int = 0
    refill_pads_backward: int = 0


def _bits(keys: list[tuple[str, bytes]], ids: Sequence[str], size: int) -> np.ndarray[Any, Any]:
    """The keys' bits in the order of `ids` (KeySourceError when they are not those keys)."""
    if [key_id for key_id, _ in keys] != list(ids):
        raise KeySourceError("the external KME returned other keys than those asked for")
    if any(len(key) * 8 != size for _, key in keys):
        raise KeySourceError(f"the external KME returned keys that are not {size} bits long")
    return np.unpackbits(np.frombuffer(b"".join(key for _, key in keys), np.uint8))


class _ExternalKmeEnd(LinkEnd):
    """What both ends share: their key source and its settings."""

    def _setup(self, key_source: KeySource) -> None:
        if self.config.external_kme is None:
            raise LinkError("an external-kme link needs its external_kme section")
        self.key_source = key_source
        self.settings = self.config.external_kme
        self.stats.source = key_source.description

    async def close(self) -> None:
        await self.key_source.close()
        await super().close()


class ExternalKmeTransmitter(_ExternalKmeEnd, SessionTransmitter):
    """The master end: pulls keys from its KME and tells the receiver their IDs."""

    def __init__(self, *, key_source: KeySource, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._setup(key_source)

    async def distil(self, conv: Conversation, photons: PhotonSink) -> None:
        settings = self.settings
        frame = await self.store.run(lambda db: db.get_meta("next_frame"))
        while True:
            await self.while_store_full(conv)
            conv.frame = frame
            keys = await self.key_source.enc_keys(settings.keys_per_pull, settings.key_bits)
            ids = [key_id for key_id, _ in keys]
            if len(ids) != settings.keys_per_pull:
                raise KeySourceError(
                    f"the external KME gave {len(ids)} keys, not {settings.keys_per_pull}"
                )
            bits = _bits(keys, ids, settings.key_bits)
            refill = 64 * 2 * REFILL_PADS
            if bits.size <= refill:
                raise LinkError(f"a pull of {bits.size} bits cannot refill {refill} pad bits")
            block_id = f"{self.link_id}/{frame:08d}-{uuid.uuid4().hex[:8]}"
            await store_block(
                self.store, block_id, frame, bits, (REFILL_PADS, REFILL_PADS), pending=True
            )
            await conv.send(ExternalKeys(block_id, tuple(ids), REFILL_PADS, REFILL_PADS))
            if (await conv.expect(Stored)).block_id != block_id:
                raise ProtocolError("the receiver acknowledged another block")
            await self.store.run(partial(KeyStoreDb.confirm_blocks, block_ids=[block_id]))
            await self.auth.persist()
            await self.refresh_store_level()
            self.stats.record_block(int(bits.size), refill)
            frame += 1
            await self.store.run(partial(KeyStoreDb.set_meta, name="next_frame", value=frame))
            await self.clock.sleep(settings.pull_interval_s)


class ExternalKmeReceiver(_ExternalKmeEnd, SessionReceiver):
    """The slave end: fetches the keys with the IDs it is sent from its own KME."""

    def __init__(self, *, key_source: KeySource, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._setup(key_source)

    async def answer(self, conv: Conversation) -> None:
        while True:
            message = await conv.receive(idle=True)
            offer = message.payload
            if not isinstance(offer, ExternalKeys):
                raise ProtocolError(f"expected ExternalKeys, got {type(offer).__name__}")
            conv.frame = message.frame
            if not offer.key_ids:
                raise ProtocolError("ExternalKeys without key IDs")
            try:
                keys = await self.key_source.dec_keys(offer.key_ids)
                bits = _bits(keys, offer.key_ids, self.settings.key_bits)
            except KeySourceError as exc:  # the transmitter learns why, and shows it
                await conv.send(Abort(reason=str(exc)))
                raise
            refill = (offer.refill_pads_forward, offer.refill_pads_backward)
            if bits.size <= 64 * sum(refill):
                raise ProtocolError("ExternalKeys refills more pads than its keys hold")
            await store_block(
                self.store, offer.block_id, message.frame, bits, refill, pending=False
            )
            await conv.send(Stored(block_id=offer.block_id))
            await self.auth.persist()
            await self.refresh_store_level()
            self.stats.record_block(int(bits.size), 64 * sum(refill))
