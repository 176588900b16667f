"""The PKI of a qkdnet deployment: a CA, node certificates, client certificates, link secrets.

Node certificates carry the node ID as subject CN and as a DNS subject alternative name (gRPC
checks the server name against it) and are valid for both TLS server and client use, since
nodes call each other. Private keys and secrets are written readable by the owner only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qkdnet.node.authentication import PreSharedSecret

__all__ = [
    "CertificateAuthority",
    "CertificatePaths",
    "TopologyPki",
    "provision_pki",
    "write_private",
    "write_psk",
]

_VALIDITY = datetime.timedelta(days=365)


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner may read (created that way, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def write_psk(path: Path, pads_per_direction: int = 4096) -> None:
    """A fresh pre-shared authentication secret for one link."""
    write_private(path, PreSharedSecret.generate(pads_per_direction).to_bytes())


@dataclass(frozen=True)
class CertificatePaths:
    """Where a certificate, its key and the CA certificate are."""

    cert: Path
    key: Path
    ca: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qkdnet"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


class CertificateAuthority:
    """A CA kept in a directory (`ca.pem`, `ca.key`); created on first use."""

    def __init__(self, directory: Path, name: str = "qkdnet CA") -> None:
        self.directory = directory
        self.cert_path = directory / "ca.pem"
        self.key_path = directory / "ca.key"
        if self.cert_path.exists() and self.key_path.exists():
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{self.key_path}: expected an EC private key")
            self._key = key
            self._cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            return
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        write_private(self.key_path, _key_pem(self._key))

    def issue(
        self,
        common_name: str,
        directory: Path,
        *,
        dns_names: list[str] | None = None,
        ip_addresses: list[str] | None = None,
        client_only: bool = False,
    ) -> CertificatePaths:
        """Issue a certificate for `common_name` into `directory`.

        It is valid for TLS server and client use, or only as a client with `client_only`.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in (dns_names or [common_name])]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses or []]
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH]
                    if client_only
                    else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        paths = CertificatePaths(
            cert=directory / "cert.pem", key=directory / "key.pem", ca=self.cert_path
        )
        paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_private(paths.key, _key_pem(key))
        return paths


@dataclass(frozen=True)
class TopologyPki:
    """Every credential of one deployment, by owner."""

    ca: Path
    orchestrator: CertificatePaths
    nodes: dict[str, CertificatePaths]
    saes: dict[str, CertificatePaths]
    link_secrets: dict[str, Path]


def provision_pki(
    directory: Path,
    nodes: dict[str, list[str]],
    links: list[str],
    *,
    ca_name: str,
    hosts: dict[str, str] | None = None,
    extra_names: list[str] | None = None,
) -> TopologyPki:
    """The PKI of a topology under `directory`, reusing whatever is already there.

    `nodes` maps node IDs to the SAE IDs they serve; `links` are link IDs. Layout: `ca.pem`,
    `ca.key`, `orchestrator/`, `nodes/<id>/`, `saes/<sae>/` (client certificates, CN = SAE ID)
    and `links/<a>--<b>.psk`. A node certificate names the node ID and, with `hosts`, the node's
    IP address, so that HTTPS clients of its key API can verify it; `extra_names` (DNS names or
    IP addresses) go into every node certificate too. Existing credentials are kept: a
    redeployed node must present the same identity, and a link's secret must match the pads its
    stores have already used.
    """
    ca = CertificateAuthority(directory, ca_name)

    def issue(
        cn: str, where: Path, client_only: bool = False, ip: str | None = None
    ) -> CertificatePaths:
        paths = CertificatePaths(cert=where / "cert.pem", key=where / "key.pem", ca=ca.cert_path)
        if paths.cert.exists() and paths.key.exists():
            return paths
        if client_only:
            return ca.issue(cn, where, client_only=True)
        ips = [ip] if ip else []
        dns = [cn]
        for name in extra_names or []:
            (ips if _is_ip(name) else dns).append(name)
        return ca.issue(cn, where, dns_names=dns, ip_addresses=ips)

    orchestrator = issue("orchestrator", directory / "orchestrator")
    node_paths = {
        node: issue(node, directory / "nodes" / node, ip=(hosts or {}).get(node)) for node in nodes
    }
    sae_paths = {
        sae: issue(sae, directory / "saes" / sae, client_only=True)
        for saes in nodes.values()
        for sae in saes
    }
    secrets: dict[str, Path] = {}
    for link_id in links:
        path = directory / "links" / f"{link_id}.psk"
        if not path.exists():
            write_psk(path)
        secrets[link_id] = path
    return TopologyPki(ca.cert_path, orchestrator, node_paths, sae_paths, secrets)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
