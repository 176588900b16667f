"""Key relay between two domains over ETSI GS QKD 020, in memory: domain X (a, border xb) and
domain Y (border yb, c), the borders joined by a QKD link whose key pads what crosses
(qkdnet.node.testing: InMemoryRelayNetwork per domain, InMemoryBorders between them)."""

from __future__ import annotations

import asyncio
import base64
import os
import time
import types
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from qkdnet.node.edge.relay_codec import RELAY_CODEC
from qkdnet.node.errors import KeyStoreError, RelayError
from qkdnet.node.protocol.border_link import OTP_EXTENSION, LinkHopCipher
from qkdnet.node.protocol.interworking import BorderKms, PeerKms
from qkdnet.node.protocol.interworking_messages import (
    AckStatus,
    ExtKey,
    InterworkingRefusal,
    KeyTransfer,
    VoidRequest,
)
from qkdnet.node.protocol.key_manager import DeliveryPolicy, KeyManager
from qkdnet.node.protocol.relay import KeyRelay, link_key_bits
from qkdnet.node.protocol.relay_messages import LinkState, LinkStateAdvert
from qkdnet.node.protocol.routing import Router
from qkdnet.node.store.border_journal import BorderJournal, InFlight
from qkdnet.node.store.delivered_keys import DeliveredKeys, DeliveredKeysDb, NewKeys
from qkdnet.node.store.key_store import KeyStore, KeyStoreDb
from qkdnet.node.testing import InMemoryBorders, InMemoryRelayNetwork, store_same_key

LINKS = [("a", "xb"), ("xb", "yb"), ("yb", "c")]
DOMAINS = {"x": ["a", "xb"], "y": ["yb", "c"]}
SAES = {"a": ["sae-a"], "c": ["sae-c"], "xb": [], "yb": []}
# What each domain's KMEs know: its own SAEs, and the other domain's as served by its border.
DIRECTORY = {
    "x": {"sae-a": "a", "sae-c": "xb"},
    "y": {"sae-c": "c", "sae-a": "yb"},
}
BORDERS = {"xb": ("x", "yb", frozenset({"sae-c"})), "yb": ("y", "xb", frozenset({"sae-a"}))}
BLOCK_BITS = 64_000


def _advert(node: str, peers: list[str], saes: list[str]) -> LinkStateAdvert:
    links = tuple(LinkState(peer=p, up=True, bits_out=128_000, bits_in=128_000) for p in peers)
    return LinkStateAdvert(origin=node, sequence=time.time_ns(), links=links, saes=tuple(saes))


@asynccontextmanager
async def _domains(
    tmp_path: Path,
    cipher: bool = True,
    peers: Callable[[str, str], PeerKms] | None = None,
    urls: Mapping[str, str] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Every part of the two domains; `cipher` False: the borders share no link (one site).
    `peers(node, peer)` gives a border its `PeerKms` (default: joined in memory); `urls` are
    the borders' 020 base URLs (for their callbacks)."""
    stores: dict[tuple[str, str], KeyStore] = {}
    borders = InMemoryBorders()
    parts: dict[str, Any] = {
        "stores": stores,
        "borders": borders,
        "delivered": {},
        "managers": {},
        "relays": {},
        "kms": {},
    }
    async with AsyncExitStack() as stack:
        for x, y in LINKS:
            for end, peer in ((x, y), (y, x)):
                store = await KeyStore.open(tmp_path / f"{end}-{peer}.sqlite")
                stack.push_async_callback(store.close)
                stores[(end, peer)] = store
            await store_same_key([stores[(x, y)], stores[(y, x)]], block_bits=BLOCK_BITS)
        for domain, nodes in DOMAINS.items():
            network = InMemoryRelayNetwork()
            for node in nodes:
                delivered = await DeliveredKeys.open(tmp_path / f"{node}-delivered.sqlite")
                stack.push_async_callback(delivered.close)
                links: dict[str, Any] = {
                    peer: types.SimpleNamespace(store=store)
                    for (end, peer), store in stores.items()
                    if end == node
                }
                relay = KeyRelay(
                    node,
                    links,
                    delivered,
                    network.peers_of(node),
                    frozenset(SAES[node]),
                    codec=RELAY_CODEC,
                )
                network.add(relay)
                router = Router(node)
                for other in nodes:
                    neighbours = [p for (end, p) in stores if end == other and p in nodes]
                    announced = [s for s, n in DIRECTORY[domain].items() if n == other]
                    router.accept(_advert(other, neighbours, announced))
                manager = KeyManager(
                    node, SAES[node], DIRECTORY[domain], relay, router, delivered,
                    policy=DeliveryPolicy(pool_keys=0),
                )  # fmt: skip
                parts["delivered"][node] = delivered
                parts["relays"][node] = relay
                parts["managers"][node] = manager
        parts["journals"] = {}
        for node, (_, peer, peer_saes) in BORDERS.items():
            relay = parts["relays"][node]
            journal = await BorderJournal.open(tmp_path / f"{node}-journal.sqlite")
            stack.push_async_callback(journal.close)
            parts["journals"][node] = journal
            base = (urls or {}).get(node, f"https://{node}.example")
            kms = BorderKms(
                node,
                peers(node, peer) if peers else borders.peer_of(node, peer),
                parts["managers"][node],
                peer_saes,
                callback_url=f"{base}/kmapi/v1/ext_keys/ack",
                cipher=LinkHopCipher(relay, peer) if cipher else None,
                ack_timeout_s=2.0,
                journal=journal,
            )
            relay.exporter = kms
            borders.add(node, kms)
            parts["kms"][node] = kms
            stack.push_async_callback(kms.close)
        yield parts


async def _take(parts: dict[str, Any], node: str, slave: str, master: str, ids: list[str]) -> Any:
    return await parts["delivered"][node].run(lambda db: db.take(slave, master, ids))


async def _count(parts: dict[str, Any], node: str) -> int:
    return int(await parts["delivered"][node].run(lambda db: DeliveredKeysDb.count(db)))


async def _available(parts: dict[str, Any], end: str, peer: str) -> int:
    return int(await parts["stores"][(end, peer)].run(lambda db: KeyStoreDb.available(db)))


@pytest.mark.parametrize("cipher", [True, False], ids=["shared-link", "same-site"])
async def test_keys_asked_in_one_domain_arrive_in_the_other(tmp_path: Path, cipher: bool) -> None:
    async with _domains(tmp_path, cipher) as parts:
        keys, report = await parts["managers"]["a"].enc_keys("sae-a", ["sae-c"], 5, 256)
        assert report.source == "relay"
        assert [r.target for r in report.routes] == ["xb"]
        ids = [key_id for key_id, _ in keys]
        assert await _take(parts, "c", "sae-c", "sae-a", ids) == keys
        # The borders kept nothing; each side of the border link spent the same key, and only
        # when the keys crossed padded with it.
        assert await _count(parts, "xb") == 0
        assert await _count(parts, "yb") == 0
        left, right = await _available(parts, "xb", "yb"), await _available(parts, "yb", "xb")
        assert left == right
        spent = 4 * BLOCK_BITS - left
        assert spent == (link_key_bits(5 * 32) if cipher else 0)
        assert parts["kms"]["xb"].counters.keys_exported == 5
        assert parts["kms"]["yb"].counters.keys_imported == 5
        # And back: an SAE of Y asks for keys with one of X.
        back, _ = await parts["managers"]["c"].enc_keys("sae-c", ["sae-a"], 3, 128)
        assert await _take(parts, "a", "sae-a", "sae-c", [k for k, _ in back]) == back


async def test_a_border_that_serves_an_sae_hands_its_keys_across_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The master's KME is the border itself: its keys go over 020 at once, with no relay
    inside the domain (and are kept here for the master only once the peer has them)."""
    monkeypatch.setitem(SAES, "xb", ["sae-xb"])
    monkeypatch.setitem(DIRECTORY, "x", {**DIRECTORY["x"], "sae-xb": "xb"})
    monkeypatch.setitem(DIRECTORY, "y", {**DIRECTORY["y"], "sae-xb": "yb"})
    monkeypatch.setitem(BORDERS, "yb", ("y", "xb", frozenset({"sae-a", "sae-xb"})))
    async with _domains(tmp_path) as parts:
        manager = parts["managers"]["xb"]
        # sae-c is no local SAE of xb, though xb is its node here: no unlimited local supply.
        assert await manager.stored_key_count("sae-xb", "sae-c") == 0
        keys, report = await manager.enc_keys("sae-xb", ["sae-c"], 4, 256)
        assert report.source == "relay"
        assert await _take(parts, "c", "sae-c", "sae-xb", [k for k, _ in keys]) == keys
        assert await _count(parts, "xb") == 0  # nothing kept at the border for sae-c
        assert parts["kms"]["xb"].counters.keys_exported == 4
        # And to it: an SAE of Y asks for keys with the border's own SAE.
        back, _ = await parts["managers"]["c"].enc_keys("sae-c", ["sae-xb"], 2, 256)
        assert await _take(parts, "xb", "sae-xb", "sae-c", [k for k, _ in back]) == back


def _restarted(parts: dict[str, Any], node: str) -> BorderKms:
    """Border `node` as it starts again after a crash: a new BorderKms (nothing in memory) on
    the same journal, joined to the same peer."""
    old = parts["kms"][node]
    peer = BORDERS[node][1]
    kms = BorderKms(
        node,
        parts["borders"].peer_of(node, peer),
        parts["managers"][node],
        old.peer_saes,
        callback_url=old.callback_url,
        cipher=LinkHopCipher(parts["relays"][node], peer),
        ack_timeout_s=2.0,
        journal=parts["journals"][node],
    )
    parts["relays"][node].exporter = kms
    parts["borders"].add(node, kms)
    return kms


async def test_a_border_that_dies_before_its_export_is_settled_voids_it_at_the_peer(
    tmp_path: Path,
) -> None:
    async with _domains(tmp_path) as parts:
        keys = NewKeys(
            transaction_id="t1",
            origin="a",
            master="sae-a",
            slaves=("sae-c",),
            local_slaves=("sae-c",),
            key_bits=256,
            key_ids=tuple(str(uuid.uuid4()) for _ in range(3)),
            keys=tuple(os.urandom(32) for _ in range(3)),
            ttl_s=60.0,
        )
        await parts["kms"]["xb"].export(keys)  # the peer has them; the origin never settles
        assert await _count(parts, "c") == 3
        pending = await parts["journals"]["xb"].run(lambda db: db.pending())
        assert [item.direction for item in pending] == ["export"]
        assert await _restarted(parts, "xb").recover(attempts=1) == 3
        assert await _count(parts, "c") == 0  # no key at one end only
        assert await parts["journals"]["xb"].run(lambda db: db.pending()) == []


async def test_a_border_that_dies_before_its_ack_went_out_voids_the_import_on_both_sides(
    tmp_path: Path,
) -> None:
    async with _domains(tmp_path) as parts:
        ids = [str(uuid.uuid4()) for _ in range(2)]
        given = [(key_id, os.urandom(32)) for key_id in ids]
        # yb relayed keys from X to c, wrote its journal, and died before acknowledging.
        await parts["managers"]["yb"].relay_given("sae-a", ["sae-c"], given, 256)
        item = InFlight(f"import:{ids[0]}", "import", tuple(ids), "sae-a", ("sae-c",), "")
        await parts["journals"]["yb"].run(lambda db: db.write(item))
        assert await _count(parts, "c") == 2
        calls = len(parts["borders"].calls)
        assert await _restarted(parts, "yb").recover(attempts=1) == 2
        assert await _count(parts, "c") == 0
        assert len(parts["borders"].calls) > calls  # and xb was told to void them too


async def test_a_peer_border_that_does_not_answer_fails_the_request_and_leaves_no_key(
    tmp_path: Path,
) -> None:
    async with _domains(tmp_path) as parts:
        parts["borders"].down.add("yb")
        with pytest.raises(RelayError) as caught:
            await parts["managers"]["a"].enc_keys("sae-a", ["sae-c"], 4, 256)
        assert "did not answer" in str(caught.value)
        assert await _count(parts, "c") == 0
        assert await _count(parts, "xb") == 0


async def test_an_acknowledgement_that_never_arrives_voids_the_keys_on_both_sides(
    tmp_path: Path,
) -> None:
    async with _domains(tmp_path) as parts:
        parts["borders"].drop_acks.add("yb")  # yb relays the keys into Y, but xb never hears
        # yb, its ack undelivered, withdraws them in Y and voids them towards xb (or xb gives
        # up first and voids them at yb): either way the request fails.
        with pytest.raises(RelayError, match=r"voided|not acknowledged"):
            await parts["managers"]["a"].enc_keys("sae-a", ["sae-c"], 4, 256)
        for _ in range(100):
            if parts["kms"]["yb"].counters.acks_undelivered:
                break
            await _sleep()
        assert await _count(parts, "c") == 0
        assert await _count(parts, "a") == 0


async def test_keys_the_origin_withdraws_later_are_voided_across_the_border(
    tmp_path: Path,
) -> None:
    async with _domains(tmp_path) as parts:
        keys, _ = await parts["managers"]["a"].enc_keys("sae-a", ["sae-c"], 3, 256)
        ids = [key_id for key_id, _ in keys]
        await parts["managers"]["a"].abandon("sae-a", ["sae-c"], ids)  # the master hung up
        for _ in range(100):  # the void crosses asynchronously
            if await _count(parts, "c") == 0:
                break
            await _sleep()
        assert await _count(parts, "c") == 0
        with pytest.raises(KeyStoreError, match="not found"):
            await _take(parts, "c", "sae-c", "sae-a", ids)
        assert parts["kms"]["yb"].counters.keys_voided == 3


def _transfer(**changes: Any) -> KeyTransfer:
    fields: dict[str, Any] = {
        "keys": (ExtKey("0b9c1f0e-4f7a-4a4e-9b51-8f1c6f2d0a11", bytes(32)),),
        "initiator": "sae-a",
        "targets": ("sae-c",),
        "callback_url": None,
        "extension_mandatory": None,
    }
    return KeyTransfer(**(fields | changes))


@pytest.mark.parametrize(
    ("changes", "status", "detail"),
    [
        ({"targets": ("nobody",)}, 400, "target_sae_id_not_recognized"),
        ({"targets": ("sae-a",), "initiator": "sae-z"}, 400, "invalid_routing"),
        ({"initiator": "sae-c", "targets": ("sae-c",)}, 400, "invalid_routing"),
        ({"keys": ()}, 400, "missing_parameters"),
        ({"extension_mandatory": {"E32473_unknown": True}}, 503, "unsupported_mandatory_extension"),
        ({}, 401, "unauthorized"),  # the borders share a link: keys must cross padded
    ],
)
async def test_a_transfer_that_cannot_be_taken_is_refused_before_anything_is_kept(
    tmp_path: Path, changes: dict[str, Any], status: int, detail: str
) -> None:
    async with _domains(tmp_path) as parts:
        with pytest.raises(InterworkingRefusal) as caught:
            await parts["kms"]["yb"].receive_transfer(_transfer(**changes))
        assert (caught.value.status, caught.value.detail) == (status, detail)
        assert caught.value.nothing_kept == (status in (400, 401))
        assert await _count(parts, "c") == 0


async def test_a_tampered_padded_transfer_is_refused_and_burns_no_link_key(
    tmp_path: Path,
) -> None:
    async with _domains(tmp_path) as parts:
        sealed = await parts["relays"]["xb"].seal_hop("yb", b"context", bytes(32))
        forged = {"header": base64.b64encode(sealed.header).decode(), "tag": "AAAAAAAAAAA="}
        before = await _available(parts, "yb", "xb")
        with pytest.raises(InterworkingRefusal) as caught:
            await parts["kms"]["yb"].receive_transfer(
                _transfer(
                    keys=(ExtKey("0b9c1f0e-4f7a-4a4e-9b51-8f1c6f2d0a12", sealed.ciphertext),),
                    extension_mandatory={OTP_EXTENSION: forged},
                )
            )
        assert caught.value.status == 401
        assert await _available(parts, "yb", "xb") == before


async def test_synchronous_transfers_and_voids_answer_with_their_acks(tmp_path: Path) -> None:
    async with _domains(tmp_path, cipher=False) as parts:
        yb = parts["kms"]["yb"]
        key_id = "0b9c1f0e-4f7a-4a4e-9b51-8f1c6f2d0a13"
        acks = await yb.receive_transfer(_transfer(keys=(ExtKey(key_id, bytes(range(32))),)))
        assert acks is not None
        assert [a.status for a in acks] == [AckStatus.RELAYED]
        assert await _take(parts, "c", "sae-c", "sae-a", [key_id]) == [(key_id, bytes(range(32)))]
        # A second transfer with that ID is refused; a void of it (already fetched: nothing to
        # withdraw) and of an unknown ID says so key by key.
        with pytest.raises(InterworkingRefusal, match="used before"):
            await yb.receive_transfer(_transfer(keys=(ExtKey(key_id, bytes(32)),)))
        unknown = "0b9c1f0e-4f7a-4a4e-9b51-8f1c6f2d0a14"
        void = VoidRequest(key_ids=(key_id, unknown), initiator="sae-a", targets=("sae-c",))
        answer = await yb.receive_void(void)
        assert answer is not None
        assert {a.status: a.key_ids for a in answer} == {
            AckStatus.VOIDED: (key_id,),
            AckStatus.KEY_NOT_PRESENT: (unknown,),
        }
        # An empty key_ids voids everything between the SAEs, and only when confirmed.
        with pytest.raises(InterworkingRefusal) as caught:
            await yb.receive_void(VoidRequest(key_ids=(), initiator="sae-a", targets=("sae-c",)))
        assert caught.value.detail == "no_all_confirmation"
        # An unknown ID voided before its transfer arrives stays refused.
        with pytest.raises(InterworkingRefusal, match="used before"):
            await yb.receive_transfer(_transfer(keys=(ExtKey(unknown, bytes(32)),)))


async def _sleep() -> None:
    await asyncio.sleep(0.02)
