"""The docker runtime: the five-node chain in containers, keys through ETSI 014 from the host,
the middle node killed and restarted, and destroy leaving nothing of the deployment behind."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from qkdnet.node.edge.tls import client_tls_context
from qkdnet.orchestrator.cli.network_commands import wait_for_key
from qkdnet.orchestrator.client.controller import NodeClient
from qkdnet.orchestrator.client.network_status import NetworkStatus
from qkdnet.orchestrator.client.telemetry_watch import TelemetryWatch
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.topology import load_topology
from qkdnet.orchestrator.runtime import runtime_for
from qkdnet.orchestrator.runtime.docker_runtime import (
    LABEL_DEPLOYMENT,
    LABEL_NODE,
    LABEL_ROLE,
    LABEL_STATE_DIR,
    DockerRuntime,
)
from qkdnet.orchestrator.runtime.images import ImageResult
from qkdnet.orchestrator.runtime.seam import BROKER
from qkdnet.orchestrator.runtime.venv_volume import VENV_DIR
from tests.integration.sae import Sae

pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

EXAMPLES = Path(__file__).parents[2] / "examples"
MIDDLE = "r2"


def _labelled(client: Any, name: str) -> dict[str, list[str]]:
    """Names of every container, network and volume carrying the deployment's label."""
    filters = {"label": f"{LABEL_DEPLOYMENT}={name}"}
    return {
        "containers": [
            c.name for c in client.containers.list(all=True, ignore_removed=True, filters=filters)
        ],
        "networks": [n.name for n in client.networks.list(filters=filters)],
        "volumes": [v.name for v in client.volumes.list(filters=filters)],
    }


async def _stored_bits(plan: NetworkPlan, node_id: str) -> dict[str, tuple[int, int]]:
    """link ID -> (stored_bits_total, last_frame) as `node_id` reports them."""
    node = plan.nodes[node_id]
    client = NodeClient(node_id, node.address, plan.controller_credentials)
    try:
        status = await client.status()
    finally:
        await client.close()
    return {link.link_id: (link.stored_bits_total, link.last_frame) for link in status.links}


async def _wait_frames_after(
    plan: NetworkPlan, node_id: str, frames: dict[str, int], timeout: float
) -> None:
    """Until every link of `node_id` stored a frame newer than `frames` at both ends."""
    deadline = time.monotonic() + timeout
    async with NetworkStatus(plan) as status:
        while True:
            snapshot = await status.snapshot()
            views = [v for v in snapshot.links if v.link_id in frames]
            if all(
                v.tx and v.rx and min(v.tx.last_frame, v.rx.last_frame) > frames[v.link_id]
                for v in views
            ):
                return
            assert time.monotonic() < deadline, f"links of {node_id} did not resume: {views}"
            await asyncio.sleep(0.5)


async def _compare_middle_links(plan: NetworkPlan) -> None:
    """Both ends of the middle node's links hold identical key (keyed digests): a store lost
    at the middle node would miss the blocks its peers kept."""
    async with NetworkStatus(plan) as status:
        snapshot = await status.snapshot()
        for view in snapshot.links:
            if MIDDLE in (view.transmitter, view.receiver):
                result = await status.compare_stores(view)
                assert result.match, f"{view.link_id}: {result.detail}"
                assert result.common_blocks > 0, view.link_id


class _Ledger:
    """Every key the master got, to be fetched once at the slave at the end."""

    def __init__(self) -> None:
        self.issued: dict[str, str] = {}  # key ID -> base64 key

    async def round(self, a: Sae, b: Sae, number: int, **body: Any) -> dict[str, Any]:
        """enc_keys at a's KME, dec_keys at b's: every key matches. Returns the container."""
        container = await a.enc_container("sae-b", number=number, **body)
        keys = {k["key_ID"]: k["key"] for k in container["keys"]}
        assert len(keys) == number
        self.issued |= keys
        fetched = await b.dec("sae-a", list(keys))
        assert fetched == keys
        return container


async def _etsi_round(
    plan: NetworkPlan, ledger: _Ledger, number: int, **body: Any
) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        a, b = Sae(plan, "sae-a", session), Sae(plan, "sae-b", session)
        return await ledger.round(a, b, number, **body)


async def _attempt_while_down(plan: NetworkPlan, ledger: _Ledger) -> int:
    """enc_keys at a while the middle node is down: whatever a delivers must reach b too."""
    async with aiohttp.ClientSession() as session:
        a = Sae(plan, "sae-a", session)
        status, body = await a.call("POST", "sae-b/enc_keys", json={"number": 4})
    if status == 200:
        ledger.issued |= {k["key_ID"]: k["key"] for k in body["keys"]}
        return len(body["keys"])
    return 0


async def _fetch_each_once(plan: NetworkPlan, ledger: _Ledger) -> None:
    """No key at one end only: keys not yet fetched at b are there, and none is served twice."""
    async with aiohttp.ClientSession() as session:
        b = Sae(plan, "sae-b", session)
        for key_id, key in ledger.issued.items():
            status, body = await b.call(
                "POST", "sae-a/dec_keys", json={"key_IDs": [{"key_ID": key_id}]}
            )
            if status == 200:  # issued while the middle node was down, not fetched yet
                assert [k["key"] for k in body["keys"]] == [key], key_id
                status, body = await b.call(
                    "POST", "sae-a/dec_keys", json={"key_IDs": [{"key_ID": key_id}]}
                )
            assert status != 200, f"{key_id} was served twice at the slave: {body}"
            base64.b64decode(key, validate=True)


async def _mqtt_connect(host: str, port: int, tls: ssl.SSLContext) -> None:
    async with aiomqtt.Client(host, port, timeout=5, tls_context=tls):
        pass


async def _telemetry_is_authenticated(plan: NetworkPlan) -> None:
    host, port = plan.broker_address.rsplit(":", 1)
    anonymous = ssl.create_default_context(cafile=str(plan.pki_dir / "ca.pem"))
    with pytest.raises(aiomqtt.MqttError):  # TLS, but no client certificate
        await _mqtt_connect(host, int(port), anonymous)
    where = plan.pki_dir / "nodes" / MIDDLE
    node = client_tls_context(plan.pki_dir / "ca.pem", where / "cert.pem", where / "key.pem")
    async with aiomqtt.Client(host, int(port), timeout=5, tls_context=node) as client:
        forged = {"schema": 1, "node": "a", "state": "lost"}
        await client.publish(f"{plan.topic_prefix}/node/a/status", json.dumps(forged), retain=True)
    state = await TelemetryWatch.for_plan(plan).collect(3.0)
    assert {node: data["state"] for node, data in state.nodes.items()} == {
        node: "up" for node in plan.nodes
    }
    assert state.rejected_total == 0


def test_chain5_in_containers_survives_a_killed_middle_node(
    docker_engine: Any, built_images: dict[str, ImageResult], tmp_path: Path
) -> None:
    assert {"node", "broker"} <= set(built_images)
    topology = load_topology(EXAMPLES / "chain5.yaml")
    state_dir = tmp_path / "chain5"
    plan = NetworkPlan.build(topology, state_dir, runtime="docker")
    assert plan.runtime == "docker"
    assert plan.nodes["a"].host.startswith("10.")
    runtime = runtime_for(plan)
    assert isinstance(runtime, DockerRuntime)
    assert not _labelled(docker_engine, plan.name)["containers"], "chain5 is deployed already"
    ledger = _Ledger()
    try:
        started = time.monotonic()
        info = runtime.deploy(timeout=90)
        ready_s = time.monotonic() - started
        assert info.runtime == "docker"
        assert all(node.state == "running" for node in info.nodes.values())
        assert info.broker is not None
        assert info.broker.state == "running"
        asyncio.run(wait_for_key(plan, timeout=90))
        key_s = time.monotonic() - started
        print(f"chain5 in containers: ready in {ready_s:.1f} s, key on every link {key_s:.1f} s")

        # Labels on everything; a fresh orchestrator finds the deployment from the state dir
        # (runtime.json names docker) and the labels alone.
        found = _labelled(docker_engine, plan.name)
        assert len(found["containers"]) == 6
        assert found["networks"] == [f"qkdnet-{plan.name}"]
        assert sorted(found["volumes"]) == sorted(f"qkdnet-chain5-{n}" for n in plan.nodes)
        for container in docker_engine.containers.list(
            ignore_removed=True, filters={"label": f"{LABEL_DEPLOYMENT}={plan.name}"}
        ):
            assert container.labels[LABEL_STATE_DIR] == str(plan.state_dir)
            assert container.labels[LABEL_ROLE] in ("node", "broker")
            if container.labels[LABEL_ROLE] == "node":
                assert container.labels[LABEL_NODE] in plan.nodes
                # The image's environment comes from its volume, read-only (venv_volume).
                mounts = container.attrs["Mounts"]
                (venv,) = [m for m in mounts if m["Destination"] == VENV_DIR]
                assert venv["Name"] == built_images["venv"].reference
                assert not venv["RW"]
        again = NetworkPlan.build(topology, state_dir)
        assert again.runtime == "docker"
        assert again.nodes == plan.nodes
        seen = runtime_for(again).inspect()
        assert seen.running
        assert {n.state for n in seen.nodes.values()} == {"running"}

        # ETSI 014 from the host: enc_keys at a's KME, dec_keys at b's.
        asyncio.run(_etsi_round(plan, ledger, number=8))

        # Telemetry through Mosquitto: TLS, the controller's certificate to read; no client
        # without a certificate; a node's certificate publishes nothing but its own topics.
        asyncio.run(_telemetry_is_authenticated(plan))
        # Whatever the deployment wrote on this host is its owner's (or the nodes') only.
        loose = [p for p in [state_dir, *state_dir.rglob("*")] if p.lstat().st_mode & 0o077]
        if os.geteuid() == 0:  # as root, node files belong to the nodes' user, mode 0400
            assert loose == []

        # Kill the middle node as a crash would; its stores survive in its volume.
        before = asyncio.run(_stored_bits(plan, MIDDLE))
        assert before
        assert all(bits > 0 for bits, _ in before.values())
        runtime.kill(MIDDLE)
        killed = runtime.inspect().nodes[MIDDLE]
        assert (killed.state, killed.detail) == ("crashed", "killed by SIGKILL")
        down = asyncio.run(_attempt_while_down(plan, ledger))
        print(f"while {MIDDLE} was down, enc_keys at a delivered {down} key(s)")
        runtime.start(MIDDLE, timeout=60)
        assert runtime.inspect().nodes[MIDDLE].state == "running"

        # Links resume: new frames at both ends of the middle node's links. (A receiving end
        # reports its store's level once a frame has ended, so the figures are read after.)
        asyncio.run(wait_for_key(plan, timeout=60))
        frames = {link_id: frame for link_id, (_, frame) in before.items()}
        asyncio.run(_wait_frames_after(plan, MIDDLE, frames, timeout=60))
        after = asyncio.run(_stored_bits(plan, MIDDLE))
        for link_id, (bits, _) in before.items():
            assert after[link_id][0] >= bits, f"{link_id}: store lost ({after} < {before})"
        asyncio.run(_compare_middle_links(plan))

        # Relay resumes: keys relayed on demand (not from a's pool, whose level depends on how
        # far its refills got) go hop by hop through the restarted node.
        container = asyncio.run(
            _etsi_round(plan, ledger, number=44, extension_mandatory=[{"qkdnet_pool": False}])
        )
        relay = container["key_container_extension"]["qkdnet_relay"]
        assert relay["source"] == "relay", relay
        assert relay["relayed"] == 44, relay
        (route,) = relay["routes"]
        assert route["route"] == ["a", "r1", MIDDLE, "r3", "b"], route

        # The broker restarts too, and a round still works afterwards.
        runtime.restart(BROKER)
        asyncio.run(_etsi_round(plan, ledger, number=4))

        # No key was delivered at one end only.
        asyncio.run(_fetch_each_once(plan, ledger))
    finally:
        report = runtime.destroy()
    assert report.state_removed
    assert not state_dir.exists()
    assert set(report.stopped) | set(report.killed) == {*plan.nodes, BROKER}
    assert _labelled(docker_engine, plan.name) == {"containers": [], "networks": [], "volumes": []}
