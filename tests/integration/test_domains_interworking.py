"""Two domains, each its own deployment with its own CA, joined by their border nodes over
ETSI GS QKD 020: the node agents (in this process, real gRPC and HTTPS with mutual TLS), their
relays, key managers and ETSI GS QKD 014 APIs, unchanged but for each border's `interworking`
section (the two KMSs sit in one site: no QKD link between them). An SAE of domain X gets keys
that an SAE of domain Y fetches; the other domain's certificates are refused.

The links are the courier test kind (`courier_kind.py`): the subject here is what runs above
them.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from qkdnet.node import link_kinds
from qkdnet.node.agent import NodeAgent
from qkdnet.node.config import InterworkingConfig, load_node_config
from qkdnet.node.edge.tls import load_credentials
from qkdnet.node.identity import trust_domain_for
from qkdnet.orchestrator.client.key_client import KeyApiClient, KeyApiError, sae_credentials
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.topology import load_topology

from .courier_kind import COURIER

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DOMAINS = {
    "dom-x": ("a", "xb", "sae-a"),
    "dom-y": ("c", "yb", "sae-c"),
}
SUBNETS = {"dom-x": "127.231.0.0/16", "dom-y": "127.232.0.0/16"}  # two deployments, two blocks


def _topology(name: str, node: str, border: str, sae: str) -> str:
    return f"""\
name: {name}
subnet: {SUBNETS[name]}
nodes:
  {node}: {{saes: [{sae}]}}
  {border}: {{}}
links:
  - endpoints: [{node}, {border}]
    length_km: 10
    kind: courier
"""


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def domains(tmp_path: Path) -> AsyncIterator[tuple[dict[str, NetworkPlan], dict[str, Any]]]:
    link_kinds.register(COURIER)
    plans: dict[str, NetworkPlan] = {}
    for name, ids in DOMAINS.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(_topology(name, *ids))
        # Each domain alone has one SAE, which the checks of a whole network refuse; its
        # partner is in the other domain.
        topology = load_topology(path, check_workable=False)
        plan = NetworkPlan.build(topology, tmp_path / name, runtime="process")
        plan.write_node_configs(plan.provision_pki())
        plans[name] = plan
    borders = {name: (plan, plan.nodes[DOMAINS[name][1]]) for name, plan in plans.items()}
    urls = {
        name: f"https://{border.host}:{_free_port(border.host)}"
        for name, (_, border) in borders.items()
    }
    configs = {}
    for name, (plan, border) in borders.items():
        other = "dom-y" if name == "dom-x" else "dom-x"
        other_plan, other_border = borders[other]
        node, _, _ = DOMAINS[name]
        far_sae = DOMAINS[other][2]
        configs[border.node_id] = load_node_config(border.config_path).model_copy(
            update={
                "interworking": InterworkingConfig(
                    listen=urls[name].removeprefix("https://"),
                    url=urls[name],
                    peer_node=other_border.node_id,
                    peer_trust_domain=trust_domain_for(other),
                    peer_url=urls[other],
                    peer_ca=other_plan.pki_dir / "ca.pem",  # the trust bundle
                    peer_saes=[far_sae],
                )
            }
        )
        inner = load_node_config(plan.nodes[node].config_path)
        configs[node] = inner.model_copy(
            update={"sae_directory": {**inner.sae_directory, far_sae: border.node_id}}
        )
    running: dict[str, NodeAgent] = {}
    try:
        for config in configs.values():
            agent = NodeAgent(config, load_credentials(config.tls, config.node_id))
            await agent.start()
            running[config.node_id] = agent
        yield plans, {"agents": running, "urls": urls}
    finally:
        for agent in running.values():
            await agent.stop()


async def _enc_keys(master: KeyApiClient, slave: str, number: int) -> Any:
    async with asyncio.timeout(60):
        while True:
            try:
                return await master.enc_keys(slave, number, 256)
            except KeyApiError as exc:  # 503 until routing has seen the links' key
                if exc.status != 503:
                    raise
                await asyncio.sleep(0.2)


async def test_an_sae_of_one_domain_gets_keys_an_sae_of_the_other_fetches(
    domains: tuple[dict[str, NetworkPlan], dict[str, Any]],
) -> None:
    plans, parts = domains
    agents = parts["agents"]
    async with (
        KeyApiClient.for_sae(plans["dom-x"], "sae-a") as sae_a,
        KeyApiClient.for_sae(plans["dom-y"], "sae-c") as sae_c,
    ):
        sent = await _enc_keys(sae_a, "sae-c", 20)
        got = await sae_c.dec_keys("sae-a", [key.key_id for key in sent.keys])
        assert [key.key for key in got.keys] == [key.key for key in sent.keys]
        # And the other way, from Y to X.
        back = await _enc_keys(sae_c, "sae-a", 5)
        fetched = await sae_a.dec_keys("sae-c", [key.key_id for key in back.keys])
        assert [key.key for key in fetched.keys] == [key.key for key in back.keys]
    xb, yb = agents["xb"].border, agents["yb"].border
    assert xb.counters.keys_exported >= 20
    assert yb.counters.keys_imported >= 20
    assert yb.counters.keys_exported >= 5
    # The borders kept no key: they passed them on.
    for border in ("xb", "yb"):
        assert await agents[border].delivered.run(lambda db: db.count()) == 0


async def test_certificates_of_one_domain_are_refused_in_the_other_but_by_the_peer_border(
    domains: tuple[dict[str, NetworkPlan], dict[str, Any]],
) -> None:
    plans, parts = domains
    x, y = plans["dom-x"], plans["dom-y"]
    # An SAE of X at the ETSI 014 API of Y's node: the handshake fails (another CA).
    foreign = KeyApiClient(y.nodes["c"].key_api_url or "", sae_credentials(x, "sae-a"))
    with pytest.raises(KeyApiError):
        async with foreign:
            await foreign.status("sae-c")
    # X's nodes' certificates at yb's 020 API: the peer border's is answered, a's is not.
    versions = parts["urls"]["dom-y"] + "/kmapi/versions"
    for node, status in (("xb", 200), ("a", 401)):
        context = ssl.create_default_context(cafile=str(y.pki_dir / "ca.pem"))
        tls = x.pki_dir / "nodes" / node
        context.load_cert_chain(str(tls / "cert.pem"), str(tls / "key.pem"))
        async with (
            aiohttp.ClientSession() as session,
            session.get(versions, ssl=context) as answer,
        ):
            assert answer.status == status
    # And Y's own border certificate at X's border is not from the CA it trusts there (Y's is
    # the only one): refused in the handshake, though the client trusts the server.
    context = ssl.create_default_context(cafile=str(x.pki_dir / "ca.pem"))
    tls = x.pki_dir / "nodes" / "a"
    context.load_cert_chain(str(tls / "cert.pem"), str(tls / "key.pem"))
    with pytest.raises(aiohttp.ClientError):
        async with (
            aiohttp.ClientSession() as session,
            session.get(parts["urls"]["dom-x"] + "/kmapi/versions", ssl=context) as answer,
        ):
            await answer.read()
