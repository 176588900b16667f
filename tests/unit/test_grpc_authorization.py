"""Roles at the gRPC layer: every call is let through or refused by the role in the caller's
certificate, before any service sees it (a real server and real mutual TLS, in process)."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from qkdnet.node.edge.grpc_authorization import RoleAuthorization, peer_name
from qkdnet.node.edge.grpc_dial import credentials_from_files, dial
from qkdnet.node.identity import Role
from qkdnet.orchestrator.plan.pki import CertificateAuthority, CertificatePaths
from qkdnet.v1 import control_pb2, control_pb2_grpc, relay_pb2, relay_pb2_grpc

DOMAIN = "unit.qkdnet"


class _Control(control_pb2_grpc.NodeControlServicer):
    async def GetStatus(
        self, request: control_pb2.StatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.NodeStatus:
        return control_pb2.NodeStatus(node_id=peer_name(context))


class _Relay(relay_pb2_grpc.KeyRelayServicer):
    async def Settle(
        self, request: relay_pb2.SettleRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> relay_pb2.SettleReply:
        return relay_pb2.SettleReply(keys=7)


def _no_role_certificate(ca_dir: Path, where: Path) -> CertificatePaths:
    """A certificate of the right CA that names no qkdnet identity (no SPIFFE ID)."""
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orchestrator")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    where.mkdir(parents=True)
    (where / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (where / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return CertificatePaths(where / "cert.pem", where / "key.pem", ca_dir / "ca.pem")


@pytest.fixture
async def server(
    tmp_path: Path,
) -> AsyncIterator[tuple[int, dict[str, CertificatePaths], RoleAuthorization]]:
    ca = CertificateAuthority(tmp_path / "ca", trust_domain=DOMAIN)
    me = ca.issue(Role.NODE, "n1", tmp_path / "n1", hosts=["127.0.0.1"])
    callers = {
        "node": ca.issue(Role.NODE, "n2", tmp_path / "n2"),
        "sae": ca.issue(Role.SAE, "s1", tmp_path / "s1"),
        "controller": ca.issue(Role.CONTROLLER, "orchestrator", tmp_path / "c"),
        # the same CA, but another trust domain: a federated peer's node, say
        "foreign node": CertificateAuthority(tmp_path / "ca", trust_domain="other.qkdnet").issue(
            Role.NODE, "n9", tmp_path / "n9"
        ),
        "no role": _no_role_certificate(tmp_path / "ca", tmp_path / "plain"),
    }
    authorization = RoleAuthorization(DOMAIN)
    grpc_server = grpc.aio.server(interceptors=[authorization])
    # One method each is enough here; the others answer UNIMPLEMENTED.
    control_pb2_grpc.add_NodeControlServicer_to_server(_Control(), grpc_server)  # type: ignore[abstract]
    relay_pb2_grpc.add_KeyRelayServicer_to_server(_Relay(), grpc_server)  # type: ignore[abstract]
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), grpc_server)
    credentials = grpc.ssl_server_credentials(
        [(me.key.read_bytes(), me.cert.read_bytes())],
        root_certificates=me.ca.read_bytes(),
        require_client_auth=True,
    )
    port = grpc_server.add_secure_port("127.0.0.1:0", credentials)
    await grpc_server.start()
    yield port, callers, authorization
    await grpc_server.stop(0)


async def _call(port: int, paths: CertificatePaths, method: str) -> grpc.StatusCode:
    credentials = credentials_from_files(paths.ca, paths.cert, paths.key)
    async with dial(f"127.0.0.1:{port}", "n1", credentials) as channel:
        try:
            if method == "control":
                await control_pb2_grpc.NodeControlStub(channel).GetStatus(
                    control_pb2.StatusRequest(), timeout=5
                )
            elif method == "settle":
                await relay_pb2_grpc.KeyRelayStub(channel).Settle(
                    relay_pb2.SettleRequest(transaction_id="t"), timeout=5
                )
            else:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


DENIED = grpc.StatusCode.PERMISSION_DENIED
OK = grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("caller", "expected"),
    [
        ("node", {"control": DENIED, "settle": OK, "health": OK}),
        ("sae", {"control": DENIED, "settle": DENIED, "health": DENIED}),
        ("controller", {"control": OK, "settle": DENIED, "health": OK}),
        ("foreign node", {"control": DENIED, "settle": DENIED, "health": DENIED}),
        ("no role", {"control": DENIED, "settle": DENIED, "health": DENIED}),
    ],
)
async def test_each_role_reaches_its_services_only(
    server: tuple[int, dict[str, CertificatePaths], RoleAuthorization],
    caller: str,
    expected: dict[str, Any],
) -> None:
    port, callers, authorization = server
    got = {method: await _call(port, callers[caller], method) for method in expected}
    assert got == expected
    assert authorization.refused.total() == list(expected.values()).count(DENIED)
