"""Hybrid keys (ETSI 014 vendor extension qkdnet_hybrid) between two KMEs joined in memory:
real relays, stores and key managers, real ML-KEM-768; the combiners against their test
vectors."""

from __future__ import annotations

import base64
import logging
import time
import types
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from qkdnet.node.core import pqc_kem
from qkdnet.node.core.hybrid_kdf import arnika_key, hybrid_key
from qkdnet.node.edge.etsi014 import KeyDeliveryServer
from qkdnet.node.edge.relay_codec import RELAY_CODEC
from qkdnet.node.identity import Identity, Role
from qkdnet.node.protocol import hybrid_keys
from qkdnet.node.protocol.hybrid_keys import HybridKeys
from qkdnet.node.protocol.key_manager import DeliveryPolicy, KeyManager
from qkdnet.node.protocol.relay import KeyRelay
from qkdnet.node.protocol.relay_messages import LinkState, LinkStateAdvert
from qkdnet.node.protocol.routing import Router
from qkdnet.node.store.delivered_keys import DeliveredKeys
from qkdnet.node.store.key_store import KeyStore
from qkdnet.node.testing import InMemoryKemNetwork, InMemoryRelayNetwork, store_same_key

DOMAIN = "hybrid.qkdnet"
DIRECTORY = {"sae-a": "a", "sae-b": "b", "sae-c": "b"}
PREFIX = "/api/v1/keys"
HYBRID = {"extension_mandatory": [{"qkdnet_hybrid": True}]}

Client = TestClient[web.Request, web.Application]


def test_the_combiners_match_their_test_vectors() -> None:
    # pqc-hybrid.md: ss = 00..1f, k_qkd = 20..3f, ct = 1,088 zero bytes, key ID below.
    key = hybrid_key(
        bytes(range(32)), bytes(range(32, 64)), bytes(1088), "00000000-0000-4000-8000-000000000000"
    )
    assert key.hex() == "776107f596a4d41e9506514cb3f0f7dcc1bbff429772319eb7e53e52a66b2cb4"
    # arnika's HKDF-SHA3-256(qkd || pqc): qkd = 00..1f, pqc = 20..3f.
    psk = arnika_key(bytes(range(32)), bytes(range(32, 64)))
    assert psk.hex() == "caf685058441de131bb857ee1549af45bb93b9c2748bfc47a72ce1abf7563a7c"
    assert arnika_key(bytes(range(32, 64)), bytes(range(32))).hex().startswith("22cb8dec")


def _identify(request: web.Request) -> Identity | None:
    who = request.headers.get("X-Test-Caller")
    return Identity(DOMAIN, Role.SAE, who) if who else None


def _advert(node: str, peer: str, saes: tuple[str, ...]) -> LinkStateAdvert:
    state = LinkState(peer=peer, up=True, bits_out=128_000, bits_in=128_000)
    return LinkStateAdvert(origin=node, sequence=time.time_ns(), links=(state,), saes=saes)


class Spy:
    """What the master's KME combined: the QKD keys it was given and the secret it got."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.qkd: dict[str, bytes] = {}
        self.secrets: list[bytes] = []
        real_combine, real_encapsulate = HybridKeys.combine, pqc_kem.encapsulate

        async def combine(
            hybrid: HybridKeys, master: str, node: str, keys: Sequence[tuple[str, bytes]]
        ) -> list[tuple[str, bytes]]:
            self.qkd.update(keys)
            return await real_combine(hybrid, master, node, keys)

        def encapsulate(public_key: bytes) -> tuple[bytes, bytes]:
            secret, ciphertext = real_encapsulate(public_key)
            self.secrets.append(secret)
            return secret, ciphertext

        monkeypatch.setattr(HybridKeys, "combine", combine)
        monkeypatch.setattr(hybrid_keys, "encapsulate", encapsulate)


@asynccontextmanager
async def _kmes(tmp_path: Path) -> AsyncIterator[tuple[dict[str, Client], InMemoryKemNetwork]]:
    relays, kems = InMemoryRelayNetwork(), InMemoryKemNetwork()
    saes = {"a": ("sae-a",), "b": ("sae-b", "sae-c")}
    clients = {}
    async with AsyncExitStack() as stack:
        stores = {}
        for node, peer in (("a", "b"), ("b", "a")):
            stores[node] = (peer, await KeyStore.open(tmp_path / f"{node}.sqlite"))
            stack.push_async_callback(stores[node][1].close)
        await store_same_key([store for _, store in stores.values()], blocks=4)
        for node, (peer, store) in stores.items():
            delivered = await DeliveredKeys.open(tmp_path / f"{node}-delivered.sqlite")
            stack.push_async_callback(delivered.close)
            links: dict[str, Any] = {peer: types.SimpleNamespace(store=store)}
            relay = KeyRelay(
                node, links, delivered, relays.peers_of(node), frozenset(saes[node]),
                codec=RELAY_CODEC,
            )  # fmt: skip
            relays.add(relay)
            router = Router(node)
            router.accept(_advert(node, peer, saes[node]))
            router.accept(_advert(peer, node, saes[peer]))
            manager = KeyManager(
                node, saes[node], DIRECTORY, relay, router, delivered,
                policy=DeliveryPolicy(pool_keys=0),
            )  # fmt: skip
            hybrid = HybridKeys(node, delivered, kems.peers_of(node))
            kems.add(hybrid)
            server = KeyDeliveryServer(
                manager, node, DIRECTORY, DOMAIN, identify=_identify, hybrid=hybrid
            )
            client: Client = TestClient(TestServer(server.app))
            await client.start_server()
            stack.push_async_callback(client.close)
            clients[node] = client
        yield clients, kems


async def _enc(client: Client, slave: str, body: dict[str, Any]) -> tuple[int, Any]:
    answer = await client.post(
        f"{PREFIX}/{slave}/enc_keys", json=body, headers={"X-Test-Caller": "sae-a"}
    )
    return answer.status, await answer.json()


async def _dec(client: Client, caller: str, ids: list[str]) -> tuple[int, Any]:
    answer = await client.post(
        f"{PREFIX}/sae-a/dec_keys",
        json={"key_IDs": [{"key_ID": i} for i in ids]},
        headers={"X-Test-Caller": caller},
    )
    return answer.status, await answer.json()


async def test_hybrid_keys_match_at_both_ends_and_are_not_the_qkd_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    spy = Spy(monkeypatch)
    async with _kmes(tmp_path) as (kme, _):
        status, body = await _enc(kme["a"], "sae-b", {"number": 4, "size": 256, **HYBRID})
        assert status == 200, body
        assert body["key_container_extension"]["qkdnet_hybrid"]["kem"] == "ML-KEM-768"
        issued = {k["key_ID"]: base64.b64decode(k["key"]) for k in body["keys"]}
        status, fetched = await _dec(kme["b"], "sae-b", list(issued))
        assert status == 200, fetched
        assert {k["key_ID"]: base64.b64decode(k["key"]) for k in fetched["keys"]} == issued
        # Each hybrid key is the QKD key combined with the one ML-KEM secret of the request.
        assert len(spy.secrets) == 1
        assert set(spy.qkd) == set(issued)
        for key_id, key in issued.items():
            assert key != spy.qkd[key_id]
            assert len(key) == 32
        # Neither the secret nor any key is in the log.
        text = caplog.text
        for secret in [*spy.secrets, *spy.qkd.values(), *issued.values()]:
            assert secret.hex() not in text
            assert base64.b64encode(secret).decode() not in text


async def test_a_slave_kme_that_cannot_take_part_fails_the_request_and_keeps_nothing(
    tmp_path: Path,
) -> None:
    async with _kmes(tmp_path) as (kme, kems):
        kems.down.add("b")
        status, body = await _enc(kme["a"], "sae-b", {"number": 2, "size": 256, **HYBRID})
        assert status == 503, body
        # Plain keys still work, and what the failed request relayed was withdrawn at b.
        status, body = await _enc(kme["a"], "sae-b", {"number": 1, "size": 256})
        assert status == 200
        status, _ = await _dec(kme["b"], "sae-b", [body["keys"][0]["key_ID"]])
        assert status == 200


async def test_hybrid_is_for_one_slave_and_a_rotated_key_is_fetched_again(tmp_path: Path) -> None:
    async with _kmes(tmp_path) as (kme, kems):
        status, body = await _enc(
            kme["a"],
            "sae-b",
            {"number": 1, "additional_slave_SAE_IDs": ["sae-c"], **HYBRID},
        )
        assert status == 400
        assert "one slave SAE" in body["message"]
        optional = {"extension_optional": [{"qkdnet_hybrid": True}]}
        status, body = await _enc(
            kme["a"], "sae-b", {"number": 1, "additional_slave_SAE_IDs": ["sae-c"], **optional}
        )
        assert status == 200
        assert "qkdnet_hybrid" not in body["key_container_extension"]
        # b replaces its ML-KEM key twice (a restart would too): a's cached key is unknown there.
        assert (await _enc(kme["a"], "sae-b", {"number": 1, **HYBRID}))[0] == 200
        b = kems.kmes["b"]
        for _ in range(2):
            b._rotate_s = 0.0
            b.public_key()
        b._rotate_s = 3600.0
        status, body = await _enc(kme["a"], "sae-b", {"number": 1, **HYBRID})
        assert status == 200, body
        key = body["keys"][0]
        status, fetched = await _dec(kme["b"], "sae-b", [key["key_ID"]])
        assert fetched["keys"] == [key]
