"""ETSI GS QKD 014 on real nodes: keys relayed across a five-node chain, the error contract,
TLS identity, and relay frames that must be refused."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import ssl
import types
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from qkdnet.node.edge.grpc_dial import credentials_from_files
from qkdnet.node.edge.grpc_errors import reason_of
from qkdnet.node.edge.relay_codec import RELAY_CODEC, frame_to_wire
from qkdnet.node.edge.relay_grpc import PeerChannels
from qkdnet.node.errors import Reason
from qkdnet.node.identity import Role
from qkdnet.node.protocol.relay import KeyRelay
from qkdnet.node.protocol.relay_messages import RelayFrame, RelayPayload
from qkdnet.node.store.delivered_keys import DeliveredKeys
from qkdnet.node.store.key_store import KeyStore
from qkdnet.orchestrator.client.controller import NodeClient
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.pki import CertificateAuthority

from .sae import Sae, assert_link_keys_used_alike, deployed, sae_clients, sae_context

pytestmark = pytest.mark.integration

KEYS = 300  # each way

POOL = 100
# chain5 with more SAEs: two at each end, so that multicast and "keys issued to others" can be
# exercised. Short, fast links so that the chain holds plenty of key after a few seconds.
TOPOLOGY = {
    "name": "kme-chain",
    "defaults": {"speedup": 20, "frame_bits": 100_000},
    "nodes": {
        "a": {"saes": ["sae-a", "sae-a2"]},
        "r1": {},
        "r2": {},
        "r3": {},
        "b": {"saes": ["sae-b", "sae-c", "sae-d"]},
    },
    "links": [
        {"endpoints": ["a", "r1"], "length_km": 5},
        {"endpoints": ["r1", "r2"], "length_km": 8},
        {"endpoints": ["r2", "r3"], "length_km": 6},
        {"endpoints": ["r3", "b"], "length_km": 4},
    ],
    "key_delivery": {"pool_keys": POOL},
}


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetworkPlan]:
    with deployed(TOPOLOGY, tmp_path_factory.mktemp("kme")) as plan:
        yield plan


@pytest.fixture
async def saes(plan: NetworkPlan) -> AsyncIterator[dict[str, Sae]]:
    async with sae_clients(plan) as clients:
        yield clients


async def test_status_tells_the_caller_and_limits(saes: dict[str, Sae]) -> None:
    status, body = await saes["sae-a"].call("GET", "sae-b/status")
    assert status == 200
    assert body["source_KME_ID"] == "a"
    assert body["target_KME_ID"] == "b"
    assert body["master_SAE_ID"] == "sae-a"
    assert body["slave_SAE_ID"] == "sae-b"
    assert body["min_key_size"] <= body["key_size"] <= body["max_key_size"]
    assert body["stored_key_count"] <= body["max_key_count"]
    assert body["max_SAE_ID_count"] >= 1
    # Two SAEs of one node: keys come from the node's generator, never short.
    status, body = await saes["sae-b"].call("GET", "sae-c/status")
    assert body["stored_key_count"] == body["max_key_count"]


async def test_keys_each_way_match_and_are_delivered_once(
    saes: dict[str, Sae],
) -> None:
    """Keys across a real deployment, asked in batches of 100; the volume (a thousand keys
    each way) is tested in memory (tests/unit/test_etsi014_in_memory.py)."""
    for master, slave in (("sae-a", "sae-b"), ("sae-b", "sae-a2")):
        issued: dict[str, str] = {}
        for _ in range(KEYS // 100):
            keys = await saes[master].enc(slave, number=100, size=256)
            assert len(keys) == 100
            issued.update({k["key_ID"]: k["key"] for k in keys})
        assert len(issued) == KEYS
        assert all(len(base64.b64decode(k)) == 32 for k in issued.values())
        ids = list(issued)
        fetched: dict[str, str] = {}
        for start in range(0, KEYS, 100):
            status, body = await saes[slave].call(
                "POST",
                f"{master}/dec_keys",
                json={"key_IDs": [{"key_ID": i} for i in ids[start : start + 100]]},
            )
            assert status == 200, body
            fetched.update({k["key_ID"]: k["key"] for k in body["keys"]})
        assert fetched == issued
        # Never twice: the slave's second ask finds nothing.
        status, body = await saes[slave].call(
            "GET", f"{master}/dec_keys", params={"key_ID": ids[0]}
        )
        assert status == 400
        assert body["message"] == "one or more keys specified are not found on KME"


async def test_multicast_reaches_every_slave_once_and_nobody_else(saes: dict[str, Sae]) -> None:
    keys = await saes["sae-a"].enc("sae-b", number=3, size=512, additional_slave_SAE_IDs=["sae-c"])
    ids = {"key_IDs": [{"key_ID": k["key_ID"]} for k in keys]}
    status, body = await saes["sae-d"].call("POST", "sae-a/dec_keys", json=ids)
    assert status == 401, body  # a valid SAE of the same KME, not named as a slave
    for slave in ("sae-b", "sae-c"):
        status, body = await saes[slave].call("POST", "sae-a/dec_keys", json=ids)
        assert status == 200, body
        assert [k["key"] for k in body["keys"]] == [k["key"] for k in keys]
        status, body = await saes[slave].call("POST", "sae-a/dec_keys", json=ids)
        assert status == 400


async def test_get_forms_and_keys_at_one_node(saes: dict[str, Sae]) -> None:
    status, body = await saes["sae-a"].call(
        "GET", "sae-b/enc_keys", params={"number": "2", "size": "1024"}
    )
    assert status == 200, body
    assert [len(base64.b64decode(k["key"])) for k in body["keys"]] == [128, 128]
    status, body = await saes["sae-b"].call(
        "GET", "sae-a/dec_keys", params={"key_ID": body["keys"][0]["key_ID"]}
    )
    assert status == 200, body
    # Master and slave on the same node: no relay at all.
    status, body = await saes["sae-c"].call("POST", "sae-d/enc_keys")
    assert status == 200, body
    status, got = await saes["sae-d"].call(
        "POST", "sae-c/dec_keys", json={"key_IDs": [{"key_ID": body["keys"][0]["key_ID"]}]}
    )
    assert status == 200
    assert got["keys"] == body["keys"]


VALIDATION = [
    # (method, path, json, params, status, message fragment)
    ("POST", "sae-b/enc_keys", {"number": 0}, None, 400, "number"),
    ("POST", "sae-b/enc_keys", {"number": -3}, None, 400, "number"),
    ("POST", "sae-b/enc_keys", {"number": "x"}, None, 400, "number"),
    ("POST", "sae-b/enc_keys", {"number": True}, None, 400, "number"),
    ("POST", "sae-b/enc_keys", {"number": 100_000}, None, 400, "at most"),
    ("POST", "sae-b/enc_keys", {"size": 0}, None, 400, "size"),
    ("POST", "sae-b/enc_keys", {"size": 100}, None, 400, "size shall be a multiple of 8"),
    ("POST", "sae-b/enc_keys", {"size": 8}, None, 400, "between"),
    ("POST", "sae-b/enc_keys", {"size": 1 << 20}, None, 400, "between"),
    ("GET", "sae-b/enc_keys", None, {"number": "1", "foo": "2"}, 400, "only number and size"),
    ("POST", "sae-b/enc_keys", {"additional_slave_SAE_IDs": []}, None, 400, "non-empty"),
    ("POST", "sae-b/enc_keys", {"additional_slave_SAE_IDs": ["sae-c", "sae-c"]}, None, 400, "dup"),
    ("POST", "sae-b/enc_keys", {"additional_slave_SAE_IDs": [" "]}, None, 400, "blank"),
    ("POST", "sae-b/enc_keys", {"additional_slave_SAE_IDs": ["nope"]}, None, 400, "unknown"),
    ("POST", "sae-b/enc_keys", {"additional_slave_SAE_IDs": ["sae-b"]}, None, 400, "master or"),
    ("POST", "sae-b/enc_keys", {"additional_slave_SAE_IDs": ["sae-a"]}, None, 400, "master or"),
    (
        "POST",
        "sae-b/enc_keys",
        {"additional_slave_SAE_IDs": ["sae-c", "sae-d", "sae-a2", "x", "y"]},
        None,
        400,
        "more than",
    ),
    (
        "POST",
        "sae-b/enc_keys",
        {"extension_mandatory": [{"abc_route_type": "direct"}]},
        None,
        400,
        "not all extension_mandatory parameters are supported",
    ),
    ("POST", "sae-b/enc_keys", [1, 2], None, 400, "JSON object"),
    ("POST", "nobody/enc_keys", None, None, 400, "unknown"),
    ("POST", "sae-a/enc_keys", None, None, 400, "caller"),
    ("GET", "/status", None, None, 400, "empty"),
    ("GET", "nobody/status", None, None, 400, "unknown"),
    ("POST", "sae-b/dec_keys", {"key_IDs": [{"key_ID": "not-a-uuid"}]}, None, 400, "UUID"),
    ("POST", "sae-b/dec_keys", {"key_IDs": []}, None, 400, "non-empty"),
    ("POST", "sae-b/dec_keys", {}, None, 400, "key_IDs"),
    ("GET", "sae-b/dec_keys", None, {"key_ID": ["a", "b"]}, 400, "more than once"),
    ("GET", "sae-b/dec_keys", None, {}, 400, "exactly one"),
    (
        "POST",
        "sae-b/dec_keys",
        {"key_IDs": [{"key_ID": str(uuid.uuid4())}]},
        None,
        400,
        "one or more keys specified are not found on KME",
    ),
    ("PUT", "sae-b/enc_keys", None, None, 405, "PUT is not allowed"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "params", "status", "fragment"),
    VALIDATION,
    ids=[f"{v[0]} {v[1]} {v[2] or v[3]}" for v in VALIDATION],
)
async def test_bad_requests_get_an_error_body(
    saes: dict[str, Sae],
    method: str,
    path: str,
    body: Any,
    params: Any,
    status: int,
    fragment: str,
) -> None:
    if params is not None:
        params = [(k, v) for k, vs in params.items() for v in ([vs] if isinstance(vs, str) else vs)]
    got, answer = await saes["sae-a"].call(method, path, json=body, params=params)
    assert got == status, answer
    assert fragment in answer["message"]


async def test_an_sae_of_another_node_is_unauthorised(plan: NetworkPlan) -> None:
    async with aiohttp.ClientSession() as session:
        # sae-b holds a valid certificate but is not served by node a.
        url = f"{plan.nodes['a'].key_api_url}/api/v1/keys/sae-a2/status"
        async with session.get(url, ssl=sae_context(plan, "sae-b")) as response:
            assert response.status == 401
            assert "not served" in (await response.json())["message"]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_tls_versions_and_foreign_ca(
    plan: NetworkPlan, tmp_path: Path, version: ssl.TLSVersion
) -> None:
    url = f"{plan.nodes['a'].key_api_url}/api/v1/keys/sae-b/status"
    context = sae_context(plan, "sae-a")
    context.minimum_version = context.maximum_version = version
    async with aiohttp.ClientSession() as session:
        async with session.get(url, ssl=context) as response:
            assert response.status == 200
        # The same SAE name, certified by another CA: refused during the handshake.
        rogue = CertificateAuthority(tmp_path / "rogue", "rogue CA").issue(
            Role.SAE, "sae-a", tmp_path / "rogue" / "sae-a"
        )
        foreign = ssl.create_default_context(cafile=str(plan.pki_dir / "ca.pem"))
        foreign.load_cert_chain(str(rogue.cert), str(rogue.key))
        foreign.minimum_version = foreign.maximum_version = version
        with pytest.raises(aiohttp.ClientError):
            async with session.get(url, ssl=foreign) as response:
                await response.read()


def _pending_at(plan: NetworkPlan, node: str, transaction: str) -> int:
    path = plan.nodes[node].state_dir / "delivered_keys.sqlite"
    with sqlite3.connect(path) as db:
        sql = "SELECT COUNT(*) FROM keys WHERE state='pending' AND transaction_id=?"
        return int(db.execute(sql, (transaction,)).fetchone()[0])


async def test_forged_replayed_and_misrouted_frames_are_refused(plan: NetworkPlan) -> None:
    """Act as r3 towards b with r3's own certificate and r3's half of the r3--b store."""
    r3 = plan.nodes["r3"]
    creds = plan.pki_dir / "nodes" / "r3"
    channel_creds = credentials_from_files(
        plan.pki_dir / "ca.pem", creds / "cert.pem", creds / "key.pem"
    )
    store = await KeyStore.open(r3.state_dir / "links" / "b--r3.sqlite")
    scratch = await DeliveredKeys.open(plan.state_dir / "scratch-delivered.sqlite")
    peers = PeerChannels({"b": plan.nodes["b"].address}, channel_creds)
    link = types.SimpleNamespace(store=store)
    relay = KeyRelay("r3", {"b": link}, scratch, peers, frozenset(), codec=RELAY_CODEC)  # type: ignore[dict-item]
    payload = RELAY_CODEC.encode_payload(
        RelayPayload(
            transaction_id="forged-test",
            origin="r3",
            master_sae="sae-a",
            slave_saes=("sae-b",),
            target_saes=("sae-b",),
            key_bits=256,
            key_uuids=uuid.uuid4().bytes,
            shares=1,
        )
    )
    b = NodeClient("b", plan.nodes["b"].address, plan.controller_credentials)

    async def refusal_of(frame: RelayFrame) -> Reason:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Relay(frame_to_wire(frame), timeout=10)
        return reason_of(caught.value, Reason.RELAY_FAILED)

    try:
        stub = peers.stub("b")
        # A frame whose tag is wrong: refused, and its link key is not burnt...
        genuine = await relay._seal(["r3", "b"], 0, "forged-test", payload, bytes(32))
        assert await refusal_of(replace(genuine, tag=bytes(b ^ 0xFF for b in genuine.tag))) == (
            Reason.BAD_TAG
        )
        # The payload travels in clear but under the tag: changing who the keys are for is
        # caught the same way.
        meta = RELAY_CODEC.decode_payload(genuine.payload)
        retargeted = RELAY_CODEC.encode_payload(replace(meta, slave_saes=("sae-c",)))
        assert await refusal_of(replace(genuine, payload=retargeted)) == Reason.BAD_TAG
        # ...so the genuine frame with the same key still goes through,
        await stub.Relay(frame_to_wire(genuine), timeout=10)
        assert _pending_at(plan, "b", "forged-test") == 1
        # and sending it again is a replay.
        assert await refusal_of(genuine) == Reason.REPLAY
        # A frame for a route that does not pass through b from r3 (checked before any key).
        header = RELAY_CODEC.decode_header(genuine.header)
        misrouted = RELAY_CODEC.encode_header(replace(header, route=("r3", "r2")))
        assert await refusal_of(replace(genuine, header=misrouted)) == Reason.UNKNOWN_ROUTE
        assert _pending_at(plan, "b", "forged-test") == 1  # nothing stored from refused frames
        refused = (await b.status()).relay.frames_refused
        assert refused["bad_tag"] >= 1
        assert refused["replay"] >= 1
        assert refused["unknown_route"] >= 1
    finally:
        await b.close()
        await peers.close()
        await store.close()
        await scratch.close()


async def _pools_full(saes: dict[str, Sae]) -> None:
    """Wait (bounded) until every pool between the chain's ends holds POOL keys: then no
    pool fill is in flight and both ends of every link have settled what they used."""
    pairs = [(m, s) for m in ("sae-a", "sae-a2") for s in ("sae-b", "sae-c", "sae-d")]
    pairs += [(s, m) for m, s in pairs]
    for _ in range(120):
        counts = [
            (await saes[m].call("GET", f"{s}/status"))[1]["stored_key_count"] for m, s in pairs
        ]
        assert max(counts) <= POOL
        if min(counts) == POOL:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"pools not full after 60 s: {counts}")


async def test_both_ends_of_every_link_consumed_the_same_key(
    plan: NetworkPlan, saes: dict[str, Sae]
) -> None:
    """After relays, each block was consumed by as many bits at both ends of its link."""
    await saes["sae-a"].enc("sae-b", number=50, extension_optional=[{"qkdnet_pool": False}])
    await _pools_full(saes)
    used = await assert_link_keys_used_alike(plan)
    assert all(bits > 0 for bits in used.values()), f"every link of the chain relayed: {used}"
