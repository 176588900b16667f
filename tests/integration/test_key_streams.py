"""The integrators' interfaces across a deployed chain (real node processes, real links, TLS):

- ETSI GS QKD 004: two SAEs on the chain's ends open one stream and read the same chunks in
  order at the stream's rate; a stream asking more than the route carries is refused with
  status 7 and what it could have; closing one end ends the stream at both;
- hybrid keys (ETSI 014 with qkdnet_hybrid): the same at both ends, and no node logs them."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Iterator

import pytest

from qkdnet.node.edge.etsi004_client import KeyStreamClient, StreamQos, StreamStatus
from qkdnet.orchestrator.plan.network_plan import NetworkPlan

from .sae import deployed, sae_clients, sae_context

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TOPOLOGY = {
    "name": "streams",
    "defaults": {"speedup": 20, "frame_bits": 100_000},
    "nodes": {"a": {"saes": ["sae-a"]}, "r": {}, "b": {"saes": ["sae-b"]}},
    "links": [
        {"endpoints": ["a", "r"], "length_km": 5},
        {"endpoints": ["r", "b"], "length_km": 5},
    ],
}
RATE_BPS = 4096  # 16 chunks of 32 bytes a second
QOS = StreamQos(key_chunk_size=32, max_bps=RATE_BPS, min_bps=1024, timeout=5000, ttl=600)
CHUNKS = 96  # six seconds of the stream


def _client(plan: NetworkPlan, sae: str) -> KeyStreamClient:
    node = next(n for n in plan.nodes.values() if sae in n.saes)
    assert node.stream_api_address is not None
    host, _, port = node.stream_api_address.rpartition(":")
    return KeyStreamClient(host, int(port), sae_context(plan, sae))


async def _open(client: KeyStreamClient, qos: StreamQos) -> uuid.UUID:
    """Open towards sae-b, waiting (bounded) until routing knows the route's key rate."""
    deadline = time.monotonic() + 60
    while True:
        opened = await client.open_connect("qkd://sae-a", "qkd://sae-b", qos)
        if opened.status is StreamStatus.PEER_NOT_CONNECTED:
            assert opened.ksid is not None
            return opened.ksid
        assert opened.status in (StreamStatus.QOS_NOT_MET, StreamStatus.NO_QKD_CONNECTION)
        assert time.monotonic() < deadline, opened
        await asyncio.sleep(0.5)


async def _read(client: KeyStreamClient, ksid: uuid.UUID) -> list[tuple[float, bytes]]:
    out = []
    for index in range(CHUNKS):
        got = await client.get_key(ksid, index)
        assert got.status is StreamStatus.SUCCESS, (index, got.status)
        assert got.index == index
        out.append((time.monotonic(), got.key))
    return out


async def _streams(plan: NetworkPlan) -> None:
    async with _client(plan, "sae-a") as a, _client(plan, "sae-b") as b:
        ksid = await _open(a, QOS)
        joined = await b.open_connect("qkd://sae-b", "qkd://sae-a", StreamQos(), ksid)
        assert joined.status is StreamStatus.SUCCESS
        assert joined.qos == QOS  # the initiator's QoS
        at_a, at_b = await asyncio.gather(_read(a, ksid), _read(b, ksid))
        assert [key for _, key in at_a] == [key for _, key in at_b]
        assert len({key for _, key in at_b}) == CHUNKS
        # Paced: chunk i is due i x 256 bits / 4096 bit/s after the stream connected.
        for reads in (at_a, at_b):
            span = reads[-1][0] - reads[0][0]
            rate = (CHUNKS - 1) * QOS.chunk_bits / span
            assert abs(rate - RATE_BPS) <= 0.1 * RATE_BPS, rate

        greedy = await a.open_connect("qkd://sae-a", "qkd://sae-b", QOS.but(max_bps=50_000_000))
        assert greedy.status is StreamStatus.QOS_NOT_MET
        assert greedy.ksid is None
        assert greedy.qos is not None
        assert 0 < greedy.qos.max_bps < 50_000_000

        assert await b.close(ksid) is StreamStatus.SUCCESS
        deadline = time.monotonic() + 10
        while (await a.get_key(ksid, CHUNKS)).status is not StreamStatus.NOT_CONNECTED:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        assert await a.close(ksid) is StreamStatus.SUCCESS  # closed already: still 0
        reopened = await a.open_connect("qkd://sae-a", "qkd://sae-b", QOS, ksid)
        assert reopened.status is StreamStatus.KSID_IN_USE


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetworkPlan]:
    with deployed(TOPOLOGY, tmp_path_factory.mktemp("streams")) as plan:
        yield plan


def test_two_saes_share_a_paced_stream_across_a_relay(chain: NetworkPlan) -> None:
    asyncio.run(_streams(chain))


async def _hybrid(plan: NetworkPlan) -> dict[str, bytes]:
    async with sae_clients(plan) as sae:
        body = {"number": 8, "extension_mandatory": [{"qkdnet_hybrid": True}]}
        container = await sae["sae-a"].enc_container("sae-b", **body)
        assert container["key_container_extension"]["qkdnet_hybrid"]["kem"] == "ML-KEM-768"
        issued = {k["key_ID"]: k["key"] for k in container["keys"]}
        assert await sae["sae-b"].dec("sae-a", list(issued)) == issued
        return {i: base64.b64decode(k) for i, k in issued.items()}


def test_hybrid_keys_are_the_same_at_both_ends_and_never_logged(chain: NetworkPlan) -> None:
    keys = asyncio.run(_hybrid(chain))
    logs = "".join(path.read_text() for path in (chain.state_dir / "logs").glob("*.log"))
    for key in keys.values():
        assert key.hex() not in logs
        assert base64.b64encode(key).decode() not in logs
