"""`qkdnet export compose`: the exported chain runs under `docker compose up` and under
`docker stack deploy` on a single-machine swarm, and keys flow end to end through ETSI 014 from
the host, with the exported SAE credentials."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from qkdnet.node.edge.tls import client_tls_context
from qkdnet.orchestrator.cli.main import main
from qkdnet.orchestrator.client.key_client import KeyApiClient, KeyApiError
from qkdnet.orchestrator.client.telemetry_watch import TelemetryWatch
from qkdnet.orchestrator.plan.pki import CertificatePaths
from qkdnet.orchestrator.runtime.images import ImageResult

pytestmark = [pytest.mark.container, pytest.mark.timeout(600)]

EXAMPLES = Path(__file__).parents[2] / "examples"


def _compose_command() -> list[str] | None:
    """`docker compose` (v2) when the engine's CLI has it, else docker-compose 1.x."""
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if probe.returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def _export(tmp_path: Path, key_api_port: int, mqtt_port: int) -> Path:
    out = tmp_path / "chain5"
    args = ["export", "compose", "-t", str(EXAMPLES / "chain5.yaml"), "-o", str(out)]
    args += ["--key-api-port", str(key_api_port), "--mqtt-port", str(mqtt_port)]
    assert main(args) == 0
    return out


def _client(endpoints: dict[str, Any], sae: str) -> KeyApiClient:
    entry = endpoints["saes"][sae]
    paths = CertificatePaths(Path(entry["cert"]), Path(entry["key"]), Path(entry["ca"]))
    return KeyApiClient(entry["url"], paths, timeout=10)


async def _keys_flow(out: Path, timeout: float = 180) -> int:
    """enc_keys as sae-a at a's KME until the chain has key, then dec_keys as sae-b at b's:
    the keys match. Returns how many keys went through."""
    endpoints = json.loads((out / "endpoints.json").read_text())
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            async with _client(endpoints, "sae-a") as a, _client(endpoints, "sae-b") as b:
                issued = await a.enc_keys("sae-b", 4, 256)
                fetched = await b.dec_keys("sae-a", [key.key_id for key in issued.keys])
        except (KeyApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            last = exc  # not up yet, or no key on every link yet (503)
            await asyncio.sleep(2)
            continue
        assert [k.key for k in fetched.keys] == [k.key for k in issued.keys]
        return len(issued.keys)
    raise AssertionError(f"no keys through the exported chain after {timeout:.0f} s: {last}")


async def _mqtt_connect(host: str, port: int, tls: ssl.SSLContext) -> None:
    async with aiomqtt.Client(host, port, timeout=5, tls_context=tls):
        pass


def _run(command: list[str], cwd: Path | None = None, timeout: float = 300) -> str:
    done = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(command)}: {done.stdout}\n{done.stderr}"
    return done.stdout


def test_compose_up_runs_the_exported_chain(
    docker_engine: Any, built_images: dict[str, ImageResult], tmp_path: Path
) -> None:
    compose = _compose_command()
    if compose is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    out = _export(tmp_path, key_api_port=28440, mqtt_port=28830)
    project = ["-p", "qkdnet-test-compose"]
    try:
        _run([*compose, *project, "up", "-d"], cwd=out)
        assert asyncio.run(_keys_flow(out)) == 4
        # Telemetry names each node by the address its peers dial, not its wildcard listen. The
        # broker, published as asked, speaks TLS and admits the controller's certificate...
        endpoints = json.loads((out / "endpoints.json").read_text())
        client = endpoints["mqtt_client"]
        tls = client_tls_context(Path(client["ca"]), Path(client["cert"]), Path(client["key"]))
        watch = TelemetryWatch("localhost:28830", "qkdnet/chain5", tls=tls)
        nodes = asyncio.run(watch.collect(3.0)).nodes
        assert {n: nodes[n]["address"] for n in nodes} == {
            n: f"{n}:50051" for n in ("a", "r1", "r2", "r3", "b")
        }
        # ...but no client without one.
        anonymous = ssl.create_default_context(cafile=client["ca"])
        with pytest.raises(aiomqtt.MqttError):
            asyncio.run(_mqtt_connect("localhost", 28830, anonymous))
    finally:
        _run([*compose, *project, "down", "-v", "--timeout", "15"], cwd=out)
    label = "com.docker.compose.project=qkdnet-test-compose"
    assert not docker_engine.containers.list(
        all=True, ignore_removed=True, filters={"label": label}
    )
    assert not docker_engine.volumes.list(filters={"label": label})


@pytest.fixture
def swarm(docker_engine: Any) -> Iterator[None]:
    """A swarm to deploy to: this engine's if it is in one, else a single-node swarm made here
    and left again afterwards."""
    state = docker_engine.info().get("Swarm", {}).get("LocalNodeState")
    had_gateway = bool(docker_engine.networks.list(names=["docker_gwbridge"]))
    made = False
    if state != "active":
        done = subprocess.run(
            ["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"Swarm cannot run on this engine: {done.stderr.strip()}")
        made = True
    try:
        yield
    finally:
        if made:
            subprocess.run(
                ["docker", "swarm", "leave", "--force"], capture_output=True, check=False
            )
            if not had_gateway:  # swarm init made it; leaving does not remove it
                for network in docker_engine.networks.list(names=["docker_gwbridge"]):
                    network.remove()


def test_stack_deploy_runs_the_exported_chain(
    docker_engine: Any, built_images: dict[str, ImageResult], tmp_path: Path, swarm: None
) -> None:
    out = _export(tmp_path, key_api_port=28540, mqtt_port=28930)
    stack = "qkdnet-test-stack"
    label = {"label": f"com.docker.stack.namespace={stack}"}
    try:
        _run(["docker", "stack", "deploy", "-c", str(out / "compose.yaml"), stack])
        services = _run(["docker", "stack", "services", stack, "--format", "{{.Name}}"])
        assert sorted(services.split()) == sorted(
            f"{stack}_{name}" for name in ("broker", "a", "r1", "r2", "r3", "b")
        )
        assert asyncio.run(_keys_flow(out)) == 4
    finally:
        _run(["docker", "stack", "rm", stack])
        deadline = time.monotonic() + 60
        while docker_engine.containers.list(all=True, ignore_removed=True, filters=label):
            assert time.monotonic() < deadline, "the stack's containers outlived docker stack rm"
            time.sleep(1)
        for volume in docker_engine.volumes.list(filters=label):  # Swarm keeps volumes
            volume.remove(force=True)
        while docker_engine.networks.list(filters=label):
            assert time.monotonic() < deadline, "the stack's network outlived docker stack rm"
            time.sleep(1)
