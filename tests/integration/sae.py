"""An SAE as the tests see it: its own client certificate, talking to its node's KME."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from qkdnet.orchestrator.cli.network_commands import wait_for_key
from qkdnet.orchestrator.client.controller import NodeClient
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.topology import load_topology
from qkdnet.orchestrator.runtime import runtime_for

__all__ = ["Sae", "assert_link_keys_used_alike", "deployed", "sae_clients", "sae_context"]


def sae_context(plan: NetworkPlan, sae: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(plan.pki_dir / "ca.pem"))
    where = plan.pki_dir / "saes" / sae
    context.load_cert_chain(str(where / "cert.pem"), str(where / "key.pem"))
    return context


class Sae:
    """One application: its own client certificate, talking to its node's KME."""

    def __init__(self, plan: NetworkPlan, sae: str, session: aiohttp.ClientSession) -> None:
        node = next(n for n in plan.nodes.values() if sae in n.saes)
        self.url = f"{node.key_api_url}/api/v1/keys"
        self.ssl = sae_context(plan, sae)
        self.session = session

    async def call(
        self, method: str, path: str, *, json: Any = None, params: Any = None
    ) -> tuple[int, Any]:
        async with self.session.request(
            method, f"{self.url}/{path}", json=json, params=params, ssl=self.ssl
        ) as response:
            return response.status, await response.json(content_type=None)

    async def enc(self, slave: str, **body: Any) -> list[dict[str, str]]:
        """enc_keys, waiting out 503s while the links build up key (bounded)."""
        keys: list[dict[str, str]] = (await self.enc_container(slave, **body))["keys"]
        return keys

    async def enc_container(self, slave: str, **body: Any) -> dict[str, Any]:
        """The whole key container of enc_keys, waiting out 503s (bounded)."""
        for _ in range(60):
            status, answer = await self.call("POST", f"{slave}/enc_keys", json=body)
            if status != 503:
                break
            await asyncio.sleep(1.0)
        assert status == 200, answer
        container: dict[str, Any] = answer
        return container

    async def dec(self, master: str, key_ids: list[str]) -> dict[str, str]:
        """dec_keys for `key_ids`: key ID -> base64 key."""
        status, body = await self.call(
            "POST", f"{master}/dec_keys", json={"key_IDs": [{"key_ID": i} for i in key_ids]}
        )
        assert status == 200, body
        return {k["key_ID"]: k["key"] for k in body["keys"]}


async def assert_link_keys_used_alike(plan: NetworkPlan, settle_s: float = 30.0) -> dict[str, int]:
    """Each block of every link was consumed by as many bits at both ends (keyed digests
    through the nodes' gRPC); returns the bits of link key used per link.

    The stores hand out a range once only, so equal consumption at both ends means that no
    link-key bit served two relays: either end using a bit the other did not would show.
    Pools refill in the background, so the two ends of a link can be asked while a relay is
    between them: a difference must persist for `settle_s` seconds to count."""
    deadline = time.monotonic() + settle_s
    while True:
        used_by_link, mismatch = await _link_key_use(plan)
        if mismatch is None:
            return used_by_link
        assert time.monotonic() < deadline, mismatch
        await asyncio.sleep(0.5)


async def _link_key_use(plan: NetworkPlan) -> tuple[dict[str, int], str | None]:
    """Bits of link key used per link, and the first block used differently at its two ends."""
    nonce = uuid.uuid4().bytes
    used_by_link: dict[str, int] = {}
    for link in plan.links:
        x, y = sorted(link.endpoints)
        link_id = f"{x}--{y}"
        digests = {}
        for node in (x, y):
            client = NodeClient(node, plan.nodes[node].address, plan.controller_credentials)
            try:
                reply = await client.key_digest(link_id, nonce)
            finally:
                await client.close()
            digests[node] = {d.block_id: d for d in reply.blocks if not d.pending}
        common = set(digests[x]) & set(digests[y])
        assert common
        used = 0
        for block in common:
            dx, dy = digests[x][block], digests[y][block]
            if dx.consumed != dy.consumed:
                return used_by_link, f"{link_id} {block}: {dx.consumed} != {dy.consumed} bits used"
            used += dx.consumed
        used_by_link[link_id] = used
    return used_by_link, None


def ring_topology(name: str, frame_bits: int, **extra: Any) -> dict[str, Any]:
    """A ring of four nodes at speed-up 20: a and b (serving sae-a and sae-b) joined over r1
    and over r2, so that a relay can go round a link or node that fails."""
    return {
        "name": name,
        "defaults": {"speedup": 20, "frame_bits": frame_bits},
        "nodes": {"a": {"saes": ["sae-a"]}, "r1": {}, "r2": {}, "b": {"saes": ["sae-b"]}},
        "links": [
            {"endpoints": ["a", "r1"], "length_km": 5},
            {"endpoints": ["r1", "b"], "length_km": 6},
            {"endpoints": ["a", "r2"], "length_km": 4},
            {"endpoints": ["r2", "b"], "length_km": 7},
        ],
        **extra,
    }


@contextlib.contextmanager
def deployed(
    topology: Path | dict[str, Any], root: Path, runtime: str | None = None
) -> Iterator[NetworkPlan]:
    """A topology (a file, or the data of one) deployed under `root` on its runtime (or
    `runtime`), with key on every link; destroyed on the way out."""
    if isinstance(topology, dict):
        path = root / f"{topology['name']}.yaml"
        path.write_text(yaml.safe_dump(topology))
        topology = path
    plan = NetworkPlan.build(load_topology(topology), root / "state", runtime=runtime)
    nodes = runtime_for(plan)
    nodes.deploy(timeout=90)
    try:
        asyncio.run(wait_for_key(plan, timeout=120))
        yield plan
    finally:
        nodes.destroy()


@contextlib.asynccontextmanager
async def sae_clients(plan: NetworkPlan) -> AsyncIterator[dict[str, Sae]]:
    """Every SAE of the deployment, sharing one HTTP session."""
    async with aiohttp.ClientSession() as session:
        yield {sae: Sae(plan, sae, session) for n in plan.nodes.values() for sae in n.saes}
