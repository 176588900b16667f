"""ETSI GS QKD 015 over RESTCONF on a deployed ring (a - r1 - b, a - r2 - b; real node
processes, mutual TLS with the controller's certificate): every node's tree validates against
the official YANG modules, a 004 stream shows as an application whose QoS the controller
changes at both ends, and a virtual link created through RESTCONF pins the relay's route and
shows in `inspect`."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from qkdnet.node.edge.etsi004_client import StreamQos, StreamStatus
from qkdnet.orchestrator.plan.network_plan import NetworkPlan

from ..yang_model import validate
from .sae import deployed, ring_topology, sae_clients
from .test_key_streams import _client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

MODULE = "etsi-qkd-sdn-node"
CLI = [sys.executable, "-m", "qkdnet.orchestrator.cli.main"]


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetworkPlan]:
    topology = ring_topology("sdnring", frame_bits=100_000)
    with deployed(topology, tmp_path_factory.mktemp("sdn")) as plan:
        yield plan


class Controller:
    """The SDN controller: RESTCONF calls with the deployment's controller certificate."""

    def __init__(self, plan: NetworkPlan, session: aiohttp.ClientSession) -> None:
        creds = plan.controller_credentials
        self.ssl = ssl.create_default_context(cafile=str(creds.ca))
        self.ssl.load_cert_chain(str(creds.cert), str(creds.key))
        self.plan = plan
        self.session = session

    def url(self, node: str, path: str = "") -> str:
        return self.plan.nodes[node].restconf_url + path

    async def call(self, method: str, node: str, path: str = "", body: Any = None) -> Any:
        async with self.session.request(
            method, self.url(node, path), json=body, ssl=self.ssl
        ) as answer:
            text = await answer.text()
            return answer.status, json.loads(text) if text else None


def _apps(tree: dict[str, Any]) -> dict[str, dict[str, Any]]:
    node = tree[f"{MODULE}:qkd_node"]
    return {app["app_id"]: app for app in node["qkd_applications"].get("qkd_app", [])}


async def _sdn(plan: NetworkPlan) -> None:
    async with aiohttp.ClientSession() as session:
        controller = Controller(plan, session)
        for node in plan.nodes:
            status, tree = await controller.call("GET", node)
            assert status == 200, tree
            validate(tree)
            links = tree[f"{MODULE}:qkd_node"]["qkd_links"]["qkd_link"]
            assert len(links) == 2
        # A 004 stream is an application at both ends; the controller changes its QoS.
        async with _client(plan, "sae-a") as a, _client(plan, "sae-b") as b:
            qos = StreamQos(key_chunk_size=32, max_bps=2048, timeout=5000, ttl=600)
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                opened = await a.open_connect("qkd://sae-a", "qkd://sae-b", qos)
                if opened.status is StreamStatus.PEER_NOT_CONNECTED:
                    break
                assert asyncio.get_running_loop().time() < deadline, opened
                await asyncio.sleep(0.5)
            assert opened.ksid is not None
            joined = await b.open_connect("qkd://sae-b", "qkd://sae-a", qos, opened.ksid)
            assert joined.status is StreamStatus.SUCCESS
            app_id = str(opened.ksid)
            status, tree = await controller.call("GET", "a")
            validate(tree)
            app = _apps(tree)[app_id]
            assert app["app_status"] == "etsi-qkd-node-types:ON"
            assert app["app_qos"]["max_bandwidth"] == 2048
            assert len(app["backing_qkdl_id"]) == 2  # two hops
            path = f"/qkd_applications/qkd_app={app_id}/app_qos"
            status, _ = await controller.call(
                "PATCH", "a", path, {f"{MODULE}:app_qos": {"max_bandwidth": 1024}}
            )
            assert status == 204
            for node in ("a", "b"):
                status, tree = await controller.call("GET", node)
                validate(tree)
                assert _apps(tree)[app_id]["app_qos"]["max_bandwidth"] == 1024
            status, body = await controller.call(
                "PATCH", "a", path, {f"{MODULE}:app_qos": {"max_bandwidth": 10**9}}
            )
            assert status == 409
            assert (
                "the route can carry" in body["ietf-restconf:errors"]["error"][0]["error-message"]
            )
            # The stream goes on at the new rate, the same key at both ends.
            first = await a.get_key(opened.ksid, 3)
            second = await b.get_key(opened.ksid, 3)
            assert first.status is second.status is StreamStatus.SUCCESS
            assert first.key == second.key
            await a.close(opened.ksid)
        # A virtual link a -> b through the trusted node the relay does not take on its own.
        async with sae_clients(plan) as sae:
            plain = await sae["sae-a"].enc_container(
                "sae-b", number=1, extension_mandatory=[{"qkdnet_pool": False}]
            )
            free_route = plain["key_container_extension"]["qkdnet_relay"]["routes"][0]["route"]
            other = "r2" if free_route[1] == "r1" else "r1"
            ids = {n: await _node_uuid(controller, n) for n in plan.nodes}
            qkdl_id = str(uuid.uuid4())
            link = {
                "qkdl_id": qkdl_id,
                "qkdl_type": "etsi-qkd-node-types:VIRT",
                "qkdl_local": {"qkdn_id": ids["a"]},
                "qkdl_remote": {"qkdn_id": ids["b"]},
                "virt_next_hop": [ids[other]],
                "virt_bandwidth": 64,
            }
            # Its bandwidth must be left on every hop as the routers see the links now: a link
            # whose store just filled advertises less for a moment, so try again (bounded).
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                status, body = await controller.call(
                    "POST", "a", "/qkd_links", {f"{MODULE}:qkd_link": [link]}
                )
                if status != 409 or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(1.0)
            assert status == 201, body
            status, tree = await controller.call("GET", "a")
            validate(tree)
            pinned = await sae["sae-a"].enc_container(
                "sae-b", number=1, extension_mandatory=[{"qkdnet_pool": False}]
            )
            route = pinned["key_container_extension"]["qkdnet_relay"]["routes"][0]["route"]
            assert route == ["a", other, "b"]
            shown = await asyncio.to_thread(_inspect, plan)
            assert shown["virtual_links"] == [
                {
                    "node": "a",
                    "qkdl_id": qkdl_id,
                    "remote": "b",
                    "path": ["a", other, "b"],
                    "bandwidth_bps": 64,
                    "usable": True,
                }
            ]
            status, _ = await controller.call("DELETE", "a", f"/qkd_links/qkd_link={qkdl_id}")
            assert status == 204
            assert (await asyncio.to_thread(_inspect, plan))["virtual_links"] == []


async def _node_uuid(controller: Controller, node: str) -> str:
    status, body = await controller.call("GET", node, "/qkdn_id")
    assert status == 200
    value: str = body[f"{MODULE}:qkdn_id"]
    return value


def _inspect(plan: NetworkPlan) -> dict[str, Any]:
    done = subprocess.run(
        [*CLI, "inspect", "--name", plan.name, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"COLUMNS": "200"},
        check=True,
    )
    shown: dict[str, Any] = json.loads(done.stdout)
    return shown


def test_the_sdn_view_of_a_ring(ring: NetworkPlan) -> None:
    asyncio.run(_sdn(ring))
