"""Trusted-node key relay: one-time pad and Wegman-Carter tag per hop, two-step delivery.

The origin (the master SAE's node) sends a `RelayPayload` along a route of neighbouring nodes.
On each hop the sender draws link key from its own half of the link's store (see
`KeyStoreDb.take_next`): 64 bits of polynomial-hash key, 64 bits of tag pad and as many bits
as the keys have for the one-time pad. Only the keys are padded: the rest of the payload (key
IDs, SAE IDs, transaction) is no secret in ETSI GS QKD 014 either, so it travels in clear and,
like the header, under the tag; that makes a relayed 256-bit key cost 384 bits of link key per
hop instead of about a thousand. The receiver checks the route (it must be the next
node, the caller the previous one, both neighbours), refuses a frame ID it has seen, and
consumes the same link key only if the tag is right (`take_ranges(accept=...)`), so a forged
frame cannot burn the key the genuine sender will use. A node in the middle re-encrypts for the
next hop and answers once the rest of the route has; the target stores the keys as pending
(durably) and answers. The origin then settles the transaction with every target directly
(commit or discard), over the nodes' mutual-TLS gRPC.

Link key spent on a relay that fails is gone for good: it is counted (`wasted_bits`), never
reused. Frame IDs are recorded in the receiving link store, in the transaction that consumes
the frame's link key. Refused frames are counted by reason: `bad_tag`, `replay`, `unknown_route`,
`malformed`, `no_key`.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Protocol

from ..core.polynomial_hash import PolynomialHash, tags_equal, wegman_carter_tag
from ..errors import FrameReplayed, KeyExhausted, KeyRejected, KeyStoreError, RelayError
from ..store.delivered_keys import DEFAULT_KEY_TTL_S, DeliveredKeys, NewKeys
from ..store.key_store import KeyStoreDb
from ..structured_log import log_event
from .link import LinkEnd
from .relay_messages import RelayAck, RelayCodec, RelayFrame, RelayHeader, RelayPayload
from .relay_peers import RelayPeers

__all__ = [
    "FRAME_MEMORY_S",
    "HOP_TIMEOUT_S",
    "PENDING_EXPIRY_S",
    "KeyExporter",
    "KeyRelay",
    "RelayCounters",
    "link_key_bits",
]

HOP_TIMEOUT_S = 10.0
# Pending keys the origin has not settled after this long are dropped (the origin crashed).
PENDING_EXPIRY_S = 120.0
# Accepted frame IDs are remembered this long; a replay after that finds its link key spent.
FRAME_MEMORY_S = 3600.0
_HEADER_BITS = 128  # hash key + tag pad

logger = logging.getLogger("qkdnet.node.protocol.relay")


def link_key_bits(key_bytes: int) -> int:
    """Link key one hop spends on `key_bytes` of keys: hash key, tag pad, one-time pad."""
    return _HEADER_BITS + 8 * key_bytes


@dataclass
class RelayCounters:
    """What the relay of one node did, for status and telemetry."""

    frames_sent: int = 0
    frames_received: int = 0
    frames_refused: Counter[str] = field(default_factory=Counter)
    wasted_bits: int = 0
    transactions_committed: int = 0
    transactions_failed: int = 0
    # Keys discarded at this node as a target: past their time to live, never settled by their
    # origin, withdrawn by their origin.
    keys_expired: int = 0
    pending_expired: int = 0
    keys_voided: int = 0


def _xor(data: bytes, pad: bytes) -> bytes:
    return (int.from_bytes(data, "big") ^ int.from_bytes(pad, "big")).to_bytes(len(data), "big")


def _authenticated(header: bytes, payload: bytes, ciphertext: bytes) -> bytes:
    # Length-prefixed so that no byte can move between the parts unnoticed.
    return struct.pack(">II", len(header), len(payload)) + header + payload + ciphertext


class KeyExporter(Protocol):
    """Where keys for SAEs of another domain go when a relay ends at this (border) node: the
    node's ETSI GS QKD 020 side (`interworking.BorderKms`)."""

    def handles(self, sae: str) -> bool:
        """Whether `sae` is served in another domain, reached through this node."""
        ...

    async def export(self, keys: NewKeys) -> None:
        """Hand `keys` (for `keys.local_slaves`, all of another domain) to that domain; returns
        once it has them, RelayError when it has not (then it keeps none)."""
        ...

    async def settle(self, transaction_id: str, origin: str, commit: bool) -> int:
        """The origin settled an exported transaction: how many keys it held (0: not one of
        those exported); discarded ones are withdrawn from the other domain."""
        ...

    async def void(self, origin: str, key_ids: Sequence[str], reason: str) -> int:
        """Withdraw exported keys from the other domain; how many it withdrew."""
        ...


class KeyRelay:
    """The relay logic of one node: sending, forwarding, receiving and settling."""

    def __init__(
        self,
        node_id: str,
        links: Mapping[str, LinkEnd],
        delivered: DeliveredKeys,
        peers: RelayPeers,
        local_saes: frozenset[str],
        *,
        codec: RelayCodec,
        key_ttl_s: float = DEFAULT_KEY_TTL_S,
    ) -> None:
        """`codec` encodes the headers and payloads that frames authenticate (the wire
        contract); `peers` reaches the relays of other nodes."""
        self.node_id = node_id
        self._codec = codec
        self._links = links
        self._delivered = delivered
        self._peers = peers
        self._local_saes = local_saes
        self.key_ttl_s = key_ttl_s
        self.counters = RelayCounters()
        # Set by a border node: where keys for SAEs of another domain go.
        self.exporter: KeyExporter | None = None

    def _direction(self, sender: str, receiver: str) -> int:
        return 0 if sender < receiver else 1

    # -- sending -----------------------------------------------------------------------------
    async def _seal(
        self, route: list[str], hop: int, transaction_id: str, payload: bytes, keys: bytes
    ) -> RelayFrame:
        peer = route[hop + 1]
        link = self._links.get(peer)
        if link is None:
            raise RelayError(f"{peer} is not a neighbour of {self.node_id}", reason="unknown_route")
        need = link_key_bits(len(keys))
        take = partial(
            KeyStoreDb.take_next, nbits=need, direction=self._direction(self.node_id, peer)
        )
        try:
            ranges, bits = await link.store.run(take)
        except KeyExhausted:
            raise RelayError(
                f"link {self.node_id}--{peer} has less than {need} bits of key to send",
                reason="no_key",
            ) from None
        header = self._codec.encode_header(
            RelayHeader(
                frame_id=uuid.uuid4().hex,
                transaction_id=transaction_id,
                route=tuple(route),
                hop=hop,
                link_key=tuple(ranges),
            )
        )
        ciphertext = _xor(keys, bits[16:])
        hasher = PolynomialHash(int.from_bytes(bits[:8], "big"))
        tag = wegman_carter_tag(hasher, bits[8:16], _authenticated(header, payload, ciphertext))
        return RelayFrame(header=header, payload=payload, ciphertext=ciphertext, tag=tag)

    async def _send(
        self, route: list[str], hop: int, transaction_id: str, payload: bytes, keys: bytes
    ) -> RelayAck:
        frame = await self._seal(route, hop, transaction_id, payload, keys)
        bits = link_key_bits(len(keys))
        self.counters.frames_sent += 1
        try:
            return await self._peers.relay(route[hop + 1], frame)
        except RelayError:
            self.counters.wasted_bits += bits
            raise

    async def relay(self, route: list[str], payload: RelayPayload) -> RelayAck:
        """Send `payload` from this node (route[0]) to route[-1]; answers once it is stored."""
        if len(route) < 2 or route[0] != self.node_id:
            raise RelayError(
                f"route {route} does not start at {self.node_id}", reason="unknown_route"
            )
        start = time.perf_counter()
        # Only the keys need the one-time pad: the rest travels in clear, under the tag.
        bare = self._codec.encode_payload(payload)
        ack = await self._send(route, 0, payload.transaction_id, bare, payload.keys)
        micros = int((time.perf_counter() - start) * 1e6)
        return RelayAck(
            transaction_id=ack.transaction_id,
            route=(self.node_id, *ack.route),
            hop_micros=(micros, *ack.hop_micros),
        )

    async def settle(self, target: str, transaction_id: str, commit: bool) -> int:
        """Commit or discard a transaction at `target` (which must have stored it)."""
        what = f"{target} did not settle transaction {transaction_id}"
        call = self._peers.settle(target, transaction_id, commit)
        return await self._to_target(call, what, "settle_failed")

    async def void(self, target: str, key_ids: list[str], reason: str) -> int:
        """Withdraw committed keys this node relayed to `target`; returns how many were there."""
        blob = b"".join(uuid.UUID(key_id).bytes for key_id in key_ids)
        what = f"{target} did not withdraw {len(key_ids)} keys"
        return await self._to_target(self._peers.void(target, blob, reason), what, "void_failed")

    @staticmethod
    async def _to_target(call: Awaitable[int], what: str, reason: str) -> int:
        """A call to a target's relay; RelayError(`reason`) saying `what` when it fails."""
        try:
            return await call
        except RelayError as exc:
            raise RelayError(f"{what}: {exc}", reason=reason) from None

    # -- receiving ---------------------------------------------------------------------------
    def _refuse(self, reason: str, message: str) -> RelayError:
        self.counters.frames_refused[reason] += 1
        return RelayError(message, reason=reason)

    async def receive(self, frame: RelayFrame, sender: str) -> RelayAck:
        """Handle a frame from neighbour `sender`; forward it or store it at the target."""
        start = time.perf_counter()
        header, keys = await self._open(frame, sender)
        route, hop = list(header.route), header.hop
        if hop + 2 < len(route):
            ack = await self._send(route, hop + 1, header.transaction_id, frame.payload, keys)
            micros = int((time.perf_counter() - start) * 1e6)
            return RelayAck(
                transaction_id=ack.transaction_id,
                route=(self.node_id, *ack.route),
                hop_micros=(micros, *ack.hop_micros),
            )
        await self._store(frame.payload, keys, origin=route[0])
        micros = int((time.perf_counter() - start) * 1e6)
        return RelayAck(
            transaction_id=header.transaction_id, route=(self.node_id,), hop_micros=(micros,)
        )

    async def _open(self, frame: RelayFrame, sender: str) -> tuple[RelayHeader, bytes]:
        """Check a frame from neighbour `sender` and take its link key: the header and the
        keys in clear. Refused (RelayError) when anything is wrong; then no key is consumed."""
        try:
            header = self._codec.decode_header(frame.header)
        except ValueError as exc:
            raise self._refuse("malformed", str(exc)) from None
        route, hop = list(header.route), header.hop
        if (
            len(route) < 2
            or len(set(route)) != len(route)
            or hop + 1 >= len(route)
            or route[hop] != sender
            or route[hop + 1] != self.node_id
            or sender not in self._links
        ):
            raise self._refuse("unknown_route", f"frame from {sender} is not for a route via here")
        ranges = list(header.link_key)
        if len(frame.tag) != 8 or sum(r.length for r in ranges) != link_key_bits(
            len(frame.ciphertext)
        ):
            raise self._refuse("malformed", "relay frame: link key does not match its size")
        signed = _authenticated(frame.header, frame.payload, frame.ciphertext)

        def tag_ok(bits: bytes) -> bool:
            hasher = PolynomialHash(int.from_bytes(bits[:8], "big"))
            return tags_equal(wegman_carter_tag(hasher, bits[8:16], signed), frame.tag)

        take = partial(
            KeyStoreDb.take_ranges,
            ranges=ranges,
            direction=self._direction(sender, self.node_id),
            accept=tag_ok,
            frame_id=header.frame_id,
        )
        try:
            bits = await self._links[sender].store.run(take)
        except FrameReplayed:
            raise self._refuse("replay", f"relay frame {header.frame_id} was seen before") from None
        except KeyRejected:
            raise self._refuse("bad_tag", "relay frame: wrong authentication tag") from None
        except KeyStoreError as exc:
            reason = "replay" if "already consumed" in str(exc) else "no_key"
            raise self._refuse(reason, f"relay frame: {exc}") from None
        self.counters.frames_received += 1
        return header, _xor(frame.ciphertext, bits[16:])

    # -- one hop to a neighbour in another domain (ETSI GS QKD 020 over a shared link) ------
    async def seal_hop(self, peer: str, context: bytes, keys: bytes) -> RelayFrame:
        """`keys` one-time-padded with link key of the link to `peer`, under a Wegman-Carter
        tag that also covers `context` (which travels apart, in clear): for a border node that
        hands keys to its neighbour in another domain over 020 (`interworking.py`)."""
        frame = await self._seal([self.node_id, peer], 0, "", context, keys)
        self.counters.frames_sent += 1
        return replace(frame, payload=b"")

    async def open_hop(self, frame: RelayFrame, sender: str, context: bytes) -> bytes:
        """The keys of a frame `seal_hop` sealed at neighbour `sender` for this node, with
        `context` as it sealed it; RelayError (`bad_tag`, `replay`, ...) when it is not that."""
        _, keys = await self._open(replace(frame, payload=context), sender)
        return keys

    async def _store(self, body: bytes, keys: bytes, origin: str) -> None:
        try:
            payload = replace(self._codec.decode_payload(body), keys=keys)
        except ValueError as exc:
            raise self._refuse("malformed", str(exc)) from None
        size = payload.key_bits // 8
        count = len(payload.key_uuids) // 16
        local = tuple(s for s in payload.target_saes if s in self._local_saes)
        exporter = self.exporter
        foreign = tuple(
            s
            for s in payload.target_saes
            if s not in self._local_saes and exporter is not None and exporter.handles(s)
        )
        shares = max(1, payload.shares)
        if (
            payload.origin != origin
            or not (local or foreign)
            or (foreign and shares > 1)
            or size <= 0
            or count == 0
            or len(payload.key_uuids) != 16 * count
            or len(payload.keys) != size * count
            or payload.share >= shares
            or (shares > 1 and not payload.share_set)
        ):
            raise self._refuse("malformed", "relay payload does not match its header")
        ids = payload.key_uuids
        new = NewKeys(
            transaction_id=payload.transaction_id,
            origin=origin,
            master=payload.master_sae,
            slaves=tuple(payload.slave_saes),
            local_slaves=local,
            key_bits=payload.key_bits,
            key_ids=tuple(str(uuid.UUID(bytes=ids[i * 16 : (i + 1) * 16])) for i in range(count)),
            keys=tuple(payload.keys[i * size : (i + 1) * size] for i in range(count)),
            ttl_s=float(payload.ttl_seconds) or self.key_ttl_s,
        )
        if shares == 1:
            await self.store_new(replace(new, local_slaves=local + foreign))
            return
        else:
            share, share_set = int(payload.share), payload.share_set
            await self._delivered.run(lambda db: db.add_share(new, share_set, share, shares))

    async def store_new(self, new: NewKeys) -> frozenset[str]:
        """Keep new keys for `new.local_slaves`, pending: those of this node's SAEs in its
        delivered keys, those of another domain's handed to the exporter (a border). Which
        parts it went to: "here", "exported"."""
        exporter = self.exporter
        foreign = tuple(
            s
            for s in new.local_slaves
            if s not in self._local_saes and exporter is not None and exporter.handles(s)
        )
        local = tuple(s for s in new.local_slaves if s in self._local_saes)
        stray = sorted(set(new.local_slaves) - set(local) - set(foreign))
        if stray:  # never kept as this node's own: no key at one end only
            raise RelayError(f"SAE {stray[0]} is not served here", reason="unknown_route")
        parts = set()
        if foreign:
            assert exporter is not None
            await exporter.export(replace(new, local_slaves=foreign))
            parts.add("exported")
        if local:
            await self._delivered.run(
                lambda db: db.add(replace(new, local_slaves=local), pending=True)
            )
            parts.add("here")
        return frozenset(parts)

    async def settle_parts(
        self, transaction_id: str, origin: str, commit: bool, parts: frozenset[str]
    ) -> list[int]:
        """Settle what `store_new` kept, part by part: the keys each part committed (or
        discarded)."""
        counts = []
        if "here" in parts:
            counts.append(
                await self._delivered.run(lambda db: db.settle(transaction_id, origin, commit))
            )
        if "exported" in parts and self.exporter is not None:
            counts.append(await self.exporter.settle(transaction_id, origin, commit))
        return counts

    async def expire_forever(self, interval_s: float = 30.0) -> None:
        """Every `interval_s`: drop what an origin never settled, keys past their time to live
        and frame IDs past replay; then truncate the stores' WALs (no stale key on disk)."""
        while True:
            await asyncio.sleep(interval_s)
            await self.expire_once()

    async def expire_once(self) -> None:
        """One expiry pass (see `expire_forever`)."""
        expired = await self._delivered.run(lambda db: db.expire(pending_s=PENDING_EXPIRY_S))
        await self._delivered.run(lambda db: db.checkpoint())
        for link in self._links.values():
            await link.store.run(partial(KeyStoreDb.forget_frames, older_than_s=FRAME_MEMORY_S))
            await link.store.run(KeyStoreDb.checkpoint)
        self.counters.pending_expired += expired.pending
        self.counters.keys_expired += expired.ready
        if expired.pending:
            log_event(logger, logging.WARNING, "pending_keys_expired", keys=expired.pending)
        if expired.ready:
            log_event(logger, logging.WARNING, "waiting_keys_expired", keys=expired.ready)

    async def settle_here(self, transaction_id: str, origin: str, commit: bool) -> int:
        """A Settle call from `origin` for a transaction stored here (NotTheOrigin when it is
        another node's)."""
        settled = await self._delivered.run(lambda db: db.settle(transaction_id, origin, commit))
        if self.exporter is not None:
            settled += await self.exporter.settle(transaction_id, origin, commit)
        return settled

    async def void_here(self, origin: str, blob: bytes, reason: str) -> int:
        """A Void call from `origin`: withdraw the keys it relayed here (`blob`: their 16-byte
        UUIDs, concatenated)."""
        if len(blob) % 16:
            raise self._refuse("malformed", "key IDs of a void request are not 16 bytes each")
        ids = [str(uuid.UUID(bytes=blob[i : i + 16])) for i in range(0, len(blob), 16)]
        removed = await self._delivered.run(lambda db: db.void(origin, ids))
        if self.exporter is not None:
            removed += await self.exporter.void(origin, ids, reason)
        self.counters.keys_voided += removed
        log_event(logger, logging.INFO, "keys_voided", origin=origin, keys=removed, reason=reason)
        return removed
