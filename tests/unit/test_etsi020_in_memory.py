"""The ETSI GS QKD 020 API of a border through aiohttp's test client: the JSON of the
standard, its problem details, and who may call (the caller named by a test header instead of
a TLS client certificate). The border behind it relays into a domain joined in memory."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from qkdnet.node.edge.etsi020 import ACK_PATH, EXT_KEYS_PATH, VOID_PATH, InterworkingServer
from qkdnet.node.identity import Identity, Role

from .test_interworking_in_memory import _count, _domains, _take

PEER = Identity("x.qkdnet", Role.NODE, "xb")
PEER_URL = "https://xb.example"


def _identify(request: web.Request) -> Identity | None:
    who = request.headers.get("X-Test-Caller")
    if who is None:
        return None
    domain, role, name = who.split("/")
    return Identity(domain, Role(role), name)


CALLER = {"X-Test-Caller": "x.qkdnet/node/xb"}


@asynccontextmanager
async def _api(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], dict[str, Any]]]:
    async with _domains(tmp_path, cipher=False) as parts:
        server = InterworkingServer(
            parts["kms"]["yb"], PEER, PEER_URL, "https://yb.example", identify=_identify
        )
        client: TestClient[Any, Any] = TestClient(TestServer(server.app))
        await client.start_server()
        try:
            yield client, parts
        finally:
            await client.close()


def _container(key_id: str, **changes: Any) -> dict[str, Any]:
    body = {
        "keys": [{"key_id": key_id, "value": base64.b64encode(bytes(range(32))).decode()}],
        "initiator_sae_id": "sae-a",
        "target_sae_ids": ["sae-c"],
    }
    return body | changes


def _problem(data: dict[str, Any], status: int, detail: str) -> None:
    assert data["type"].startswith("https://qkd.etsi.org/gs020-interop-kms/"), data
    assert data["status"] == status
    assert detail in data["details"], data
    assert all(isinstance(v, str) for v in data["details"].values())


async def test_versions_announce_v1_and_the_synchronous_mode(tmp_path: Path) -> None:
    async with _api(tmp_path) as (client, _):
        answer = await client.get("/kmapi/versions", headers=CALLER)
        assert answer.status == 200
        assert await answer.json() == {"versions": ["v1"], "capabilities": ["synchronous_mode"]}
        document = await (await client.get("/kmapi/openapi.json", headers=CALLER)).json()
        assert document["openapi"].startswith("3.1")
        assert set(document["paths"]) >= {EXT_KEYS_PATH, ACK_PATH, VOID_PATH, "/kmapi/versions"}
        assert document["servers"][0]["url"] == "https://yb.example"


async def test_a_synchronous_transfer_is_relayed_and_answered_with_its_acks(
    tmp_path: Path,
) -> None:
    async with _api(tmp_path) as (client, parts):
        key_id = str(uuid.uuid4())
        answer = await client.post(EXT_KEYS_PATH, json=_container(key_id), headers=CALLER)
        assert answer.status == 200, await answer.text()
        assert await answer.json() == [
            {
                "key_id_container": [{"key_id": key_id}],
                "ack_status": "relayed",
                "initiator_sae_id": "sae-a",
                "target_sae_ids": ["sae-c"],
            }
        ]
        assert await _take(parts, "c", "sae-c", "sae-a", [key_id]) == [(key_id, bytes(range(32)))]


async def test_an_asynchronous_transfer_is_accepted_and_acknowledged_at_the_peer(
    tmp_path: Path,
) -> None:
    async with _api(tmp_path) as (client, parts):
        key_id = str(uuid.uuid4())
        body = _container(key_id, ack_callback_url=PEER_URL + ACK_PATH)
        answer = await client.post(EXT_KEYS_PATH, json=body, headers=CALLER)
        assert answer.status == 202, await answer.text()
        assert await answer.read() == b""
        # The acknowledgement goes to xb's 020 side (in memory here): xb awaited nothing, so
        # it refused the ack, and yb withdrew the keys it had relayed (nobody will use them).
        for _ in range(1000):  # bounded: 10 s on a loaded machine
            if ("yb", "void") in parts["borders"].calls:
                break
            await asyncio.sleep(0.01)
        assert parts["kms"]["yb"].counters.acks_undelivered == 1
        assert parts["borders"].calls[:2] == [("yb", "ack"), ("yb", "void")]
        assert await _count(parts, "c") == 0


@pytest.mark.parametrize(
    ("path", "body", "status", "detail"),
    [
        (EXT_KEYS_PATH, {"keys": []}, 400, "missing_parameters"),
        (EXT_KEYS_PATH, _container("not-a-uuid"), 400, "missing_parameters"),
        (EXT_KEYS_PATH, _container(str(uuid.uuid4()), target_sae_ids=["x" * 65]), 400,
         "missing_parameters"),
        (EXT_KEYS_PATH, _container(str(uuid.uuid4()), target_sae_ids=["nobody"]), 400,
         "target_sae_id_not_recognized"),
        (EXT_KEYS_PATH, _container(str(uuid.uuid4()), ack_callback_url="https://evil/ack"), 401,
         "unauthorized"),
        (EXT_KEYS_PATH,
         _container(str(uuid.uuid4()), extension_mandatory={"E99999_route": "short"}), 503,
         "unsupported_mandatory_extension"),
        (ACK_PATH, [{"key_id_container": [], "ack_status": "done", "initiator_sae_id": "a",
                     "target_sae_ids": ["b"]}], 400, "ack_not_understood"),
        (ACK_PATH, [{"key_id_container": [{"key_id": str(uuid.uuid4())}],
                     "ack_status": "relayed", "initiator_sae_id": "a", "target_sae_ids": ["b"]}],
         400, "key_not_present"),
        (VOID_PATH, {"key_ids": [], "initiator_sae_id": "sae-a", "target_sae_ids": ["sae-c"]},
         400, "no_all_confirmation"),
        (VOID_PATH, {"key_ids": "all"}, 400, "key_voiding_error"),
    ],
)  # fmt: skip
async def test_refusals_are_problem_details_of_the_standard(
    tmp_path: Path, path: str, body: Any, status: int, detail: str
) -> None:
    async with _api(tmp_path) as (client, parts):
        answer = await client.post(path, json=body, headers=CALLER)
        assert answer.status == status, await answer.text()
        assert answer.content_type == "application/json"
        _problem(await answer.json(), status, detail)
        assert await _count(parts, "c") == 0


@pytest.mark.parametrize(
    "caller",
    [None, "y.qkdnet/node/yb", "y.qkdnet/node/c", "x.qkdnet/node/a", "x.qkdnet/sae/sae-a"],
)
async def test_only_the_peer_border_may_call(tmp_path: Path, caller: str | None) -> None:
    async with _api(tmp_path) as (client, _):
        headers = {"X-Test-Caller": caller} if caller else {}
        for answer in (
            await client.get("/kmapi/versions", headers=headers),
            await client.post(EXT_KEYS_PATH, json=_container(str(uuid.uuid4())), headers=headers),
        ):
            assert answer.status == 401
            _problem(await answer.json(), 401, "unauthorized")


async def test_unknown_paths_methods_and_bodies_get_problem_details(tmp_path: Path) -> None:
    async with _api(tmp_path) as (client, _):
        for answer, status in (
            (await client.get("/kmapi/v1/nothing", headers=CALLER), 404),
            (await client.get(EXT_KEYS_PATH, headers=CALLER), 405),
            (await client.post(EXT_KEYS_PATH, data=b"{", headers=CALLER), 400),
        ):
            assert answer.status == status
            assert (await answer.json())["status"] == status
