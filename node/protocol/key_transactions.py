"""One key transaction: fresh keys made at their origin, relayed to every target node, settled.

`KeyTransactions.run` draws random keys, stores those for slaves on this node as pending,
relays the rest to each target node over a least-cost route (or as XOR shares over two
node-disjoint routes, multi-path), retrying around the trusted nodes of a route that failed
(`MAX_ROUTE_ATTEMPTS`), and settles: only when every target stored the keys are they committed
everywhere; otherwise they are discarded at every target, the failure is a `RelayError`, and
no key is ever available at one end only. The key manager (`key_manager.py`) runs one for
each enc_keys that needs relay and for each pool fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import KeyStoreError, RelayError
from ..store.delivered_keys import DeliveredKeys, NewKeys
from .relay import KeyRelay, link_key_bits
from .relay_messages import RelayPayload
from .routing import Router

__all__ = ["MAX_ROUTE_ATTEMPTS", "KeyTransactions", "RouteReport"]

MAX_ROUTE_ATTEMPTS = 3


@dataclass(frozen=True)
class RouteReport:
    """One relay of one transaction: the route and the wall time each node spent on it.

    `hop_ms[i]` is the time node `route[i]` spent, including everything after it.
    """

    target: str
    route: tuple[str, ...]
    hop_ms: tuple[float, ...]
    share: int = 0
    shares: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "route": list(self.route),
            "hop_ms": [round(ms, 3) for ms in self.hop_ms],
            "share": self.share,
            "shares": self.shares,
        }


class KeyTransactions:
    """Transactions from node `node_id`, over its relay, routed by its router."""

    def __init__(
        self, node_id: str, relay: KeyRelay, router: Router, delivered: DeliveredKeys
    ) -> None:
        self.node_id = node_id
        self._relay = relay
        self._router = router
        self._delivered = delivered

    async def run(
        self,
        master: str,
        slaves: Sequence[str],
        by_node: dict[str, list[str]],
        number: int,
        size: int,
        multipath: bool,
        ttl_s: float,
        given: Sequence[tuple[str, bytes]] | None = None,
    ) -> tuple[list[tuple[str, bytes]], list[RouteReport]]:
        """Make `number` keys, relay them to every remote target node and settle.

        Keys for slaves on this node are stored pending first, and committed with the others.
        RelayError when any target did not get them (they are then discarded everywhere).
        `given` relays these (key ID, key) pairs instead of fresh ones: keys that came from
        another domain (ETSI GS QKD 020), `number` of them, each `size` bits.
        """
        if given is None:
            keys = [secrets.token_bytes(size // 8) for _ in range(number)]
            uuids = [uuid.uuid4() for _ in range(number)]
        else:
            keys = [key for _, key in given]
            uuids = [uuid.UUID(key_id) for key_id, _ in given]
        key_ids = [str(u) for u in uuids]
        transaction_id = uuid.uuid4().hex

        def payload(target_saes: list[str]) -> RelayPayload:
            return RelayPayload(
                transaction_id=transaction_id,
                origin=self.node_id,
                master_sae=master,
                slave_saes=tuple(slaves),
                target_saes=tuple(target_saes),
                key_bits=size,
                key_uuids=b"".join(u.bytes for u in uuids),
                keys=b"".join(keys),
                shares=1,
                ttl_seconds=max(1, math.ceil(ttl_s)),
            )

        local = by_node.get(self.node_id)
        parts: frozenset[str] = frozenset()
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
                ttl_s=ttl_s,
            )
            parts = await self._relay.store_new(new)
        remote = {node: saes for node, saes in by_node.items() if node != self.node_id}
        results = await asyncio.gather(
            *(self._deliver(node, payload(saes), multipath) for node, saes in remote.items()),
            return_exceptions=True,
        )
        stored = [node for node, r in zip(remote, results, strict=True) if isinstance(r, list)]
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is None:
            try:
                committed = await asyncio.gather(
                    *(self._relay.settle(node, transaction_id, True) for node in stored)
                )
                if local:
                    committed += await self._relay.settle_parts(
                        transaction_id, self.node_id, True, parts
                    )
                if any(count != number for count in committed):
                    # A target lost some before they were committed (they expired pending).
                    raise RelayError(
                        f"a target committed {min(committed)} of {number} keys",
                        reason="settle_failed",
                    )
            except (RelayError, KeyStoreError) as exc:
                failure = exc
        if failure is not None:
            # Every target, not only those that answered: a target whose answer was lost (its
            # relay failed on the way back) may hold the keys all the same.
            await self._discard(list(remote), transaction_id)
            if local:
                with contextlib.suppress(KeyStoreError, RelayError):
                    await self._relay.settle_parts(transaction_id, self.node_id, False, parts)
            self._relay.counters.transactions_failed += 1
            if isinstance(failure, RelayError | KeyStoreError):
                raise failure
            raise RelayError(f"relay failed: {failure}") from failure
        self._relay.counters.transactions_committed += 1
        routes = [report for r in results if isinstance(r, list) for report in r]
        return list(zip(key_ids, keys, strict=True)), routes

    def routes(self, target: str, need: int, avoid: set[str], multipath: bool) -> list[list[str]]:
        """The routes of one attempt: one route, or two node-disjoint ones for multi-path."""
        if not multipath:
            route = self._router.route(target, need, avoid_nodes=avoid)
            return [route] if route else []
        routes = self._router.disjoint_routes(target, 2, need, avoid_nodes=avoid)
        if routes and len(routes[0]) == 2:
            return routes[:1]  # the direct link: no trusted node in between
        if len(routes) < 2:
            # Refused for good only when the network has no two such routes at all; when it
            # has them but a link is down or short of key, or a node restarting, try later.
            known = self._router.disjoint_routes(target, 2, usable_only=False)
            if len(known) < 2:
                raise RelayError(
                    f"no two node-disjoint routes from {self.node_id} to {target}",
                    reason="no_disjoint_routes",
                )
            return []  # they exist but lack key for now: a 503, worth trying again
        return routes

    async def _deliver(
        self, target: str, payload: RelayPayload, multipath: bool
    ) -> list[RouteReport]:
        """Relay to `target`, trying other routes when a hop fails; RelayError at the end."""
        need = link_key_bits(len(payload.keys))
        avoid: set[str] = set()
        last: RelayError | None = None
        for _ in range(MAX_ROUTE_ATTEMPTS):
            routes = self.routes(target, need, avoid, multipath)
            if not routes:
                break
            try:
                return await self._send_shares(target, routes, payload)
            except RelayError as exc:
                last = exc
                for route in routes:  # try around every trusted node of the failed routes
                    avoid.update(route[1:-1])
                if all(len(route) == 2 for route in routes):
                    break
        if last is not None:
            raise RelayError(f"no route to {target} delivered the keys: {last}", reason=last.reason)
        raise RelayError(
            f"no route from {self.node_id} to {target} with enough key", reason="no_route"
        )

    async def _send_shares(
        self, target: str, routes: list[list[str]], payload: RelayPayload
    ) -> list[RouteReport]:
        """Send the keys over `routes`: as they are over one, as XOR shares over several."""
        parts: list[RelayPayload] = []
        if len(routes) == 1:
            parts.append(payload)
        else:
            pads = [secrets.token_bytes(len(payload.keys)) for _ in routes[1:]]
            last = int.from_bytes(payload.keys, "big")
            for pad in pads:
                last ^= int.from_bytes(pad, "big")
            blobs = [*pads, last.to_bytes(len(payload.keys), "big")]
            share_set = uuid.uuid4().hex
            for index, blob in enumerate(blobs):
                parts.append(
                    replace(payload, keys=blob, share=index, shares=len(blobs), share_set=share_set)
                )
        acks = await asyncio.gather(
            *(self._relay.relay(route, part) for route, part in zip(routes, parts, strict=True)),
            return_exceptions=True,
        )
        for ack in acks:
            if isinstance(ack, BaseException):
                raise ack
        return [
            RouteReport(
                target=target,
                route=tuple(ack.route),
                hop_ms=tuple(us / 1e3 for us in ack.hop_micros),
                share=index,
                shares=len(parts),
            )
            for index, ack in enumerate(acks)
            if not isinstance(ack, BaseException)
        ]

    async def _discard(self, nodes: list[str], transaction_id: str) -> None:
        async def one(node: str) -> None:
            # When this fails the target keeps the keys pending (never handed out) until they
            # expire.
            with contextlib.suppress(RelayError):
                await self._relay.settle(node, transaction_id, False)

        await asyncio.gather(*(one(node) for node in nodes))

    # -- keys that never reached their master, and pool keys too old ----------------------------
