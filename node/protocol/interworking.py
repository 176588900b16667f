"""A border node's Key Management System towards another domain (ETSI GS QKD 020 V1.1.1).

Two domains are two qkdnet networks (or a qkdnet network and another vendor's) with their own
CAs and routing; one node of each, the border, faces the other's. A key an SAE of this domain
asks for an SAE of the other is relayed inside this domain to the border (as to any target
node), then handed across, then relayed inside the other domain by its border:

    SAE A -014-> KME x1 ~relay~> border xb -020 ext_keys-> border yb ~relay~> KME y1 -014-> SAE C
                                 xb <-020 ext_keys/ack "relayed"- yb

`BorderKms` is both sides of that hand-over.

Outbound (`export`, called by the relay when a frame for an SAE of the other domain ends
here): the keys go to the peer border in one `ext_keys` transfer, asynchronous (the peer
answers 202 and acknowledges later at `callback_url`) or synchronous (the acks in the answer);
`export` returns once every key is acknowledged `relayed`, and only then does the relay tell
the origin the keys are stored. Any other outcome voids them at the peer (`ext_keys/void`) and
fails the relay, so the origin discards the transaction: no key at one end only. When the
origin later discards or withdraws keys this border exported, the void goes across too.

Inbound (`receive_transfer`): the transfer is checked (known targets, no route back to the
sender, mandatory extensions understood) before anything is kept: a refusal with 400 or 401
promises the peer that nothing was. Then this border relays the keys inside its domain as their
origin (`DomainKeys.relay_given`: stored and committed at every target's node, or at none) and
acknowledges each group `relayed` or `failed`. When the acknowledgement cannot be delivered
(three tries), the keys are withdrawn in this domain and voided towards the sender, as the
standard asks. Voids from the peer withdraw imported keys (`voided`; `key not present` for IDs
never seen, which are then refused should they arrive late).

When the two borders share a QKD link, key values cross one-time-padded with that link's key
(`border_link.py`); without one (two KMSs in one site, as the standard pictures them), values
travel in clear inside mutual TLS 1.3.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import KeyStoreError, RelayError
from ..store.border_journal import BorderJournal, InFlight
from ..store.delivered_keys import NewKeys
from ..structured_log import log_event
from .border_link import OTP_EXTENSION, HopCipher, transfer_context
from .interworking_messages import (
    Ack,
    AckStatus,
    ExtKey,
    InterworkingRefusal,
    KeyTransfer,
    VoidRequest,
)

__all__ = [
    "ACK_ATTEMPTS",
    "ACK_TIMEOUT_S",
    "BorderKms",
    "DomainKeys",
    "InterworkingCounters",
    "PeerKms",
]

# How long an export waits for the peer's acknowledgement: below the relay's hop timeout, so
# that the origin hears of a failure from this node rather than from its own deadline.
ACK_TIMEOUT_S = 6.0
ACK_ATTEMPTS = 3
_ACK_BACKOFF_S = (0.2, 0.5)
# How long imported and exported key IDs (and tombstones) are remembered for voids.
_MEMORY_S = 3600.0

logger = logging.getLogger("qkdnet.node.protocol.interworking")

EventSink = Callable[[str, dict[str, Any]], None]


class PeerKms(Protocol):
    """Calls to the peer domain's border KMS (its 020 API). Failures: `InterworkingRefusal`
    for a problem-details answer, RelayError(`unreachable`) for no answer."""

    async def transfer(self, transfer: KeyTransfer) -> list[Ack] | None:
        """POST ext_keys: None when accepted (202, acks follow), the acks when synchronous."""
        ...

    async def acknowledge(self, acks: Sequence[Ack]) -> None:
        """POST ext_keys/ack to the peer's callback."""
        ...

    async def void(self, request: VoidRequest) -> list[Ack] | None:
        """POST ext_keys/void: None when accepted (202), the acks when synchronous."""
        ...


class DomainKeys(Protocol):
    """This domain's key management, as the border uses it (`KeyManager`)."""

    def node_of(self, sae: str) -> str | None: ...

    async def relay_given(
        self, master: str, slaves: Sequence[str], keys: Sequence[tuple[str, bytes]], size: int
    ) -> Any: ...

    async def withdraw(self, slaves: Sequence[str], key_ids: Sequence[str], reason: str) -> int: ...


@dataclass
class _Exported:
    origin: str
    initiator: str
    targets: tuple[str, ...]
    key_ids: tuple[str, ...]
    at: float


@dataclass
class _Imported:
    initiator: str
    targets: tuple[str, ...]
    status: AckStatus
    at: float


@dataclass
class InterworkingCounters:
    """What the border did, for status and telemetry."""

    keys_exported: int = 0
    keys_imported: int = 0
    transfers_failed: int = 0
    keys_voided: int = 0
    acks_undelivered: int = 0
    refusals: Counter[str] = field(default_factory=Counter)  # by problem detail


class BorderKms:
    """The 020 side of one border node towards one peer domain."""

    def __init__(
        self,
        node_id: str,
        peer: PeerKms,
        domain: DomainKeys,
        peer_saes: frozenset[str],
        *,
        callback_url: str,
        cipher: HopCipher | None = None,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        on_event: EventSink | None = None,
        journal: BorderJournal | None = None,
    ) -> None:
        """`peer_saes`: the SAEs of the other domain this border hands keys to (announced in
        this domain as served here); `callback_url`: where the peer posts acknowledgements;
        `journal`: where keys in flight are written, so that a crash voids them (`recover`)."""
        self.node_id = node_id
        self.peer_saes = peer_saes
        self.callback_url = callback_url
        self._peer = peer
        self._domain = domain
        self._cipher = cipher
        self._ack_timeout_s = ack_timeout_s
        self._on_event = on_event
        self._awaiting: dict[str, asyncio.Future[Ack]] = {}
        self._exported: dict[str, _Exported] = {}  # by transaction ID
        self._imported: dict[str, _Imported] = {}  # by key ID
        self._tombstones: dict[str, float] = {}  # key IDs voided or never seen
        self._tasks: set[asyncio.Task[None]] = set()
        self._journal = journal
        self.counters = InterworkingCounters()

    # -- outbound ----------------------------------------------------------------------------
    def handles(self, sae: str) -> bool:
        return sae in self.peer_saes

    async def export(self, keys: NewKeys) -> None:
        """Hand a relayed transaction's keys to the peer domain (see the module docstring)."""
        start = time.perf_counter()
        ext = [ExtKey(key_id, value) for key_id, value in zip(keys.key_ids, keys.keys, strict=True)]
        targets = tuple(keys.local_slaves)
        mandatory: dict[str, Any] | None = None
        if self._cipher is not None:
            context = transfer_context(keys.master, targets, ext)
            extension, sealed = await self._cipher.seal(context, b"".join(keys.keys))
            size = keys.key_bits // 8
            ext = [
                ExtKey(key.key_id, sealed[i * size : (i + 1) * size]) for i, key in enumerate(ext)
            ]
            mandatory = {OTP_EXTENSION: extension}
        transfer = KeyTransfer(
            keys=tuple(ext),
            initiator=keys.master,
            targets=targets,
            callback_url=self.callback_url,
            extension_mandatory=mandatory,
        )
        loop = asyncio.get_running_loop()
        waiters = {key_id: loop.create_future() for key_id in keys.key_ids}
        self._awaiting.update(waiters)
        try:
            try:
                answer = await self._peer.transfer(transfer)
            except InterworkingRefusal as exc:
                if not exc.nothing_kept:
                    await self._void_at_peer(keys.key_ids, keys.master, targets)
                why = f"refused ({exc.status} {exc.detail}: {exc.message})"
                raise self._failed(keys, why) from None
            except RelayError as exc:
                await self._void_at_peer(keys.key_ids, keys.master, targets)
                raise self._failed(keys, str(exc)) from None
            if answer is not None:
                self._resolve(answer)
            await asyncio.wait(list(waiters.values()), timeout=self._ack_timeout_s)
            statuses = {
                key_id: (fut.result().status if fut.done() else None)
                for key_id, fut in waiters.items()
            }
        finally:
            for key_id, fut in waiters.items():
                self._awaiting.pop(key_id, None)
                fut.cancel()
        if any(status is not AckStatus.RELAYED for status in statuses.values()):
            await self._void_at_peer(keys.key_ids, keys.master, targets)
            missing = sum(1 for status in statuses.values() if status is None)
            why = f"{missing} keys not acknowledged in {self._ack_timeout_s:g} s" if missing else ""
            failed = sorted({str(s) for s in statuses.values() if s not in (None, "relayed")})
            raise self._failed(keys, why or f"acknowledged {', '.join(failed)}")
        self._forget_old()
        self._exported[keys.transaction_id] = _Exported(
            keys.origin, keys.master, targets, tuple(keys.key_ids), time.monotonic()
        )
        # The peer has them; the master gets them once the origin settles: until then a crash
        # here must void them at the peer.
        await self._note(
            InFlight(
                f"export:{keys.transaction_id}",
                "export",
                tuple(keys.key_ids),
                keys.master,
                targets,
                keys.origin,
            )
        )
        self.counters.keys_exported += len(keys.key_ids)
        self._event(
            "interworking_transfer",
            direction="out",
            initiator=keys.master,
            targets=list(targets),
            keys=len(keys.key_ids),
            status="relayed",
            ms=round((time.perf_counter() - start) * 1e3, 3),
        )

    def _failed(self, keys: NewKeys, why: str) -> RelayError:
        self.counters.transfers_failed += 1
        self._event(
            "interworking_transfer",
            direction="out",
            initiator=keys.master,
            targets=list(keys.local_slaves),
            keys=len(keys.key_ids),
            status="failed",
            message=why,
        )
        return RelayError(f"the peer domain did not take the keys: {why}", reason="peer_failed")

    async def settle(self, transaction_id: str, origin: str, commit: bool) -> int:
        exported = self._exported.get(transaction_id)
        if exported is None or exported.origin != origin:
            return 0
        await self._cleared(f"export:{transaction_id}")
        if not commit:
            del self._exported[transaction_id]
            await self._void_at_peer(exported.key_ids, exported.initiator, exported.targets)
        return len(exported.key_ids)

    async def void(self, origin: str, key_ids: Sequence[str], reason: str) -> int:
        wanted = set(key_ids)
        voided = 0
        for transaction_id, exported in list(self._exported.items()):
            ids = [key_id for key_id in exported.key_ids if key_id in wanted]
            if ids and exported.origin == origin:
                await self._void_at_peer(ids, exported.initiator, exported.targets)
                voided += len(ids)
                rest = tuple(k for k in exported.key_ids if k not in wanted)
                if rest:
                    exported.key_ids = rest
                else:
                    del self._exported[transaction_id]
                    await self._cleared(f"export:{transaction_id}")
        return voided

    async def _void_at_peer(
        self, key_ids: Sequence[str], initiator: str, targets: Sequence[str]
    ) -> bool:
        """Void keys at the peer, synchronously when it answers so, else acks come later;
        when it cannot be reached (False) the keys' time to live there ends them."""
        request = VoidRequest(
            key_ids=tuple(key_ids),
            initiator=initiator,
            targets=tuple(targets),
            callback_url=self.callback_url,
        )
        try:
            await self._peer.void(request)
        except (InterworkingRefusal, RelayError) as exc:
            log_event(
                logger, logging.WARNING, "peer_void_failed", keys=len(key_ids), error=str(exc)
            )
            return False
        self.counters.keys_voided += len(key_ids)
        return True

    def _resolve(self, acks: Sequence[Ack]) -> int:
        """Wake the exports waiting for these acks; how many key IDs one was waiting for."""
        known = 0
        for ack in acks:
            for key_id in ack.key_ids:
                fut = self._awaiting.get(key_id)
                if fut is not None and not fut.done():
                    fut.set_result(ack)
                    known += 1
        return known

    # -- the journal: keys in flight across a crash ---------------------------------------------
    async def _note(self, item: InFlight) -> None:
        if self._journal is not None:
            await self._journal.run(lambda db: db.write(item))

    async def _cleared(self, entry: str) -> None:
        if self._journal is not None:
            with contextlib.suppress(KeyStoreError):
                await self._journal.run(lambda db: db.clear(entry))

    async def recover(self, attempts: int = 30, pause_s: float = 2.0) -> int:
        """Void on both sides what was in flight when this border last stopped (its journal):
        exports the origin never settled, at the peer; imports the peer never heard about,
        in this domain and at the peer. The peer may be away: tried `attempts` times, `pause_s`
        apart (what is still left then ends with its time to live). How many keys."""
        if self._journal is None:
            return 0
        voided = 0
        for attempt in range(attempts):
            left = await self._journal.run(lambda db: db.pending())
            if not left:
                break
            if attempt:
                await asyncio.sleep(pause_s)  # the peer was away: try again a little later
            for item in left:
                if item.direction == "import":
                    await self._withdraw(item.targets, item.key_ids)
                if await self._void_at_peer(item.key_ids, item.initiator, item.targets):
                    for key_id in item.key_ids:
                        self._tombstones[key_id] = time.monotonic()
                    await self._cleared(item.entry)
                    voided += len(item.key_ids)
                    log_event(
                        logger,
                        logging.WARNING,
                        "in_flight_voided",
                        direction=item.direction,
                        keys=len(item.key_ids),
                    )
        return voided

    # -- inbound -----------------------------------------------------------------------------
    def check_transfer(self, transfer: KeyTransfer) -> None:
        """Refuse (InterworkingRefusal) what cannot be taken, before anything is kept."""
        if not transfer.keys:
            raise _bad("missing-parameters", "missing_parameters", "the transfer has no keys")
        if not transfer.targets:
            raise _bad("missing-parameters", "missing_parameters", "no target_sae_ids")
        ids = transfer.key_ids
        if len(set(ids)) != len(ids):
            raise _bad("invalid-parameters", "duplicate_key_id", "a key ID appears twice")
        seen = [key_id for key_id in ids if key_id in self._imported or key_id in self._tombstones]
        if seen:
            raise _bad("invalid-parameters", "key_id_reused", f"key ID {seen[0]} was used before")
        for key in transfer.keys:
            if not key.value:
                raise _bad("invalid-parameters", "invalid_key", f"key {key.key_id} is empty")
        if len(set(transfer.targets)) != len(transfer.targets):
            raise _bad("invalid-parameters", "duplicate_target", "a target SAE appears twice")
        if transfer.initiator in transfer.targets:
            raise _bad("key-routing-error", "invalid_routing", "the initiator is a target")
        for target in transfer.targets:
            if target in self.peer_saes:
                raise _bad(
                    "key-routing-error",
                    "invalid_routing",
                    f"target {target} is reached through the sender: the keys would go back",
                )
            if self._domain.node_of(target) is None:
                raise _bad(
                    "key-routing-error",
                    "target_sae_id_not_recognized",
                    f"target SAE {target} is not known in this domain",
                )
        if self._domain.node_of(transfer.initiator) not in (None, self.node_id):
            raise _bad(
                "key-routing-error",
                "invalid_routing",
                f"initiator {transfer.initiator} is an SAE of this domain",
            )
        for name in transfer.extension_mandatory or {}:
            if name != OTP_EXTENSION or self._cipher is None:
                raise InterworkingRefusal(
                    503,
                    "unsupported-mandatory-extension",
                    "unsupported_mandatory_extension",
                    f"mandatory extension {name} is not supported here",
                )
        if self._cipher is not None and OTP_EXTENSION not in (transfer.extension_mandatory or {}):
            raise InterworkingRefusal(
                401,
                "unauthorized",
                "unauthorized",
                "this border shares a QKD link with its peer: keys must cross padded with its "
                f"key ({OTP_EXTENSION})",
            )

    async def receive_transfer(self, transfer: KeyTransfer) -> list[Ack] | None:
        """ext_keys from the peer: the acks (synchronous), or None (accepted, acks follow)."""
        self._forget_old()
        self.check_transfer(transfer)
        transfer = await self._opened(transfer)
        for key_id in transfer.key_ids:  # claimed now: a concurrent retry is refused
            self._imported[key_id] = _Imported(
                transfer.initiator, transfer.targets, AckStatus.FAILED, time.monotonic()
            )
        entry = f"import:{transfer.key_ids[0]}"
        await self._note(
            InFlight(entry, "import", transfer.key_ids, transfer.initiator, transfer.targets, "")
        )
        if transfer.callback_url is None:
            try:
                return await self._import(transfer)
            finally:
                await self._cleared(entry)
        self._spawn(self._import_and_acknowledge(transfer, entry))
        return None

    async def _opened(self, transfer: KeyTransfer) -> KeyTransfer:
        """The transfer with its key values in clear (taken off the link's pad)."""
        extension = (transfer.extension_mandatory or {}).get(OTP_EXTENSION)
        if extension is None or self._cipher is None:
            return transfer
        sizes = {len(key.value) for key in transfer.keys}
        if len(sizes) != 1 or not isinstance(extension, Mapping):
            raise _bad("invalid-parameters", "invalid_key", f"{OTP_EXTENSION}: keys of one size")
        context = transfer_context(transfer.initiator, transfer.targets, transfer.keys)
        try:
            clear = await self._cipher.open(
                extension, context, b"".join(key.value for key in transfer.keys)
            )
        except (RelayError, KeyStoreError) as exc:
            raise InterworkingRefusal(
                401, "unauthorized", "unauthorized", f"{OTP_EXTENSION}: {exc}"
            ) from None
        size = sizes.pop()
        keys = tuple(
            ExtKey(key.key_id, clear[i * size : (i + 1) * size], key.extension)
            for i, key in enumerate(transfer.keys)
        )
        return KeyTransfer(
            keys=keys,
            initiator=transfer.initiator,
            targets=transfer.targets,
            callback_url=transfer.callback_url,
            extension_mandatory=transfer.extension_mandatory,
            extension_optional=transfer.extension_optional,
        )

    async def _import(self, transfer: KeyTransfer) -> list[Ack]:
        """Relay the keys inside this domain, a transaction per key size; their acks."""
        start = time.perf_counter()
        by_size: dict[int, list[ExtKey]] = {}
        for key in transfer.keys:
            by_size.setdefault(len(key.value), []).append(key)
        acks = []
        for size, keys in by_size.items():
            ids = tuple(key.key_id for key in keys)
            try:
                await self._domain.relay_given(
                    transfer.initiator,
                    transfer.targets,
                    [(key.key_id, key.value) for key in keys],
                    size * 8,
                )
                status, message = AckStatus.RELAYED, ""
            except (RelayError, KeyStoreError) as exc:
                status, message = AckStatus.FAILED, str(exc)
            if status is AckStatus.RELAYED and any(k in self._tombstones for k in ids):
                # Voided while they were on their way: they go again.
                await self._withdraw(transfer.targets, ids)
                status, message = AckStatus.VOIDED, "voided while being relayed"
            for key_id in ids:
                self._imported[key_id] = _Imported(
                    transfer.initiator, transfer.targets, status, time.monotonic()
                )
            if status is AckStatus.RELAYED:
                self.counters.keys_imported += len(ids)
            acks.append(Ack(ids, status, transfer.initiator, transfer.targets, message[:4096]))
        self._event(
            "interworking_transfer",
            direction="in",
            initiator=transfer.initiator,
            targets=list(transfer.targets),
            keys=len(transfer.keys),
            status=",".join(sorted({str(ack.status) for ack in acks})),
            ms=round((time.perf_counter() - start) * 1e3, 3),
        )
        return acks

    async def _import_and_acknowledge(self, transfer: KeyTransfer, entry: str) -> None:
        try:
            await self._import_and_acknowledge_journalled(transfer)
        finally:
            await self._cleared(entry)

    async def _import_and_acknowledge_journalled(self, transfer: KeyTransfer) -> None:
        acks = await self._import(transfer)
        if await self._acknowledge(acks):
            return
        # The sender never heard: it will not release the keys, so they go here too, and the
        # sender hears of it by a void in the opposite direction.
        self.counters.acks_undelivered += 1
        relayed = [k for ack in acks if ack.status is AckStatus.RELAYED for k in ack.key_ids]
        if relayed:
            await self._withdraw(transfer.targets, relayed)
            await self._void_at_peer(relayed, transfer.initiator, transfer.targets)

    async def _acknowledge(self, acks: Sequence[Ack]) -> bool:
        for attempt in range(ACK_ATTEMPTS):
            try:
                await self._peer.acknowledge(acks)
                return True
            except (InterworkingRefusal, RelayError) as exc:
                log_event(logger, logging.WARNING, "ack_failed", attempt=attempt, error=str(exc))
                if isinstance(exc, InterworkingRefusal) and exc.nothing_kept:
                    return False  # the peer does not know the keys (it gave up on them)
                if attempt < len(_ACK_BACKOFF_S):
                    await asyncio.sleep(_ACK_BACKOFF_S[attempt])
        return False

    async def _withdraw(self, targets: Sequence[str], ids: Sequence[str]) -> int | None:
        """Withdraw imported keys in this domain and tombstone their IDs; how many were there,
        None when a node could not be reached (their time to live ends them there)."""
        for key_id in ids:
            self._tombstones[key_id] = time.monotonic()
            self._imported.pop(key_id, None)
        try:
            return await self._domain.withdraw(targets, ids, "voided_by_peer_domain")
        except (RelayError, KeyStoreError) as exc:
            log_event(logger, logging.WARNING, "withdraw_failed", keys=len(ids), error=str(exc))
            return None

    def receive_acks(self, acks: Sequence[Ack]) -> None:
        """ext_keys/ack from the peer; refused (400 key-not-present) when no key of it is
        awaited here (the export gave up on them: they were voided)."""
        if not acks:
            raise _bad("ack-not-understood", "ack_not_understood", "no ack container")
        if self._resolve(acks) == 0:
            raise _bad("key-not-present", "key_not_present", "no key of the ack is awaited here")

    async def receive_void(self, request: VoidRequest) -> list[Ack] | None:
        """ext_keys/void from the peer: the acks (synchronous) or None (acks follow)."""
        if not request.key_ids and not request.all_confirmation:
            raise _bad(
                "no-key-ids-or-confirmation",
                "no_all_confirmation",
                "an empty key_ids voids every key between the SAEs: it needs all_confirmation",
            )
        if request.callback_url is None:
            return await self._void_here(request)
        self._spawn(self._void_and_acknowledge(request))
        return None

    async def _void_and_acknowledge(self, request: VoidRequest) -> None:
        acks = await self._void_here(request)
        if not await self._acknowledge(acks):
            self.counters.acks_undelivered += 1

    async def _void_here(self, request: VoidRequest) -> list[Ack]:
        if request.key_ids:
            ids = list(request.key_ids)
        else:
            pair = (request.initiator, tuple(request.targets))
            ids = [
                k
                for k, imported in self._imported.items()
                if (imported.initiator, imported.targets) == pair
            ]
        groups: dict[AckStatus, list[str]] = {}
        for key_id in ids:
            fut = self._awaiting.get(key_id)
            if fut is not None:  # one of this border's exports: it fails, and is voided
                if not fut.done():
                    fut.set_result(
                        Ack((key_id,), AckStatus.VOIDED, request.initiator, request.targets)
                    )
                groups.setdefault(AckStatus.VOIDED, []).append(key_id)
                continue
            imported = self._imported.get(key_id)
            if imported is None:
                self._tombstones[key_id] = time.monotonic()
                groups.setdefault(AckStatus.KEY_NOT_PRESENT, []).append(key_id)
            elif imported.status is not AckStatus.RELAYED:
                self._tombstones[key_id] = time.monotonic()  # failed or still on its way
                groups.setdefault(AckStatus.VOIDED, []).append(key_id)
            else:
                groups.setdefault(AckStatus.RELAYED, []).append(key_id)
        acks = []
        relayed = groups.pop(AckStatus.RELAYED, [])
        if relayed:
            withdrawn = await self._withdraw(request.targets, relayed)
            status = AckStatus.VOIDED if withdrawn is not None else AckStatus.FAILED_TO_VOID
            groups.setdefault(status, []).extend(relayed)
            if status is AckStatus.VOIDED:
                self.counters.keys_voided += len(relayed)
        for status, key_ids in groups.items():
            acks.append(Ack(tuple(key_ids), status, request.initiator, tuple(request.targets)))
        if not acks:  # all_confirmation for a pair with no keys: nothing to void
            acks.append(Ack((), AckStatus.VOIDED, request.initiator, tuple(request.targets)))
        self._event(
            "interworking_void",
            initiator=request.initiator,
            targets=list(request.targets),
            keys=len(ids),
            statuses={str(ack.status): len(ack.key_ids) for ack in acks},
        )
        return acks

    # -- housekeeping ------------------------------------------------------------------------
    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work, name="020 acknowledgement")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget_old(self) -> None:
        horizon = time.monotonic() - _MEMORY_S
        for table in (self._imported, self._exported):
            for key in [k for k, v in table.items() if v.at < horizon]:
                del table[key]
        for key_id in [k for k, at in self._tombstones.items() if at < horizon]:
            del self._tombstones[key_id]

    async def close(self) -> None:
        """Cancel the acknowledgements still under way."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _event(self, kind: str, **fields: Any) -> None:
        if self._on_event is not None:
            self._on_event(kind, fields)


def _bad(problem: str, detail: str, message: str) -> InterworkingRefusal:
    return InterworkingRefusal(400, problem, detail, message)
