"""A new link kind plugs in as a protocol module and an edge adapter, touching nothing else.

The courier kind (`courier_kind.py`, a test double) is registered as an installed kind would
be found through its entry point. A topology names it for its one link; the plan, the PKI, the
node configurations, the agents (in this process, over real gRPC with mutual TLS), their key
stores, routing, relay and the ETSI GS QKD 014 API are the node's own, unchanged: the two ends
fill their stores alike, and two applications get the same keys across the link.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qkdnet.node import link_kinds
from qkdnet.node.agent import NodeAgent
from qkdnet.node.config import load_node_config
from qkdnet.node.edge.tls import load_credentials
from qkdnet.node.protocol.link import LinkEnd
from qkdnet.node.store.key_store import KeyStoreDb
from qkdnet.orchestrator.client.key_client import KeyApiClient, KeyApiError
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.topology import load_topology

from .courier_kind import COURIER, CourierReceiver, CourierTransmitter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOPOLOGY = """\
name: courier-pair
nodes:
  a: {saes: [sae-a]}
  b: {saes: [sae-b]}
links:
  - endpoints: [a, b]
    length_km: 10
    kind: courier
"""


@pytest.fixture
async def deployed(tmp_path: Path) -> AsyncIterator[tuple[NetworkPlan, dict[str, NodeAgent]]]:
    link_kinds.register(COURIER)
    path = tmp_path / "courier.yaml"
    path.write_text(TOPOLOGY)
    plan = NetworkPlan.build(load_topology(path), tmp_path / "state", runtime="process")
    plan.write_node_configs(plan.provision_pki())
    running: dict[str, NodeAgent] = {}
    try:
        for node in plan.nodes.values():
            config = load_node_config(node.config_path)
            agent = NodeAgent(config, load_credentials(config.tls, config.node_id))
            await agent.start()
            running[node.node_id] = agent
        yield plan, running
    finally:
        for agent in running.values():
            await agent.stop()


async def _ready_blocks(link: LinkEnd) -> dict[str, bytes]:
    digests = await link.store.run(lambda db: KeyStoreDb.digests(db, b"\0" * 16))
    return {d.block_id: d.digest for d in digests if not d.pending}


async def test_a_registered_link_kind_runs_in_the_node_unchanged(
    deployed: tuple[NetworkPlan, dict[str, NodeAgent]],
) -> None:
    plan, agents = deployed
    a, b = agents["a"].links["b"], agents["b"].links["a"]
    assert isinstance(a, CourierTransmitter)
    assert isinstance(b, CourierReceiver)
    async with asyncio.timeout(60):
        while a.stats.frames_ok < 3 or b.stats.store.blocks < 3:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    blocks_a, blocks_b = await _ready_blocks(a), await _ready_blocks(b)
    common = set(blocks_a) & set(blocks_b)
    assert len(common) >= 2
    assert all(blocks_a[block] == blocks_b[block] for block in common)

    # Above the link, nothing knows its kind: keys relayed over it reach the other SAE.
    async with (
        KeyApiClient.for_sae(plan, "sae-a") as master,
        KeyApiClient.for_sae(plan, "sae-b") as slave,
    ):
        async with asyncio.timeout(30):
            while True:
                try:
                    sent = await master.enc_keys("sae-b", 2, 256)
                    break
                except KeyApiError as exc:  # 503 until routing has seen the link's key
                    if exc.status != 503:
                        raise
                    await asyncio.sleep(0.2)
        got = await slave.dec_keys("sae-a", [key.key_id for key in sent.keys])
    assert [key.key for key in got.keys] == [key.key for key in sent.keys]
