"""ETSI GS QKD 015 over RESTCONF through aiohttp's test client: a node of a ring (a - r1 - b,
a - r2 - b) with its router fed the ring's adverts; answers validated against the official YANG
modules; virtual links created, used by routing, refused and deleted."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from qkdnet.node.edge.restconf import MEDIA_TYPE, RestconfServer
from qkdnet.node.identity import Identity, Role
from qkdnet.node.protocol.rate_book import RateBook
from qkdnet.node.protocol.relay_messages import LinkState, LinkStateAdvert
from qkdnet.node.protocol.routing import Router
from qkdnet.node.protocol.sdn_view import LinkView015, SdnNode, link_uuid, node_uuid
from qkdnet.node.protocol.virtual_links import VirtualLinks

from ..yang_model import YANG_DIR, validate

DOMAIN = "ring.qkdnet"
ROOT = "/restconf/data/etsi-qkd-sdn-node:qkd_node"
RING = {"a": ("r1", "r2"), "r1": ("a", "b"), "r2": ("a", "b"), "b": ("r1", "r2")}
RATE = 50_000
Client = TestClient[web.Request, web.Application]
CONTROLLER = {"X-Test-Caller": "controller/controller"}


def _identify(request: web.Request) -> Identity | None:
    who = request.headers.get("X-Test-Caller")
    if who is None:
        return None
    role, _, name = who.partition("/")
    return Identity(DOMAIN, Role(role), name)


def _links() -> list[LinkView015]:
    return [
        LinkView015("a--r1", "r1", "transmitter", "bb84", "running", 10_000, 42_000.0, 0.031, 2.1),
        LinkView015("a--r2", "r2", "transmitter", "bb84", "full", 80_000, 0.0, 0.029, 3.15),
    ]


@asynccontextmanager
async def _node() -> AsyncIterator[tuple[Client, Router, SdnNode]]:
    router = Router("a")
    for origin, peers in RING.items():
        links = tuple(
            LinkState(peer=p, up=True, bits_out=1 << 22, bits_in=1 << 22, rate_out_bps=RATE)
            for p in peers
        )
        router.accept(LinkStateAdvert(origin, time.time_ns(), links, ()))
    book = RateBook(router)
    sdn = SdnNode(
        "a", DOMAIN, "0.1.0", list(RING), _links, router, book, VirtualLinks("a", router, book)
    )
    server = RestconfServer(sdn, DOMAIN, identify=_identify)
    client: Client = TestClient(TestServer(server.app))
    await client.start_server()
    try:
        yield client, router, sdn
    finally:
        await client.close()


async def _get(client: Client, path: str) -> tuple[int, Any]:
    answer = await client.get(path, headers=CONTROLLER)
    if answer.status == 200:
        assert answer.content_type == MEDIA_TYPE
    return answer.status, await answer.json(content_type=None)


def test_the_vendored_modules_are_etsis_bytes() -> None:
    digests = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(YANG_DIR.glob("*.yang"))
    }
    assert digests == {
        "etsi-qkd-node-types.yang": (
            "7883ff57519ae201581d8171ea26b4f0fba92cc0c7bdc0bbf9d71568296f9f33"
        ),
        "etsi-qkd-sdn-node.yang": (
            "4b7b3fdbdbbf258cb9a4231d2617d87c2f51f094ad7e5413605727cb04a38030"
        ),
    }


async def test_the_node_tree_validates_against_the_yang_model() -> None:
    async with _node() as (client, _, sdn):
        status, tree = await _get(client, ROOT)
        assert status == 200
        validate(tree)
        node = tree["etsi-qkd-sdn-node:qkd_node"]
        assert node["qkdn_id"] == str(node_uuid(DOMAIN, "a"))
        links = {link["qkdl_id"]: link for link in node["qkd_links"]["qkd_link"]}
        one = links[str(link_uuid(DOMAIN, "a--r1"))]
        assert one["qkdl_status"] == "etsi-qkd-node-types:ACTIVE"
        assert one["qkdl_remote"]["qkdn_id"] == str(node_uuid(DOMAIN, "r1"))
        assert one["qkdl_performance"]["skr"] == 42_000
        assert one["qkdl_performance"]["phys_perf"][0]["value"] == "0.031"
        assert one["phys_channel_att"] == "2.100"
        full = links[str(link_uuid(DOMAIN, "a--r2"))]
        assert full["qkdl_status"] == "etsi-qkd-node-types:PASSIVE"  # holds key, distils not
        # The whole datastore, and parts of it, with and without a trailing slash.
        status, everything = await _get(client, "/restconf/data")
        assert status == 200
        assert everything == tree
        status, part = await _get(client, f"{ROOT}/qkd_interfaces/qkd_interface=2/")
        assert status == 200
        assert part["etsi-qkd-sdn-node:qkd_interface"][0]["qkdi_id"] == 2
        status, caps = await _get(client, f"{ROOT}/qkdn_capabilities")
        assert caps == {"etsi-qkd-sdn-node:qkdn_capabilities": node["qkdn_capabilities"]}
        assert sdn.qkdn_id == node["qkdn_id"]


async def test_a_virtual_link_is_pinned_in_routing_until_deleted() -> None:
    async with _node() as (client, router, _):
        free = router.route("b")
        assert free is not None
        other = "r2" if free[1] == "r1" else "r1"
        qkdl_id = str(uuid.uuid4())
        link = {
            "qkdl_id": qkdl_id,
            "qkdl_type": "etsi-qkd-node-types:VIRT",
            "qkdl_local": {"qkdn_id": str(node_uuid(DOMAIN, "a"))},
            "qkdl_remote": {"qkdn_id": str(node_uuid(DOMAIN, "b"))},
            "virt_next_hop": [str(node_uuid(DOMAIN, other))],
            "virt_bandwidth": 10_000,
        }
        made = await client.post(
            f"{ROOT}/qkd_links", json={"etsi-qkd-sdn-node:qkd_link": [link]}, headers=CONTROLLER
        )
        assert made.status == 201, await made.text()
        assert made.headers["Location"].endswith(f"qkd_link={qkdl_id}")
        assert router.route("b") == ["a", other, "b"]
        status, tree = await _get(client, ROOT)
        validate(tree)
        status, entry = await _get(client, f"{ROOT}/qkd_links/qkd_link={qkdl_id}")
        virt = entry["etsi-qkd-sdn-node:qkd_link"][0]
        assert virt["qkdl_type"] == "etsi-qkd-node-types:VIRT"
        assert virt["virt_bandwidth"] == 10_000
        # Its bandwidth is reserved: a second one over the same hops gets what is left.
        again = dict(link, qkdl_id=str(uuid.uuid4()))
        twice = await client.post(
            f"{ROOT}/qkd_links/", json={"qkd_links": {"qkd_link": [again]}}, headers=CONTROLLER
        )
        assert twice.status == 409
        error = (await twice.json())["ietf-restconf:errors"]["error"][0]
        assert error["error-tag"] == "data-exists"
        gone = await client.delete(f"{ROOT}/qkd_links/qkd_link={qkdl_id}", headers=CONTROLLER)
        assert gone.status == 204
        assert router.pinned() == {}
        status, _ = await _get(client, f"{ROOT}/qkd_links/qkd_link={qkdl_id}")
        assert status == 404


async def test_refusals_are_restconf_errors() -> None:
    async with _node() as (client, _, _):

        async def error(answer: Any, status: int) -> dict[str, Any]:
            assert answer.status == status, await answer.text()
            body: dict[str, Any] = await answer.json(content_type=None)
            first: dict[str, Any] = body["ietf-restconf:errors"]["error"][0]
            return first

        assert (await error(await client.get(ROOT), 401))["error-tag"] == "access-denied"
        sae = {"X-Test-Caller": "sae/sae-a"}
        assert (await error(await client.get(ROOT, headers=sae), 403))["error-tag"] == (
            "access-denied"
        )
        await error(await client.get(f"{ROOT}/nothing", headers=CONTROLLER), 404)

        async def post(item: dict[str, Any]) -> Any:
            body = {"etsi-qkd-sdn-node:qkd_link": [item]}
            return await client.post(f"{ROOT}/qkd_links", json=body, headers=CONTROLLER)

        too_much = {
            "qkdl_id": str(uuid.uuid4()),
            "qkdl_type": "etsi-qkd-node-types:VIRT",
            "qkdl_remote": {"qkdn_id": str(node_uuid(DOMAIN, "b"))},
            "virt_bandwidth": 10 * RATE,
        }
        denied = await error(
            await post(too_much),
            409,
        )
        assert denied["error-tag"] == "resource-denied"
        assert "left" in denied["error-message"]
        physical = dict(too_much, qkdl_type="etsi-qkd-node-types:PHYS")
        await error(
            await post(physical),
            400,
        )
        stranger = dict(too_much, qkdl_remote={"qkdn_id": str(uuid.uuid4())}, virt_bandwidth=1)
        message = await error(
            await post(stranger),
            400,
        )
        assert "qkdl_remote.qkdn_id" in message["error-message"]
        not_an_object = dict(too_much, qkdl_remote="b", virt_bandwidth=1)
        message = await error(
            await post(not_an_object),
            400,
        )
        assert "qkdl_remote" in message["error-message"]
        phys_id = str(link_uuid(DOMAIN, "a--r1"))
        await error(
            await client.delete(f"{ROOT}/qkd_links/qkd_link={phys_id}", headers=CONTROLLER), 400
        )
        bad_json = await client.post(f"{ROOT}/qkd_links", data=b"{", headers=CONTROLLER)
        assert (await error(bad_json, 400))["error-tag"] == "malformed-message"
        location = {"etsi-qkd-sdn-node:qkd_node": {"qkdn_location_id": "lab 2"}}
        moved = await client.patch(ROOT, json=location, headers=CONTROLLER)
        assert moved.status == 204
        _status, node = await _get(client, f"{ROOT}/qkdn_location_id")
        assert node == {"etsi-qkd-sdn-node:qkdn_location_id": "lab 2"}
