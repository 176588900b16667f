"""The node agent's gRPC surface: health, reflection, who may call what over mutual TLS."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from qkdnet.node.edge.grpc_dial import credentials_from_files, dial
from qkdnet.node.identity import Role
from qkdnet.orchestrator.cli.link_demo import RECEIVER, TRANSMITTER
from qkdnet.orchestrator.plan.pki import CertificateAuthority, CertificatePaths
from qkdnet.v1 import control_pb2, control_pb2_grpc, link_pb2_grpc

from .conftest import PairFactory

pytestmark = pytest.mark.integration


def _channel(address: str, paths: CertificatePaths, target: str) -> grpc.aio.Channel:
    return dial(address, target, credentials_from_files(paths.ca, paths.cert, paths.key))


def _address(pair_root: Path, node: str) -> str:
    return str(json.loads((pair_root / "nodes" / node / "ready.json").read_text())["address"])


async def test_health_and_reflection(link_pair: PairFactory) -> None:
    pair = link_pair()
    await pair.start(RECEIVER)
    async with _channel(_address(pair.root, RECEIVER), pair.controller_paths, RECEIVER) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reply = await health.Check(health_pb2.HealthCheckRequest(service="qkdnet.v1.NodeControl"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        response = await call.read()
        await call.done_writing()
        names = {s.name for s in response.list_services_response.service}
        assert {
            "qkdnet.v1.QuantumChannel",
            "qkdnet.v1.ClassicalChannel",
            "qkdnet.v1.NodeControl",
            "grpc.health.v1.Health",
        } <= names


async def test_client_certificate_from_another_ca_is_refused(
    link_pair: PairFactory, tmp_path: Path
) -> None:
    pair = link_pair()
    await pair.start(RECEIVER)
    stranger = CertificateAuthority(tmp_path / "other").issue(
        Role.CONTROLLER, "orchestrator", tmp_path / "s"
    )
    # Trust the real CA for the server, but present a certificate the node cannot verify.
    paths = CertificatePaths(cert=stranger.cert, key=stranger.key, ca=pair.controller_paths.ca)
    async with _channel(_address(pair.root, RECEIVER), paths, RECEIVER) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await control_pb2_grpc.NodeControlStub(ch).GetStatus(
                control_pb2.StatusRequest(), timeout=5
            )
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_only_the_peer_may_use_the_link_and_only_controllers_control(
    link_pair: PairFactory, tmp_path: Path
) -> None:
    pair = link_pair()
    await pair.start(RECEIVER)
    ca = CertificateAuthority(pair.root / "pki", trust_domain="link-demo.qkdnet")
    mallory = ca.issue(Role.NODE, "mallory", tmp_path / "mallory")
    alice = CertificatePaths(
        cert=pair.root / "pki" / "nodes" / TRANSMITTER / "cert.pem",
        key=pair.root / "pki" / "nodes" / TRANSMITTER / "key.pem",
        ca=ca.cert_path,
    )
    address = _address(pair.root, RECEIVER)
    async with _channel(address, mallory, RECEIVER) as ch:
        # No message is needed: the node refuses the stream as it opens. (Writing first raced
        # with that refusal, and then gRPC reported its own INTERNAL error for the write.)
        call = link_pb2_grpc.ClassicalChannelStub(ch).Session()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call.read()
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with _channel(address, alice, RECEIVER) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await control_pb2_grpc.NodeControlStub(ch).GetStatus(control_pb2.StatusRequest())
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_sigterm_stops_gracefully(link_pair: PairFactory) -> None:
    pair = link_pair()
    await pair.start()
    node = pair.nodes[TRANSMITTER]
    await pair.stop(TRANSMITTER)
    assert node.process is not None
    assert node.process.returncode == 0
    assert '"event":"node_stopped"' in node.log_path.read_text()
    assert not (pair.root / "nodes" / TRANSMITTER / "ready.json").exists()
