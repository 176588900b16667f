"""Mutual-TLS credentials of a node: load, check and turn into gRPC credentials.

Checks happen before the server starts so that a missing or wrong file stops the node with one
message naming the file: the certificate must be signed by the CA, match the private key and
carry this node's ID as its common name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from .config import TlsConfig
from .errors import ConfigError

__all__ = ["NodeCredentials", "common_name", "load_credentials", "peer_common_name"]


@dataclass(frozen=True)
class NodeCredentials:
    """PEM bytes of the CA certificate, the node certificate and its private key."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def server(self) -> grpc.ServerCredentials:
        """Server credentials that require and verify a client certificate from the CA."""
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)],
            root_certificates=self.ca_pem,
            require_client_auth=True,
        )

    def channel(self) -> grpc.ChannelCredentials:
        """Client credentials presenting this node's certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.key_pem,
            certificate_chain=self.cert_pem,
        )


def peer_common_name(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The CN of the client certificate of a gRPC caller ('' when there is none)."""
    names = list(context.auth_context().get("x509_common_name", []))
    return names[0].decode() if names else ""


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


def load_credentials(tls: TlsConfig, expected_cn: str | None) -> NodeCredentials:
    """Read and cross-check the TLS files; ConfigError names the file at fault."""
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
    if expected_cn is not None and common_name(cert) != expected_cn:
        raise ConfigError(
            f"{tls.cert}: certificate is for {common_name(cert)!r}, not for node {expected_cn!r}"
        )
    return NodeCredentials(ca_pem=ca_pem, cert_pem=cert_pem, key_pem=key_pem)
