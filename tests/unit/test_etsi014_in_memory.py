"""The ETSI GS QKD 014 API through aiohttp's test client: two KMEs whose relays, routers and
stores are joined in memory (qkdnet.node.testing), the caller named by a test header instead
of a TLS client certificate."""

from __future__ import annotations

import time
import types
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from qkdnet.node.edge.etsi014 import KeyDeliveryServer
from qkdnet.node.edge.relay_codec import RELAY_CODEC
from qkdnet.node.identity import Identity, Role
from qkdnet.node.protocol.key_manager import DeliveryPolicy, KeyManager
from qkdnet.node.protocol.relay import KeyRelay
from qkdnet.node.protocol.relay_messages import LinkState, LinkStateAdvert
from qkdnet.node.protocol.routing import Router
from qkdnet.node.store.delivered_keys import DeliveredKeys
from qkdnet.node.store.key_store import KeyStore
from qkdnet.node.testing import InMemoryRelayNetwork, store_same_key

DOMAIN = "etsi.qkdnet"
DIRECTORY = {"sae-a": "a", "sae-b": "b"}
PREFIX = "/api/v1/keys"


def _identify(request: web.Request) -> Identity | None:
    """The caller, as the test header says: "sae/sae-a", "node/b"; none without the header."""
    who = request.headers.get("X-Test-Caller")
    if who is None:
        return None
    role, _, name = who.partition("/")
    return Identity(DOMAIN, Role(role), name)


def _advert(node: str, peer: str, bits: int) -> LinkStateAdvert:
    state = LinkState(peer=peer, up=True, bits_out=bits, bits_in=bits)
    return LinkStateAdvert(
        origin=node, sequence=time.time_ns(), links=(state,), saes=(f"sae-{node}",)
    )


@asynccontextmanager
async def _kmes(
    tmp_path: Path, blocks: int = 4
) -> AsyncIterator[dict[str, TestClient[web.Request, web.Application]]]:
    """Nodes a and b, one link between them holding the same key at both ends (`blocks` blocks
    of 64 kbit, alternately for each direction); a test client for each node's API."""
    network = InMemoryRelayNetwork()
    clients = {}
    async with AsyncExitStack() as stack:
        stores = {}
        for node, peer in (("a", "b"), ("b", "a")):
            store = await KeyStore.open(tmp_path / f"{node}.sqlite")
            stack.push_async_callback(store.close)
            stores[node] = (peer, store)
        await store_same_key([store for _, store in stores.values()], blocks=blocks)
        for node, (peer, store) in stores.items():
            delivered = await DeliveredKeys.open(tmp_path / f"{node}-delivered.sqlite")
            stack.push_async_callback(delivered.close)
            links: dict[str, Any] = {peer: types.SimpleNamespace(store=store)}
            saes = frozenset({f"sae-{node}"})
            relay = KeyRelay(
                node, links, delivered, network.peers_of(node), saes, codec=RELAY_CODEC
            )
            network.add(relay)
            router = Router(node)
            for origin, other in ((node, peer), (peer, node)):
                router.accept(_advert(origin, other, 128_000))
            manager = KeyManager(
                node, [f"sae-{node}"], DIRECTORY, relay, router, delivered,
                policy=DeliveryPolicy(pool_keys=0),
            )  # fmt: skip
            server = KeyDeliveryServer(manager, node, DIRECTORY, DOMAIN, identify=_identify)
            client: TestClient[web.Request, web.Application] = TestClient(TestServer(server.app))
            await client.start_server()
            stack.push_async_callback(client.close)
            clients[node] = client
        yield clients


async def test_keys_asked_at_one_kme_are_fetched_at_the_other(tmp_path: Path) -> None:
    async with _kmes(tmp_path) as kme:
        a, b = kme["a"], kme["b"]
        status = await a.get(f"{PREFIX}/sae-b/status", headers={"X-Test-Caller": "sae/sae-a"})
        assert status.status == 200
        assert (await status.json())["slave_SAE_ID"] == "sae-b"
        issued = await a.post(
            f"{PREFIX}/sae-b/enc_keys",
            json={"number": 3, "size": 256},
            headers={"X-Test-Caller": "sae/sae-a"},
        )
        assert issued.status == 200, await issued.text()
        keys = (await issued.json())["keys"]
        assert len(keys) == 3
        ids = [{"key_ID": key["key_ID"]} for key in keys]
        # Only the slave may fetch them, once.
        stranger = await b.post(
            f"{PREFIX}/sae-a/dec_keys", json={"key_IDs": ids}, headers={"X-Test-Caller": "node/b"}
        )
        assert stranger.status == 401
        fetched = await b.post(
            f"{PREFIX}/sae-a/dec_keys",
            json={"key_IDs": ids},
            headers={"X-Test-Caller": "sae/sae-b"},
        )
        assert fetched.status == 200, await fetched.text()
        assert (await fetched.json())["keys"] == keys
        again = await b.post(
            f"{PREFIX}/sae-a/dec_keys",
            json={"key_IDs": ids},
            headers={"X-Test-Caller": "sae/sae-b"},
        )
        assert again.status == 400
        assert "not found" in (await again.json())["message"]


async def test_errors_are_etsi_error_bodies(tmp_path: Path) -> None:
    async with _kmes(tmp_path) as kme:
        a = kme["a"]
        anonymous = await a.get(f"{PREFIX}/sae-b/status")
        assert anonymous.status == 401
        assert "message" in await anonymous.json()
        too_big = await a.post(
            f"{PREFIX}/sae-b/enc_keys",
            json={"number": 1, "size": 12},
            headers={"X-Test-Caller": "sae/sae-a"},
        )
        assert too_big.status == 400
        unknown = await a.get("/api/v1/nothing", headers={"X-Test-Caller": "sae/sae-a"})
        assert unknown.status == 404
        assert "message" in await unknown.json()


async def test_a_thousand_keys_each_way_arrive_once_and_alike(tmp_path: Path) -> None:
    """Volume through the API and the relay: 1,000 keys of 256 bits each way, asked in
    batches of 100, fetched once by the slave, every one of them different."""
    keys_each_way, batch = 1000, 100
    everything: set[str] = set()
    async with _kmes(tmp_path, blocks=12) as kme:
        for master, slave in (("a", "b"), ("b", "a")):
            issued: dict[str, str] = {}
            while len(issued) < keys_each_way:
                answer = await kme[master].post(
                    f"{PREFIX}/sae-{slave}/enc_keys",
                    json={"number": batch, "size": 256},
                    headers={"X-Test-Caller": f"sae/sae-{master}"},
                )
                assert answer.status == 200, await answer.text()
                issued |= {k["key_ID"]: k["key"] for k in (await answer.json())["keys"]}
            ids = list(issued)
            fetched: dict[str, str] = {}
            for start in range(0, len(ids), batch):
                answer = await kme[slave].post(
                    f"{PREFIX}/sae-{master}/dec_keys",
                    json={"key_IDs": [{"key_ID": i} for i in ids[start : start + batch]]},
                    headers={"X-Test-Caller": f"sae/sae-{slave}"},
                )
                assert answer.status == 200, await answer.text()
                fetched |= {k["key_ID"]: k["key"] for k in (await answer.json())["keys"]}
            assert fetched == issued
            again = await kme[slave].post(
                f"{PREFIX}/sae-{master}/dec_keys",
                json={"key_IDs": [{"key_ID": ids[-1]}]},
                headers={"X-Test-Caller": f"sae/sae-{slave}"},
            )
            assert again.status == 400, "a key reaches its slave once"
            everything |= set(issued.values())
    assert len(everything) == 2 * keys_each_way, "no key was ever handed out twice"
