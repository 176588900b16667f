"""The Key Management Entity of a node: keys for SAE pairs, made here and relayed to slaves.

`enc_keys` (the master's call) hands out keys from the pool of its (master, slave) pair when it
can, and makes the rest: it draws fresh random keys, groups the slave SAEs by the node that
serves them, relays the keys to every such node over a least-cost route (retrying around the
trusted nodes of a route that failed), and settles: only when every target has stored the keys
are they committed everywhere and handed to the master. If any target cannot be reached the
transaction is discarded at the targets that stored it and the caller gets `RelayError`
(HTTP 503): no key is ever available at one end only. `dec_keys` (a slave's call) hands out
committed keys once per slave. The HTTP layer (`etsi014.py`) maps these calls and their errors
onto ETSI GS QKD 014.

Pools: for every pair of a local master SAE and a slave SAE served by another node, a bounded
pool of keys of the default size is relayed ahead of demand (`fill_pools_forever`), from link
key the routes can spare: a fill never takes a link's last half. A pool is refilled to full once
it is down to its low-water mark, a batch a transaction. Pool keys are committed at the
slave's node before they enter the pool, so handing one out needs no relay at all.

Multi-path: each key can be split into two XOR shares sent over node-disjoint routes, so that no
single trusted node sees a key (a neighbour reached over its direct link needs no split).

Time to live (`DeliveryPolicy.key_ttl_s`): a slave's KME keeps a key waiting for its slave that
long after the master got it, then discards it. Pool keys are handed out only while younger than
`key_ttl_s`, and relayed with twice that as their time to live, so that their slave always has
`key_ttl_s` too; older pool keys are dropped here and withdrawn at the slave's node. Keys whose
master hung up before its answer was written are withdrawn at every slave's node (`abandon`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..config import KeyApiConfig
from ..errors import KeyStoreError, RelayError
from ..store.delivered_keys import (
    DEFAULT_KEY_TTL_S,
    DeliveredKeys,
    DeliveredKeysDb,
    PoolKey,
)
from ..structured_log import log_event
from .key_transactions import KeyTransactions, RouteReport
from .relay import KeyRelay, link_key_bits
from .routing import Router

__all__ = [
    "DeliveryCounters",
    "DeliveryPolicy",
    "DeliveryReport",
    "KeyLimits",
    "KeyManager",
    "delivery_settings",
]

# A pair whose fill failed is left alone this long before the next try.
_FILL_BACKOFF_S = 5.0
# A pool fill only runs when every link of its route holds this many times what it takes.
_FILL_RESERVE = 2

logger = logging.getLogger("qkdnet.node.protocol.key_manager")

EventSink = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class KeyLimits:
    """What the KME announces in Status and enforces (sizes in bits)."""

    key_size: int = 256
    min_key_size: int = 64
    max_key_size: int = 8192
    max_key_per_request: int = 1024
    max_key_count: int = 100_000
    max_sae_id_count: int = 4


@dataclass(frozen=True)
class DeliveryPolicy:
    """How keys reach other nodes: pool bounds and the multi-path default."""

    pool_keys: int = 256  # per (local master, remote slave) pair; 0: no pools
    pool_batch: int = 128  # keys per fill transaction
    multipath: bool = False  # default for requests and pool fills
    key_ttl_s: float = DEFAULT_KEY_TTL_S  # how long a slave has to fetch a key


@dataclass
class DeliveryCounters:
    """Keys this node's KME discarded as their origin, since it started."""

    keys_abandoned: int = 0  # the master was gone before its answer was written
    pool_keys_expired: int = 0  # older than the pool's age limit


@dataclass
class DeliveryReport:
    """What one enc_keys did: where its keys came from and how they travelled."""

    source: str  # "local", "pool", "relay" or "pool+relay"
    pooled: int = 0
    relayed: int = 0
    routes: list[RouteReport] = field(default_factory=list)
    ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "pooled": self.pooled,
            "relayed": self.relayed,
            "ms": round(self.ms, 3),
            "routes": [r.to_json() for r in self.routes],
        }


def delivery_settings(api: KeyApiConfig | None) -> tuple[KeyLimits, DeliveryPolicy]:
    """The limits and policy a node's ETSI 014 configuration sets; without one (a border that
    serves no SAE) the defaults, and no pools."""
    if api is None:
        return KeyLimits(), DeliveryPolicy(pool_keys=0)
    limits = KeyLimits(
        key_size=api.key_size,
        min_key_size=api.min_key_size,
        max_key_size=api.max_key_size,
        max_key_per_request=api.max_key_per_request,
        max_key_count=api.max_key_count,
        max_sae_id_count=api.max_sae_id_count,
    )
    policy = DeliveryPolicy(
        pool_keys=api.pool_keys,
        pool_batch=api.pool_batch,
        multipath=api.multipath,
        key_ttl_s=api.key_ttl_s,
    )
    return limits, policy


class KeyManager:
    """enc_keys / dec_keys / status for the SAEs of one node, and its pools."""

    def __init__(
        self,
        node_id: str,
        local_saes: Sequence[str],
        directory: Mapping[str, str],
        relay: KeyRelay,
        router: Router,
        delivered: DeliveredKeys,
        limits: KeyLimits = KeyLimits(),
        policy: DeliveryPolicy = DeliveryPolicy(),
        on_event: EventSink | None = None,
    ) -> None:
        self.node_id = node_id
        self.local_saes = frozenset(local_saes)
        self._directory = dict(directory)
        self._relay = relay
        self._router = router
        self._delivered = delivered
        self.limits = limits
        self.policy = policy
        self._on_event = on_event
        self._pool_wake = asyncio.Event()
        self._backoff: dict[tuple[str, str], float] = {}
        self._refilling: set[tuple[str, str]] = set()
        # Pool keys an enc_keys holds while it relays the rest: they return if that fails, so
        # refills count them as still in the pool, which thus never grows past pool_keys.
        self._taken: Counter[tuple[str, str]] = Counter()
        self.counters = DeliveryCounters()
        self._transactions = KeyTransactions(node_id, relay, router, delivered)

    def node_of(self, sae: str) -> str | None:
        """The node serving `sae`: from the topology, else from routing advertisements."""
        return self._directory.get(sae) or self._router.node_of_sae(sae)

    def _elsewhere(self, slave: str) -> bool:
        """Whether `slave` is served by another node (or, from a border, in another domain)."""
        node = self.node_of(slave)
        return node is not None and (node != self.node_id or slave not in self.local_saes)

    def _pooled(self, master: str, slave: str) -> bool:
        """Whether (master, slave) has a pool here: master local, slave elsewhere."""
        return self.policy.pool_keys > 0 and master in self.local_saes and self._elsewhere(slave)

    async def stored_key_count(self, master: str, slave: str) -> int:
        """Keys this KME can hand `master` for `slave` at once, without relaying.

        For a slave on another node: the pool. For a slave on this node keys are drawn from the
        node's random generator on request, so there is no shortage: `max_key_count`.
        """
        if self.node_of(slave) == self.node_id and slave in self.local_saes:
            return self.limits.max_key_count
        if not self._pooled(master, slave):
            return 0
        counts = await self._delivered.run(
            lambda db: db.pool_counts(
                self.limits.key_size, self.policy.multipath, self.policy.key_ttl_s
            )
        )
        return counts.get((master, slave), 0)

    # -- enc_keys ----------------------------------------------------------------------------
    async def enc_keys(
        self,
        master: str,
        slaves: Sequence[str],
        number: int,
        size: int,
        *,
        multipath: bool | None = None,
        use_pool: bool = True,
    ) -> tuple[list[tuple[str, bytes]], DeliveryReport]:
        """New keys shared by `master` and every SAE of `slaves`, stored at all their nodes.

        `multipath` (default: the policy's) asks for XOR shares over node-disjoint routes;
        `use_pool` False relays every key on demand.
        """
        start = time.perf_counter()
        multipath = self.policy.multipath if multipath is None else multipath
        by_node = self._by_node(slaves)
        pooled: list[PoolKey] = []
        if (
            use_pool
            and len(slaves) == 1
            and size == self.limits.key_size
            and self._pooled(master, slaves[0])
        ):
            slave = slaves[0]
            pooled = await self._delivered.run(
                lambda db: db.pool_take(
                    master, slave, size, number, multipath, self.policy.key_ttl_s
                )
            )
            self._pool_wake.set()
        report = DeliveryReport(source="pool", pooled=len(pooled))
        fresh: list[tuple[str, bytes]] = []
        if len(pooled) < number:
            pair = (master, slaves[0])
            self._taken[pair] += len(pooled)
            try:
                fresh, report.routes = await self._transactions.run(
                    master,
                    slaves,
                    by_node,
                    number - len(pooled),
                    size,
                    multipath,
                    self.policy.key_ttl_s,
                )
            except (RelayError, KeyStoreError) as exc:
                if pooled:
                    await self._unused_pool_keys(master, slaves[0], multipath, pooled)
                self._event(
                    "relay_failed",
                    master=master,
                    slaves=list(slaves),
                    keys=number,
                    key_bits=size,
                    reason=exc.reason if isinstance(exc, RelayError) else "store_unavailable",
                    message=str(exc),
                )
                raise
            finally:
                self._taken[pair] -= len(pooled)
            remote = [slave for slave in slaves if self._elsewhere(slave)]
            report.source = "relay" if remote else "local"
            if pooled:
                report.source = "pool+relay"
            report.relayed = len(fresh) if remote else 0
        report.ms = (time.perf_counter() - start) * 1e3
        if report.source != "local":
            self._event(
                "key_delivered",
                master=master,
                slaves=list(slaves),
                keys=number,
                key_bits=size,
                **report.to_json(),
            )
        return [(k.key_id, k.key) for k in pooled] + fresh, report

    async def relay_given(
        self,
        master: str,
        slaves: Sequence[str],
        keys: Sequence[tuple[str, bytes]],
        size: int,
        ttl_s: float | None = None,
    ) -> DeliveryReport:
        """Relay keys made elsewhere (another domain's, over ETSI GS QKD 020; a key stream's
        chunks) from this node to the nodes of `slaves`, and commit them there: all or, with
        RelayError, none. They wait for their slaves `ttl_s` (default: the policy's)."""
        start = time.perf_counter()
        by_node = self._by_node(slaves)
        report = DeliveryReport(source="relay", relayed=len(keys))
        _, report.routes = await self._transactions.run(
            master,
            slaves,
            by_node,
            len(keys),
            size,
            False,
            self.policy.key_ttl_s if ttl_s is None else ttl_s,
            given=keys,
        )
        report.ms = (time.perf_counter() - start) * 1e3
        return report

    async def withdraw(self, slaves: Sequence[str], key_ids: Sequence[str], reason: str) -> int:
        """Withdraw keys this node relayed (as their origin) at every node serving one of
        `slaves`; how many were there. RelayError when a node could not be reached."""
        withdrawn = 0
        for node in self._nodes_of(slaves):
            withdrawn += await self._withdraw(node, list(key_ids), reason)
        return withdrawn

    async def _unused_pool_keys(
        self, master: str, slave: str, multipath: bool, keys: list[PoolKey]
    ) -> None:
        """Pool keys taken for a request that failed: back where they were (committed at the
        slave, unused); if the store cannot take them back, withdrawn at the slave's node."""
        try:
            await self._delivered.run(lambda db: db.pool_return(master, slave, multipath, keys))
        except KeyStoreError:
            node = self.node_of(slave)
            with contextlib.suppress(RelayError, KeyStoreError):
                if node is not None:
                    await self._withdraw(node, [key.key_id for key in keys], "abandoned")

    def _nodes_of(self, slaves: Sequence[str]) -> list[str]:
        """The nodes serving `slaves` (those known), each once, sorted."""
        return sorted({node for node in map(self.node_of, slaves) if node is not None})

    def _by_node(self, slaves: Sequence[str]) -> dict[str, list[str]]:
        by_node: dict[str, list[str]] = {}
        for slave in slaves:
            node = self.node_of(slave)
            if node is None:
                raise RelayError(f"no node serves SAE {slave}", reason="no_route")
            by_node.setdefault(node, []).append(slave)
        return by_node

    async def abandon(self, master: str, slaves: Sequence[str], key_ids: Sequence[str]) -> None:
        """`master` never got `key_ids` (it hung up before they were written): withdraw them at
        every node serving one of `slaves`. Where that fails, their time to live ends them."""
        if not key_ids:
            return
        self.counters.keys_abandoned += len(key_ids)
        withdrawn = 0
        for node in self._nodes_of(slaves):
            try:
                withdrawn += await self._withdraw(node, list(key_ids), "abandoned")
            except (RelayError, KeyStoreError) as exc:
                log_event(logger, logging.WARNING, "void_failed", node=node, error=str(exc))
        log_event(
            logger,
            logging.WARNING,
            "keys_abandoned",
            master=master,
            keys=len(key_ids),
            withdrawn=withdrawn,
        )
        self._event("keys_abandoned", master=master, slaves=list(slaves), keys=len(key_ids))

    async def _withdraw(self, node: str, key_ids: list[str], reason: str) -> int:
        if node == self.node_id:
            return await self._delivered.run(lambda db: db.void(self.node_id, key_ids))
        return await self._relay.void(node, key_ids, reason)

    async def expire_pools_once(self) -> int:
        """Drop pool keys older than the time to live and withdraw them at their slaves'
        nodes; returns how many were dropped."""
        dropped = await self._delivered.run(lambda db: db.pool_expire(self.policy.key_ttl_s))
        if not dropped:
            return 0
        self.counters.pool_keys_expired += len(dropped)
        by_node: dict[str, list[str]] = {}
        for slave, key_id in dropped:
            node = self.node_of(slave)
            if node is not None:
                by_node.setdefault(node, []).append(key_id)
        for node, ids in sorted(by_node.items()):
            try:
                await self._withdraw(node, ids, "pool_expired")
            except (RelayError, KeyStoreError) as exc:  # they expire there on their own
                log_event(logger, logging.INFO, "void_failed", node=node, error=str(exc))
        log_event(logger, logging.INFO, "pool_keys_expired", keys=len(dropped))
        self._pool_wake.set()
        return len(dropped)

    async def expire_pools_forever(self, interval_s: float) -> None:
        """`expire_pools_once` every `interval_s`."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.expire_pools_once()
            except KeyStoreError as exc:  # the store failed this time: next time
                log_event(logger, logging.WARNING, "pool_expiry_failed", error=str(exc))

    # -- pools -------------------------------------------------------------------------------
    def pool_pairs(self) -> list[tuple[str, str]]:
        """Every (master, slave) pair this node keeps a pool for."""
        return sorted(
            (master, slave)
            for master in self.local_saes
            for slave in self._directory
            if self._pooled(master, slave)
        )

    async def fill_pools_forever(self, idle_s: float = 1.0) -> None:
        """Keep every pool topped up, one batch at a time, the emptiest pool first."""
        if not self.pool_pairs():
            return
        while True:
            try:
                filled = await self.fill_once()
            except Exception:  # a bug here must not end pool filling for good
                logger.exception("pool fill failed")
                filled = False
            if not filled:
                self._pool_wake.clear()
                # asyncio.timeout, not wait_for (see Conversation.receive): a cancellation
                # while woken must end the loop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(idle_s):
                        await self._pool_wake.wait()

    async def fill_once(self) -> bool:
        """Relay one batch into the emptiest pool that needs and can get one; True if done."""
        size, multipath = self.limits.key_size, self.policy.multipath
        max_age = self.policy.key_ttl_s
        counts = Counter(
            await self._delivered.run(lambda db: db.pool_counts(size, multipath, max_age))
        )
        counts.update(self._taken)
        now = time.monotonic()
        # A pool refills once it is down to its low-water mark, and then up to full: topping up
        # after every few keys taken would cost a relay transaction (a durable write on every
        # hop) for each.
        full = self.policy.pool_keys
        low_water = max(full - self.policy.pool_batch, full // 2)
        for pair in self.pool_pairs():
            count = counts.get(pair, 0)
            if count <= low_water:
                self._refilling.add(pair)
            elif count >= full:
                self._refilling.discard(pair)
        candidates = sorted(
            (counts.get(pair, 0), pair)
            for pair in self._refilling
            if self._backoff.get(pair, 0) <= now
        )
        for count, (master, slave) in candidates:
            number = min(self.policy.pool_batch, self.policy.pool_keys - count)
            target = self.node_of(slave)
            assert target is not None
            need = _FILL_RESERVE * link_key_bits(number * (size // 8))
            spare = self._routes_or_none(target, need, multipath)
            if not spare:
                continue
            try:
                # Twice the time to live: a key may wait in the pool for one, and its slave then
                # still has a whole one to fetch it.
                keys, routes = await self._transactions.run(
                    master, [slave], {target: [slave]}, number, size, multipath, 2 * max_age
                )
            except (RelayError, KeyStoreError) as exc:
                self._backoff[(master, slave)] = now + _FILL_BACKOFF_S
                reason = exc.reason if isinstance(exc, RelayError) else "store_unavailable"
                log_event(logger, logging.INFO, "pool_fill_failed", slave=slave, reason=reason)
                continue
            try:
                await self._delivered.run(
                    partial(
                        DeliveredKeysDb.pool_add,
                        master=master,
                        slave=slave,
                        multipath=multipath,
                        keys=keys,
                    )
                )
            except KeyStoreError as exc:  # committed at the slave, lost here: withdraw them
                log_event(logger, logging.WARNING, "pool_store_failed", error=str(exc))
                with contextlib.suppress(RelayError, KeyStoreError):
                    await self._withdraw(target, [key_id for key_id, _ in keys], "abandoned")
                self._backoff[(master, slave)] = now + _FILL_BACKOFF_S
                continue
            self._event(
                "pool_filled",
                master=master,
                slaves=[slave],
                keys=number,
                key_bits=size,
                pool=count + number,
                routes=[r.to_json() for r in routes],
            )
            return True
        return False

    def _routes_or_none(self, target: str, need: int, multipath: bool) -> list[list[str]]:
        try:
            return self._transactions.routes(target, need, set(), multipath)
        except RelayError:
            return []

    def _event(self, kind: str, **fields: Any) -> None:
        if self._on_event is not None:
            self._on_event(kind, {"node": self.node_id, **fields})

    # -- dec_keys ----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def dec_keys(
        self, caller: str, master: str, key_ids: Sequence[str]
    ) -> AsyncIterator[list[tuple[str, bytes]]]:
        """The keys `key_ids` issued by `master`, for slave `caller` (KeyNotFound, KeyNotYours),
        handed over for good only when the block they are given to completes.

        Use as `async with manager.dec_keys(...) as keys: <check the slave is still there>`, then
        answer: the keys are set aside for the slave first (a store that cannot be written fails
        the request here, with nothing changed; no other request gets them meanwhile); if the
        block raises (the slave hung up), they wait for it again.
        """
        ids = list(key_ids)
        keys = await self._delivered.run(lambda db: db.take(caller, master, ids, hold=True))
        delivered = False
        try:
            yield keys
            delivered = True
        finally:
            try:
                await self._delivered.run(lambda db: db.release(caller, ids, delivered))
            except KeyStoreError as exc:  # set aside they stay, until their time to live ends
                log_event(logger, logging.ERROR, "keys_not_released", error=str(exc))
