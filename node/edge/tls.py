"""Mutual-TLS credentials of a node: load, check and turn into gRPC credentials.

Checks happen before the server starts so that a missing or wrong file stops the node with one
message naming the file: the certificate must be signed by the CA, match the private key and
name this node in the `node` role (`identity.py`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ..config import TlsConfig
from ..errors import ConfigError
from ..identity import Identity, Role, certificate_identity
from .grpc_dial import credentials

__all__ = ["NodeCredentials", "client_tls_context", "common_name", "load_credentials"]


@dataclass(frozen=True)
class NodeCredentials:
    """PEM bytes of the CA certificate, the node certificate and its private key, and the
    identity the certificate names."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    identity: Identity

    def server(self, also_trusted: bytes = b"") -> grpc.ServerCredentials:
        """Server credentials that require and verify a client certificate from the CA (or
        from the CAs of `also_trusted`, PEM: a border's peer domain's, whose certificates
        `RoleAuthorization` then admits to the shared link only)."""
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)],
            root_certificates=self.ca_pem + also_trusted,
            require_client_auth=True,
        )

    def channel(self, trusted: bytes | None = None) -> grpc.ChannelCredentials:
        """Client credentials presenting this node's certificate, trusting the CA (or only
        the CA `trusted`, PEM: a peer domain's, to dial its border)."""
        return credentials(trusted or self.ca_pem, self.cert_pem, self.key_pem)


def client_tls_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS client context for a server of the deployment (its MQTT broker, say): `cert`
    presented, the server's certificate checked against `ca` and the address dialled."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def common_name(cert: x509.Certificate) -> str:
    """The subject CN of a certificate ('' when it has none)."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode()


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror})") from None


def load_credentials(tls: TlsConfig, node_id: str, role: Role = Role.NODE) -> NodeCredentials:
    """Read and cross-check the TLS files; ConfigError names the file at fault.

    The certificate must name `node_id` in `role`, both as its common name and in its SPIFFE ID.
    """
    ca_pem = _read(tls.ca, "CA certificate")
    cert_pem = _read(tls.cert, "certificate")
    key_pem = _read(tls.key, "private key")
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        raise ConfigError(f"{tls.ca}: not a PEM certificate") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ConfigError(f"{tls.cert}: not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{tls.key}: not an unencrypted PEM private key") from None
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(f"{tls.cert}: not issued by the CA in {tls.ca}") from None
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ConfigError(f"{tls.key}: does not match the certificate {tls.cert}")
    if common_name(cert) != node_id:
        raise ConfigError(
            f"{tls.cert}: certificate is for {common_name(cert)!r}, not for node {node_id!r}"
        )
    identity = certificate_identity(cert)
    if identity is None or identity.role != role or identity.name != node_id:
        named = f"names {identity}" if identity else "carries no qkdnet role (SPIFFE ID)"
        raise ConfigError(
            f"{tls.cert}: certificate {named}, not {role.value} {node_id!r}; "
            "redeploy to have the PKI issue it again"
        )
    return NodeCredentials(ca_pem=ca_pem, cert_pem=cert_pem, key_pem=key_pem, identity=identity)
