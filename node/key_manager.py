"""The Key Management Entity of a node: keys for SAE pairs, made here and relayed to slaves.

`enc_keys` (the master's call) draws fresh random keys, groups the slave SAEs by the node that
serves them, relays the keys to every such node over a least-cost route (retrying around a
hop that failed), and settles: only when every target has stored the keys are they committed
everywhere and handed to the master. If any target cannot be reached the transaction is
discarded at the targets that stored it and the caller gets `RelayError` (HTTP 503): no key is
ever available at one end only. `dec_keys` (a slave's call) hands out committed keys once per
slave. The HTTP layer (`etsi014.py`) maps these calls and their errors onto ETSI GS QKD 014.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from qkdnet.v1 import relay_pb2

from .delivered_keys import DeliveredKeys, NewKeys
from .errors import RelayError
from .relay import KeyRelay, link_key_bits
from .routing import Router

__all__ = ["MAX_ROUTE_ATTEMPTS", "KeyLimits", "KeyManager"]

MAX_ROUTE_ATTEMPTS = 3


@dataclass(frozen=True)
class KeyLimits:
    """What the KME announces in Status and enforces (sizes in bits)."""

    key_size: int = 256
    min_key_size: int = 64
    max_key_size: int = 8192
    max_key_per_request: int = 1024
    max_key_count: int = 100_000
    max_sae_id_count: int = 4


class KeyManager:
    """enc_keys / dec_keys / status for the SAEs of one node."""

    def __init__(
        self,
        node_id: str,
        local_saes: Sequence[str],
        directory: Mapping[str, str],
        relay: KeyRelay,
        router: Router,
        delivered: DeliveredKeys,
        limits: KeyLimits = KeyLimits(),
    ) -> None:
        self.node_id = node_id
        self.local_saes = frozenset(local_saes)
        self._directory = dict(directory)
        self._relay = relay
        self._router = router
        self._delivered = delivered
        self.limits = limits

    def node_of(self, sae: str) -> str | None:
        """The node serving `sae`: from the topology, else from routing advertisements."""
        return self._directory.get(sae) or self._router.node_of_sae(sae)

    async def stored_key_count(self, master: str, slave: str) -> int:
        """Keys ready at this node for `slave` from `master` (relayed ahead of demand)."""
        return await self._delivered.run(lambda db: db.count(master, slave))

    async def enc_keys(
        self, master: str, slaves: Sequence[str], number: int, size: int
    ) -> list[tuple[str, bytes]]:
        """New keys shared by `master` and every SAE of `slaves`, stored at all their nodes."""
        keys = [secrets.token_bytes(size // 8) for _ in range(number)]
        key_ids = [str(uuid.uuid4()) for _ in range(number)]
        transaction_id = uuid.uuid4().hex
        by_node: dict[str, list[str]] = {}
        for slave in slaves:
            node = self.node_of(slave)
            if node is None:
                raise RelayError(f"no node serves SAE {slave}", reason="no_route")
            by_node.setdefault(node, []).append(slave)

        def payload(target_saes: list[str]) -> relay_pb2.RelayPayload:
            return relay_pb2.RelayPayload(
                transaction_id=transaction_id,
                origin=self.node_id,
                master_sae=master,
                slave_saes=list(slaves),
                target_saes=target_saes,
                key_bits=size,
                key_ids=key_ids,
                keys=b"".join(keys),
                share=0,
                shares=1,
            )

        remote = {node: saes for node, saes in by_node.items() if node != self.node_id}
        results = await asyncio.gather(
            *(self._deliver(node, payload(saes)) for node, saes in remote.items()),
            return_exceptions=True,
        )
        stored = [node for node, r in zip(remote, results, strict=True) if r is None]
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is None:
            try:
                await asyncio.gather(
                    *(self._relay.settle(node, transaction_id, True) for node in stored)
                )
            except RelayError as exc:
                failure = exc
        if failure is not None:
            await self._discard(stored, transaction_id)
            self._relay.counters.transactions_failed += 1
            if isinstance(failure, RelayError):
                raise failure
            raise RelayError(f"relay failed: {failure}") from failure
        local = by_node.get(self.node_id)
        if local:
            new = NewKeys(
                transaction_id=transaction_id,
                origin=self.node_id,
                master=master,
                slaves=tuple(slaves),
                local_slaves=tuple(local),
                key_bits=size,
                key_ids=tuple(key_ids),
                keys=tuple(keys),
            )
            await self._delivered.run(lambda db: db.add(new, pending=False))
        self._relay.counters.transactions_committed += 1
        return list(zip(key_ids, keys, strict=True))

    async def _deliver(self, target: str, payload: relay_pb2.RelayPayload) -> None:
        """Relay to `target`, trying another route when a hop fails; RelayError at the end."""
        need = link_key_bits(payload.ByteSize())
        avoid: set[str] = set()
        last: RelayError | None = None
        for _ in range(MAX_ROUTE_ATTEMPTS):
            route = self._router.route(target, need, avoid_nodes=avoid)
            if route is None:
                break
            try:
                await self._relay.relay(route, payload)
                return
            except RelayError as exc:
                last = exc
                avoid.update(route[1:-1])  # try around every trusted node of the failed route
                if len(route) == 2:
                    break
        if last is not None:
            raise RelayError(f"no route to {target} delivered the keys: {last}", reason=last.reason)
        raise RelayError(
            f"no route from {self.node_id} to {target} with enough key", reason="no_route"
        )

    async def _discard(self, nodes: list[str], transaction_id: str) -> None:
        async def one(node: str) -> None:
            # On failure the target keeps the keys pending: never committed, never handed out.
            with contextlib.suppress(RelayError):
                await self._relay.settle(node, transaction_id, False)

        await asyncio.gather(*(one(node) for node in nodes))

    async def dec_keys(
        self, caller: str, master: str, key_ids: Sequence[str]
    ) -> list[tuple[str, bytes]]:
        """The keys `key_ids` issued by `master`, for slave `caller` (KeyNotFound, KeyNotYours)."""
        ids = list(key_ids)
        return await self._delivered.run(lambda db: db.take(caller, master, ids))
