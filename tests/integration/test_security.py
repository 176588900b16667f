"""The security floor on real nodes: private state, roles at the gRPC layer, only a transaction's
origin settles it, routing adverts from the future dropped, slow clients dropped while keys
flow, authenticated telemetry shown as text, and keys that never reach their master or their
slave discarded at both ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import ssl
import stat
import struct
import subprocess
import sys
import time
import types
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from qkdnet.node.edge.grpc_dial import credentials_from_files, dial
from qkdnet.node.edge.relay_codec import RELAY_CODEC, frame_to_wire
from qkdnet.node.edge.relay_grpc import PeerChannels
from qkdnet.node.edge.tls import client_tls_context
from qkdnet.node.protocol.relay import KeyRelay
from qkdnet.node.protocol.relay_messages import RelayPayload
from qkdnet.node.store.delivered_keys import DeliveredKeys
from qkdnet.node.store.key_store import KeyStore
from qkdnet.orchestrator.client.controller import NodeClient
from qkdnet.orchestrator.client.telemetry_watch import TelemetryWatch
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.pki import CertificatePaths
from qkdnet.orchestrator.runtime import runtime_for
from qkdnet.v1 import (
    control_pb2,
    control_pb2_grpc,
    link_pb2,
    link_pb2_grpc,
    relay_pb2,
    relay_pb2_grpc,
)

from .sae import Sae, deployed, sae_clients, sae_context

pytestmark = pytest.mark.integration

TTL_S = 6.0
# a -- r -- b; sae-x and sae-y are the pair the time-to-live tests watch. No pools, so that every
# key at b is one an enc_keys made.
TOPOLOGY = {
    "name": "guarded",
    "defaults": {"speedup": 20, "frame_bits": 100_000},
    "nodes": {
        "a": {"saes": ["sae-a", "sae-x"]},
        "r": {},
        "b": {"saes": ["sae-b", "sae-y"]},
    },
    "links": [
        {"endpoints": ["a", "r"], "length_km": 5},
        {"endpoints": ["r", "b"], "length_km": 5},
    ],
    "key_delivery": {"pool_keys": 0, "key_ttl_s": TTL_S},
}


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetworkPlan]:
    with deployed(TOPOLOGY, tmp_path_factory.mktemp("guarded")) as plan:
        yield plan


@pytest.fixture
async def saes(plan: NetworkPlan) -> AsyncIterator[dict[str, Sae]]:
    async with sae_clients(plan) as clients:
        yield clients


def _credentials(plan: NetworkPlan, who: str) -> CertificatePaths:
    """The certificate of a node, an SAE or the controller (`orchestrator`)."""
    if who == "orchestrator":
        return plan.controller_credentials
    kind = "nodes" if who in plan.nodes else "saes"
    where = plan.pki_dir / kind / who
    return CertificatePaths(where / "cert.pem", where / "key.pem", plan.pki_dir / "ca.pem")


@contextlib.asynccontextmanager
async def _channel(plan: NetworkPlan, who: str, node: str) -> AsyncIterator[grpc.aio.Channel]:
    paths = _credentials(plan, who)
    credentials = credentials_from_files(paths.ca, paths.cert, paths.key)
    async with dial(plan.nodes[node].address, node, credentials) as channel:
        yield channel


async def _status(plan: NetworkPlan, node: str) -> control_pb2.NodeStatus:
    client = NodeClient(node, plan.nodes[node].address, plan.controller_credentials)
    try:
        return await client.status()
    finally:
        await client.close()


# -- secrets at rest --------------------------------------------------------------------------


def _loose(root: Path) -> list[str]:
    return [
        f"{oct(stat.S_IMODE(path.lstat().st_mode))} {path}"
        for path in [root, *root.rglob("*")]
        if not path.is_symlink() and path.lstat().st_mode & 0o077
    ]


def test_every_file_a_deployment_writes_is_its_owner_s_only(plan: NetworkPlan) -> None:
    names = {path.name for path in plan.state_dir.rglob("*")}
    # The key stores, their journals, the delivered keys, private keys, logs: all there...
    assert {
        "a--r.sqlite",
        "a--r.sqlite-wal",
        "a--r.sqlite-shm",
        "delivered_keys.sqlite",
        "delivered_keys.sqlite-wal",
        "key.pem",
        "ca.key",
        "a--r.psk",
        "a.log",
        "broker.log",
        "access.json",
        "runtime.json",
    } <= names
    # ...and none readable, writable or enterable by group or others.
    assert _loose(plan.state_dir) == []


def test_a_node_tightens_looser_modes_when_it_starts(plan: NetworkPlan) -> None:
    state = plan.nodes["r"].state_dir
    store = state / "links" / "a--r.sqlite"
    os.chmod(state / "links", 0o755)
    os.chmod(store, 0o644)
    runtime = runtime_for(plan)
    runtime.restart("r")
    assert _loose(state) == []
    log = plan.nodes["r"].log_path.read_text()
    tightened = [json.loads(line) for line in log.splitlines() if "modes_tightened" in line]
    assert tightened
    assert {"links", "links/a--r.sqlite"} <= set(tightened[-1]["first"])


# -- identities with roles --------------------------------------------------------------------

DENIED = grpc.StatusCode.PERMISSION_DENIED


async def _code(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _calls(channel: grpc.aio.Channel) -> dict[str, grpc.StatusCode]:
    """What each service of the node answers (an empty or harmless request each)."""
    relay = relay_pb2_grpc.KeyRelayStub(channel)
    session = link_pb2_grpc.ClassicalChannelStub(channel).Session()
    transmit = link_pb2_grpc.QuantumChannelStub(channel).Transmit(
        iter([link_pb2.PhotonChunk(link_id="x")])
    )
    return {
        "NodeControl": await _code(
            control_pb2_grpc.NodeControlStub(channel).GetStatus(control_pb2.StatusRequest())
        ),
        "Relay": await _code(relay.Relay(relay_pb2.RelayFrame(), timeout=5)),
        "Settle": await _code(
            relay.Settle(relay_pb2.SettleRequest(transaction_id=uuid.uuid4().hex), timeout=5)
        ),
        "Void": await _code(relay.Void(relay_pb2.VoidRequest(), timeout=5)),
        "Session": await _code(session.read()),
        "Transmit": await _code(transmit),
        "Health": await _code(
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        ),
    }


async def test_each_certificate_reaches_the_methods_of_its_role_only(plan: NetworkPlan) -> None:
    async with _channel(plan, "sae-a", "a") as channel:
        # An application's certificate reaches nothing at all over gRPC.
        assert set((await _calls(channel)).values()) == {DENIED}
    async with _channel(plan, "orchestrator", "a") as channel:
        calls = await _calls(channel)
        assert calls.pop("NodeControl") == calls.pop("Health") == grpc.StatusCode.OK
        assert set(calls.values()) == {DENIED}  # the controller relays and distils nothing
    async with _channel(plan, "b", "a") as channel:  # a node, but not a's neighbour
        calls = await _calls(channel)
        assert calls["NodeControl"] == DENIED
        assert calls["Relay"] == grpc.StatusCode.ABORTED  # reached the relay: not its route
        assert calls["Settle"] == calls["Void"] == calls["Health"] == grpc.StatusCode.OK
        assert calls["Session"] == calls["Transmit"] == DENIED  # no link between b and a
    refused = (await _status(plan, "a")).calls_refused
    assert refused["sae"] >= 7
    assert refused["controller"] >= 5
    assert refused["node"] >= 1


async def test_only_the_origin_of_a_transaction_settles_it(plan: NetworkPlan) -> None:
    """Relay one transaction from r to b (acting as r, with r's half of the r--b store), then
    try to settle it with another node's certificate."""
    r = plan.nodes["r"]
    paths = _credentials(plan, "r")
    credentials = credentials_from_files(paths.ca, paths.cert, paths.key)
    store = await KeyStore.open(r.state_dir / "links" / "b--r.sqlite")
    scratch = await DeliveredKeys.open(plan.state_dir / "scratch-delivered.sqlite")
    peers = PeerChannels({"b": plan.nodes["b"].address}, credentials)
    link = types.SimpleNamespace(store=store)
    relay = KeyRelay("r", {"b": link}, scratch, peers, frozenset(), codec=RELAY_CODEC)  # type: ignore[dict-item]
    transaction = uuid.uuid4().hex
    payload = RELAY_CODEC.encode_payload(
        RelayPayload(
            transaction_id=transaction,
            origin="r",
            master_sae="sae-x",
            slave_saes=("sae-y",),
            target_saes=("sae-y",),
            key_bits=256,
            key_uuids=uuid.uuid4().bytes,
            shares=1,
        )
    )
    try:
        frame = await relay._seal(["r", "b"], 0, transaction, payload, bytes(32))
        await peers.stub("b").Relay(frame_to_wire(frame), timeout=10)
        assert _keys_at(plan, "b", transaction_id=transaction) == 1
        # Node a holds a valid node certificate, but the transaction is r's.
        for commit in (True, False):
            async with _channel(plan, "a", "b") as channel:
                request = relay_pb2.SettleRequest(transaction_id=transaction, commit=commit)
                code = await _code(relay_pb2_grpc.KeyRelayStub(channel).Settle(request))
            assert code == DENIED
        assert _keys_at(plan, "b", transaction_id=transaction) == 1  # untouched
        assert await relay.settle("b", transaction, False) == 1  # its origin may
        assert _keys_at(plan, "b", transaction_id=transaction) == 0
    finally:
        await peers.close()
        await store.close()
        await scratch.close()


async def test_a_link_state_advert_from_the_future_is_dropped(
    plan: NetworkPlan, saes: dict[str, Sae]
) -> None:
    """r (a neighbour of b) says a has no links, with the largest sequence there is: were it
    believed, no route would reach a from b for good."""
    forged = relay_pb2.LinkStateAdvert(origin="a", sequence=2**64 - 1, links=[], saes=[])
    async with _channel(plan, "r", "b") as channel:
        await relay_pb2_grpc.KeyRelayStub(channel).Advertise(forged, timeout=5)
    await asyncio.sleep(1.0)
    container = await saes["sae-b"].enc_container(
        "sae-a", number=2, extension_mandatory=[{"qkdnet_pool": False}]
    )
    assert container["key_container_extension"]["qkdnet_relay"]["routes"][0]["route"] == [
        "b",
        "r",
        "a",
    ]
    log = plan.nodes["b"].log_path.read_text()
    assert '"event":"advert_from_future_refused"' in log


# -- slow and abusive clients -----------------------------------------------------------------


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _held(
    plan: NetworkPlan, node: str, tls: int, raw: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """`tls` connections that complete TLS and send half a request head; `raw` ones that
    send half a ClientHello."""
    host, port = plan.nodes[node].key_api_address.rsplit(":", 1)  # type: ignore[union-attr]
    context = sae_context(plan, "sae-a")
    held = []
    for index in range(tls + raw):
        secure = index < tls
        reader, writer = await asyncio.open_connection(
            host, int(port), ssl=context if secure else None
        )
        writer.write(
            b"POST /api/v1/keys/sae-b/enc_keys HTTP/1.1\r\nHost: kme\r\n"
            if secure
            else b"\x16\x03\x01\x02\x00"
        )
        held.append((reader, writer))
    return held


async def _closed_by_server(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while await reader.read(1024):
            pass


async def test_half_sent_requests_are_dropped_while_keys_keep_flowing(
    plan: NetworkPlan, saes: dict[str, Sae]
) -> None:
    pid = runtime_for(plan).inspect().nodes["a"].pid
    assert pid
    before = _open_fds(pid)
    held = await _held(plan, "a", tls=300, raw=100)
    await asyncio.sleep(0.5)
    assert _open_fds(pid) >= before + 400
    # A well-behaved application keeps getting keys while the connections are held.
    for _ in range(5):
        keys = await saes["sae-a"].enc("sae-b", number=4)
        assert len(await saes["sae-b"].dec("sae-a", [k["key_ID"] for k in keys])) == 4
    # Every held connection is closed by the node, within the 30 s the floor allows: the head
    # timeout (15 s) and the TLS handshake timeout (10 s) drop them.
    try:
        await asyncio.wait_for(
            asyncio.gather(*(_closed_by_server(reader) for reader, _ in held)), timeout=30
        )
    finally:
        for _, writer in held:
            writer.close()
    for _ in range(50):
        if _open_fds(pid) <= before + 5:
            break
        await asyncio.sleep(0.1)
    assert _open_fds(pid) <= before + 5


# -- authenticated telemetry ------------------------------------------------------------------


async def _mqtt(
    plan: NetworkPlan, who: str | None, *, tls: bool = True, session: str | None = None
) -> str:
    """Connect to the broker as `who` (None: without a certificate) and publish on node a's
    status topic; what happened. With `session`, ask for a stored session of that client ID."""
    host, port = plan.broker_address.rsplit(":", 1)
    if not tls:
        context = None
    elif who is None:
        context = ssl.create_default_context(cafile=str(plan.pki_dir / "ca.pem"))
    else:
        paths = _credentials(plan, who)
        context = client_tls_context(paths.ca, paths.cert, paths.key)
    try:
        async with aiomqtt.Client(
            host,
            int(port),
            timeout=3,
            tls_context=context,
            identifier=session,
            clean_session=False if session else None,
        ) as client:
            topic = f"{plan.topic_prefix}/node/a/status"
            forged = {"schema": 1, "node": "a", "state": "lost"}
            await client.publish(topic, json.dumps(forged), qos=1, retain=True)
            return "published"
    except aiomqtt.MqttError as exc:
        return f"refused: {exc}"


async def test_the_broker_refuses_anonymous_and_foreign_publishers(plan: NetworkPlan) -> None:
    assert (await _mqtt(plan, None, tls=False)).startswith("refused")  # TLS only
    assert (await _mqtt(plan, None)).startswith("refused")  # no client certificate
    assert (await _mqtt(plan, "sae-a")).startswith("refused")  # an application's certificate
    # A stored session carries the identity of the connection that made it: never resumed.
    assert await _mqtt(plan, "r", session="stored") == "published"
    assert "Not authorized" in await _mqtt(plan, "r", session="stored")
    assert await _mqtt(plan, "r") == "published"  # a node may connect, but a's topic...
    watch = TelemetryWatch.for_plan(plan)
    state = await watch.collect(2.5)
    assert state.nodes["a"]["state"] == "up"  # ...is a's alone: the forgery went nowhere
    assert state.rejected_total == 0


def test_watch_shows_markup_as_text_and_counts_what_it_refused(plan: NetworkPlan) -> None:
    """Node r publishes events with Rich markup in their fields, and a malformed one, while
    `qkdnet watch` runs: the markup is printed as it is, the malformed message counted."""
    topology = plan.state_dir.parent / "guarded.yaml"
    topology.write_text(yaml.safe_dump(TOPOLOGY))
    watch = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qkdnet.orchestrator.cli.main",
            "watch",
            "-t",
            str(topology),
            "--state-dir",
            str(plan.state_dir),
            "--duration",
            "5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"COLUMNS": "200"},
    )

    async def publish() -> None:
        paths = _credentials(plan, "r")
        context = client_tls_context(paths.ca, paths.cert, paths.key)
        host, port = plan.broker_address.rsplit(":", 1)
        topic = f"{plan.topic_prefix}/node/r/events"
        markup = {"schema": 1, "node": "r", "event": "[bold red]boom[/]", "note": "[link=x]y"}
        async with aiomqtt.Client(host, int(port), timeout=3, tls_context=context) as client:
            for _ in range(8):
                await client.publish(topic, json.dumps(markup))
                await client.publish(topic, b'{"schema": 1, "node": "r"}')  # no event
                await asyncio.sleep(0.4)

    asyncio.run(publish())
    out, err = watch.communicate(timeout=60)
    assert watch.returncode == 0, err
    assert "Traceback" not in err
    # Piped, one line per message: the markup is printed as it came, never interpreted.
    assert "event r [bold red]boom[/] note=[link=x]y" in out
    assert "refused a message: no event" in out


# -- abandoned and expiring keys --------------------------------------------------------------


def _keys_at(plan: NetworkPlan, node: str, **where: str) -> int:
    """Keys in a node's delivered-key store matching `where` (columns), any state."""
    path = plan.nodes[node].state_dir / "delivered_keys.sqlite"
    clause = " AND ".join(f"{column}=?" for column in where) or "1"
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        row = db.execute(f"SELECT COUNT(*) FROM keys WHERE {clause}", tuple(where.values()))
        return int(row.fetchone()[0])


def _hang_up_during(plan: NetworkPlan, number: int, after_s: float) -> None:
    """POST enc_keys as sae-x for sae-y at a's KME, then reset the connection `after_s` later
    (before the answer, or after it was sent but never read)."""
    host, port = plan.nodes["a"].key_api_address.rsplit(":", 1)  # type: ignore[union-attr]
    context = sae_context(plan, "sae-x")
    body = json.dumps({"number": number, "extension_mandatory": [{"qkdnet_pool": False}]}).encode()
    request = (
        b"POST /api/v1/keys/sae-y/enc_keys HTTP/1.1\r\nHost: kme\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    raw = socket.create_connection((host, int(port)))
    with context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(request)
        time.sleep(after_s)
        # SO_LINGER 0: close sends a reset, as a crashed or killed client would.
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _eventually(check: Any, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


async def test_an_abandoned_enc_keys_leaves_no_key_at_either_end(plan: NetworkPlan) -> None:
    """The master hangs up at moments from before its KME answers to after: keys it never got
    are withdrawn at once, and keys it got but never read wait at most their time to live."""
    before = await _status(plan, "a")
    for after_s in (0.002, 0.005, 0.01, 0.02, 0.04, 0.08):
        _hang_up_during(plan, number=200, after_s=after_s)

    async def settled() -> bool:
        status = await _status(plan, "a")
        return status.delivery.keys_abandoned > before.delivery.keys_abandoned

    assert await _eventually(settled, 20), "a never noticed that its master hung up"
    await asyncio.sleep(1.0)
    abandoned = (await _status(plan, "a")).delivery.keys_abandoned
    assert (abandoned - before.delivery.keys_abandoned) % 200 == 0
    # The abandoned keys had been committed at b before a tried to answer; a withdrew them.
    assert (await _status(plan, "b")).delivery.keys_voided >= abandoned
    await asyncio.sleep(TTL_S + 2.5)
    assert _keys_at(plan, "b", master="sae-x") == 0
    assert (await _status(plan, "a")).delivery.pool_keys == 0  # no pools: nothing at a


async def test_keys_a_slave_never_fetches_are_discarded_after_their_time_to_live(
    plan: NetworkPlan, saes: dict[str, Sae]
) -> None:
    async with sae_clients(plan) as clients:
        keys = await clients["sae-x"].enc("sae-y", number=5)
    ids = [key["key_ID"] for key in keys]
    assert _keys_at(plan, "b", master="sae-x") == 5
    expired_before = (await _status(plan, "b")).delivery.keys_expired
    await asyncio.sleep(TTL_S + 2.5)  # the time to live, and one expiry pass (every second)
    assert _keys_at(plan, "b", master="sae-x") == 0
    status, answer = await saes["sae-y"].call(
        "POST", "sae-x/dec_keys", json={"key_IDs": [{"key_ID": i} for i in ids]}
    )
    assert (status, answer["message"]) == (400, "one or more keys specified are not found on KME")
    status_b = await _status(plan, "b")
    assert status_b.delivery.keys_expired >= expired_before + 5
    assert status_b.delivery.keys_waiting == 0
