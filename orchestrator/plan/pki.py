"""The PKI of a qkdnet deployment: a CA, certificates with roles, link secrets.

Every certificate names one identity (`qkdnet.node.identity`): its common name is the name, and
its only URI subject alternative name the SPIFFE ID `spiffe://<trust domain>/<role>/<name>`,
which is what nodes and brokers authorise by. What else a certificate holds follows its role:

| role         | extended key usage     | other names                                   |
|--------------|------------------------|-----------------------------------------------|
| `node`       | TLS server and client  | the node ID as a DNS name, its IP, extra names |
| `broker`     | TLS server             | `broker` as a DNS name, its IP, extra names    |
| `sae`        | TLS client             | -                                              |
| `controller` | TLS client             | -                                              |

Every file is written readable by its owner only, from the first byte (`file_modes`).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qkdnet.node.file_modes import private_dir, write_private
from qkdnet.node.identity import (
    BROKER_NAME,
    CONTROLLER_NAME,
    Identity,
    Role,
    certificate_identity,
    trust_domain_for,
)

from .credentials import CertificatePaths

__all__ = [
    "CertificateAuthority",
    "CertificatePaths",
    "TopologyPki",
    "provision_pki",
    "write_psk",
]

_VALIDITY = datetime.timedelta(days=365)
_RENEW_BEFORE = datetime.timedelta(days=30)  # a certificate this close to its end is reissued
_SERVER_ROLES = frozenset({Role.NODE, Role.BROKER})  # certificates for TLS servers
_CLIENT_ROLES = frozenset({Role.NODE, Role.SAE, Role.CONTROLLER})  # and for TLS clients


def write_psk(path: Path, pads_per_direction: int = 4096) -> None:
    """A fresh pre-shared authentication secret for one link."""
    from qkdnet.node.link_secret import PreSharedSecret

    write_private(path, PreSharedSecret.generate(pads_per_direction).to_bytes())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qkdnet"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _alternative_names(identity: Identity, hosts: list[str]) -> list[x509.GeneralName]:
    """The SPIFFE ID, then (for servers) the DNS names and IP addresses of `hosts`."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.spiffe_id)]
    if identity.role in _SERVER_ROLES:
        for host in [identity.name, *hosts]:
            if _is_ip(host):
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            else:
                names.append(x509.DNSName(host))
    return list(dict.fromkeys(names))


class CertificateAuthority:
    """A CA kept in a directory (`ca.pem`, `ca.key`); created on first use.

    It issues certificates in one SPIFFE trust domain (`trust_domain`)."""

    def __init__(
        self, directory: Path, name: str = "qkdnet CA", trust_domain: str = "qkdnet"
    ) -> None:
        self.directory = directory
        self.trust_domain = trust_domain
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
        private_dir(directory)
        write_private(self.key_path, _key_pem(self._key))
        write_private(self.cert_path, self._cert.public_bytes(serialization.Encoding.PEM))

    def identity(self, role: Role, name: str) -> Identity:
        """`name` in `role` within this CA's trust domain."""
        return Identity(self.trust_domain, role, name)

    def issue(
        self, role: Role, name: str, directory: Path, *, hosts: list[str] | None = None
    ) -> CertificatePaths:
        """Issue a certificate for `name` in `role` into `directory` (cert.pem, key.pem).

        `hosts` (DNS names or IP addresses) are added to the names of a server certificate.
        """
        identity = self.identity(role, name)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usages = []
        if role in _SERVER_ROLES:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        if role in _CLIENT_ROLES:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(_alternative_names(identity, hosts or [])),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        paths = CertificatePaths(
            cert=directory / "cert.pem", key=directory / "key.pem", ca=self.cert_path
        )
        write_private(paths.key, _key_pem(key))
        write_private(paths.cert, cert.public_bytes(serialization.Encoding.PEM))
        return paths

    def issue_once(
        self, role: Role, name: str, directory: Path, *, hosts: list[str] | None = None
    ) -> CertificatePaths:
        """The certificate in `directory` if it is this CA's and names exactly what `issue`
        would (identity, hosts); else a new one."""
        paths = CertificatePaths(directory / "cert.pem", directory / "key.pem", self.cert_path)
        if self._current(paths, self.identity(role, name), hosts):
            return paths
        return self.issue(role, name, directory, hosts=hosts)

    def _current(
        self, paths: CertificatePaths, identity: Identity, hosts: list[str] | None
    ) -> bool:
        """Whether the certificate and key at `paths` are this CA's, belong together, name
        exactly `identity` and `hosts`, and stay valid for a while yet."""
        try:
            cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
            cert.verify_directly_issued_by(self._cert)
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
        except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            return False
        if _public(key.public_key()) != _public(cert.public_key()):
            return False  # a key written without its certificate (a crash in between)
        if cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) < _RENEW_BEFORE:
            return False
        expected = _alternative_names(identity, hosts or [])
        return certificate_identity(cert) == identity and set(names) == set(expected)


@dataclass(frozen=True)
class TopologyPki:
    """Every credential of one deployment, by owner."""

    ca: Path
    controller: CertificatePaths
    broker: CertificatePaths
    nodes: dict[str, CertificatePaths]
    saes: dict[str, CertificatePaths]
    link_secrets: dict[str, Path]


def provision_pki(
    directory: Path,
    nodes: dict[str, list[str]],
    links: list[str],
    *,
    deployment: str,
    hosts: dict[str, str] | None = None,
    broker_hosts: list[str] | None = None,
    extra_names: list[str] | None = None,
) -> TopologyPki:
    """The PKI of a deployment under `directory`, reusing whatever is already there and right.

    `nodes` maps node IDs to the SAE IDs they serve; `links` are link IDs. Layout: `ca.pem`,
    `ca.key`, `orchestrator/` (the controller), `broker/`, `nodes/<id>/`, `saes/<sae>/` and
    `links/<a>--<b>.psk`. A node certificate names the node ID and, with `hosts`, the node's IP
    address, so that HTTPS clients of its key API can verify it; the broker's names
    `broker_hosts`; `extra_names` (DNS names or IP addresses) go into every server certificate.
    Existing certificates are kept while they name what they should (a redeployed node presents
    the same identity), and a link's secret always is (it must match the pads its stores have
    already used).
    """
    ca = CertificateAuthority(directory, f"qkdnet {deployment} CA", trust_domain_for(deployment))
    extra = list(extra_names or [])
    controller = ca.issue_once(Role.CONTROLLER, CONTROLLER_NAME, directory / "orchestrator")
    broker = ca.issue_once(
        Role.BROKER, BROKER_NAME, directory / "broker", hosts=[*(broker_hosts or []), *extra]
    )
    node_paths = {}
    for node in nodes:
        host = (hosts or {}).get(node)
        node_paths[node] = ca.issue_once(
            Role.NODE, node, directory / "nodes" / node, hosts=[*([host] if host else []), *extra]
        )
    sae_paths = {
        sae: ca.issue_once(Role.SAE, sae, directory / "saes" / sae)
        for saes in nodes.values()
        for sae in saes
    }
    secrets: dict[str, Path] = {}
    for link_id in links:
        path = directory / "links" / f"{link_id}.psk"
        if not path.exists():
            write_psk(path)
        secrets[link_id] = path
    return TopologyPki(ca.cert_path, controller, broker, node_paths, sae_paths, secrets)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _public(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
