"""An external-KME link, fed by a second qkdnet deployment's ETSI GS QKD 014 API as a vendor's
QKD pair would feed it: its two ends are SAEs of the other deployment's KMEs, it distils nothing
itself and still carries relayed keys; when the external KME goes away the link shows the fault.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qkdnet.orchestrator.client.key_client import KeyApiClient, KeyApiError
from qkdnet.orchestrator.client.network_status import NetworkStatus
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.topology import load_topology
from qkdnet.orchestrator.runtime import runtime_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

EXAMPLES = Path(__file__).parents[2] / "examples"
CLI = [sys.executable, "-m", "qkdnet.orchestrator.cli.main"]


@pytest.fixture
def vendor(tmp_path: Path) -> Iterator[NetworkPlan]:
    """The 'vendor device': the two-node example, deployed on its own."""
    plan = NetworkPlan.build(load_topology(EXAMPLES / "two-node.yaml"), tmp_path / "vendor")
    runtime = runtime_for(plan)
    runtime.deploy(timeout=90)
    try:
        yield plan
    finally:
        runtime.destroy()


def _topology(vendor: NetworkPlan) -> str:
    def end(node: str, sae: str) -> str:
        paths = vendor.sae_credentials(sae)
        url = vendor.nodes[node].key_api_url
        return (
            f"{{url: '{url}', sae_id: {sae}, ca: '{paths.ca}', cert: '{paths.cert}', "
            f"key: '{paths.key}'}}"
        )

    return f"""\
name: extlink
defaults: {{speedup: 10, frame_bits: 100000}}
nodes:
  x: {{saes: [sae-x]}}
  r: {{}}
  y: {{saes: [sae-y]}}
links:
  - endpoints: [x, r]
    length_km: 40
    kind: external-kme
    external_kme:
      keys_per_pull: 8
      pull_interval_s: 0.2
      ends:
        x: {end("alice", "sae-alice")}
        r: {end("bob", "sae-bob")}
  - {{endpoints: [r, y], length_km: 10}}
"""


async def _link(plan: NetworkPlan, link_id: str) -> tuple[Any, Any]:
    async with NetworkStatus(plan) as status:
        snapshot = await status.snapshot()
    (view,) = [view for view in snapshot.links if view.link_id == link_id]
    return view.tx, view.rx


def test_an_external_kme_link_distils_nothing_and_carries_relayed_keys(
    tmp_path: Path, vendor: NetworkPlan
) -> None:
    path = tmp_path / "extlink.yaml"
    path.write_text(_topology(vendor))
    plan = NetworkPlan.build(load_topology(path), tmp_path / "main")
    runtime = runtime_for(plan)
    runtime.deploy(timeout=90)
    try:
        asyncio.run(_relay(plan, vendor))
        # The receiving end's KME goes away: the transmitter shows the fault the receiver met
        # (it is told why), and the link recovers once the KME is back.
        runtime_for(vendor).stop("alice")
        before = asyncio.run(_until(plan, lambda tx: "external KME" in tx.last_fault))
        # Its sessions start again and fail at their first pull (the state goes back and forth
        # between running and backoff): no key is made while the KME is away.
        time.sleep(2.0)  # ten pulls
        during, _ = asyncio.run(_link(plan, "r--x"))
        assert during.secret_bits == before.secret_bits
        assert "external KME" in during.last_fault
        runtime_for(vendor).start("alice")
        asyncio.run(
            _until(plan, lambda tx: tx.state == "running" and tx.secret_bits > before.secret_bits)
        )
        shown = subprocess.run(
            [*CLI, "inspect", "--name", "extlink", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=os.environ | {"COLUMNS": "200"},
        )
        rows = {row["link"]: row for row in json.loads(shown.stdout)["links"]}
        assert rows["r--x"]["kind"] == "external-kme"
        assert vendor.nodes["bob"].key_api_url in rows["r--x"]["source"]
    finally:
        runtime.destroy()


async def _relay(plan: NetworkPlan, vendor: NetworkPlan) -> None:
    async with asyncio.timeout(120):
        async with (
            KeyApiClient.for_sae(plan, "sae-x") as sae_x,
            KeyApiClient.for_sae(plan, "sae-y") as sae_y,
        ):
            while True:
                try:
                    sent = await sae_x.enc_keys("sae-y", 20, 256)
                    break
                except KeyApiError as exc:
                    if exc.status != 503:
                        raise
                    await asyncio.sleep(0.3)
            got = await sae_y.dec_keys("sae-x", [key.key_id for key in sent.keys])
            assert [k.key for k in got.keys] == [k.key for k in sent.keys]
            assert len({k.key for k in sent.keys}) == 20
        tx, rx = await _link(plan, "r--x")
        # Key from the vendor's KMEs: the link emulated no photon, at either end.
        for end in (tx, rx):
            assert end.kind == "external-kme"
            assert end.pulses == 0
            assert end.detections == 0
            assert end.secret_bits > 0
        # r transmits (its ID sorts first): it is the SAE of the vendor's bob (enc_keys), x
        # of alice (dec_keys).
        assert vendor.nodes["bob"].key_api_url in tx.source
        assert vendor.nodes["alice"].key_api_url in rx.source


async def _until(plan: NetworkPlan, done: Callable[[Any], bool]) -> Any:
    """The transmitting end of r--x once `done` holds for it."""
    async with asyncio.timeout(60):
        while True:
            tx, _ = await _link(plan, "r--x")
            if done(tx):
                return tx
            await asyncio.sleep(0.3)
