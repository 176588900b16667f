"""Identities with roles: who a certificate speaks for, and in which capacity.

Every certificate of a deployment carries exactly one SPIFFE ID (an X.509-SVID, spiffe.io) as a
URI subject alternative name:

    spiffe://<trust domain>/<role>/<name>

`role` is one of `node` (a QKD node: links, relay, routing), `sae` (an application: the ETSI key
delivery APIs only), `controller` (the orchestrator: node control) and `broker` (the MQTT
broker: a TLS server only). `name` is the node ID, the SAE ID or the reserved name of the
control-plane identity, and equals the certificate's common name. The trust domain names the
deployment's CA (`<name>.qkdnet`); peers check theirs against their own.

Node IDs, SAE IDs and the reserved names share one namespace, compared without regard to case
(host names are case-insensitive, and node certificates name their node as a DNS name), so that
no application can hold a certificate that names a node or the controller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # cryptography is imported where a certificate is read (orchestrator verbs
    from cryptography import x509  # that only name identities stay cheap to start)

__all__ = [
    "BROKER_NAME",
    "CONTROLLER_NAME",
    "RESERVED_NAMES",
    "Identity",
    "Role",
    "certificate_identity",
    "peer_certificate_identity",
    "trust_domain_for",
]


class Role(StrEnum):
    """What an identity may do; the path's first segment of its SPIFFE ID."""

    NODE = "node"
    SAE = "sae"
    CONTROLLER = "controller"
    BROKER = "broker"


CONTROLLER_NAME = "orchestrator"
BROKER_NAME = "broker"
# Names the control plane uses for itself: no node or SAE may take them.
RESERVED_NAMES: dict[str, str] = {
    CONTROLLER_NAME: "the controller (the orchestrator's certificate)",
    BROKER_NAME: "the MQTT broker's certificate and service",
}

_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_SPIFFE = re.compile(rf"^spiffe://(?P<domain>[a-z0-9._-]+)/(?P<role>[a-z]+)/(?P<name>{_SEGMENT})$")


def trust_domain_for(deployment: str) -> str:
    """The SPIFFE trust domain of a deployment's CA (trust domains are lower case)."""
    return f"{deployment.lower()}.qkdnet"


@dataclass(frozen=True)
class Identity:
    """A role and a name within a trust domain."""

    trust_domain: str
    role: Role
    name: str

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/{self.role.value}/{self.name}"

    @classmethod
    def parse(cls, uri: str) -> Identity | None:
        """The identity a qkdnet SPIFFE ID names; None for anything else."""
        match = _SPIFFE.match(uri)
        if match is None:
            return None
        try:
            role = Role(match["role"])
        except ValueError:
            return None
        return cls(match["domain"], role, match["name"])

    def __str__(self) -> str:
        return f"{self.role.value} {self.name!r}"


def peer_certificate_identity(peercert: dict[str, Any] | None) -> Identity | None:
    """The identity in a TLS peer's certificate as Python's `ssl` gives it (`getpeercert()`),
    None without one."""
    names = (peercert or {}).get("subjectAltName", ())
    uris = [value for kind, value in names if kind == "URI" and value.startswith("spiffe://")]
    return Identity.parse(uris[0]) if len(uris) == 1 else None


def certificate_identity(cert: x509.Certificate) -> Identity | None:
    """The identity in a certificate's URI SAN (None when it has no single qkdnet SPIFFE ID)."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    spiffe = [uri for uri in uris if uri.startswith("spiffe://")]
    return Identity.parse(spiffe[0]) if len(spiffe) == 1 else None
