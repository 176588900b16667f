"""A deployment's part in a topology with domains: which domain it is and how it joins the others.

A topology that declares domains deploys as one deployment per domain (`federation.py`), named
`<topology>-<domain>`, each with its own CA, broker and address block. `DomainRole` is what such
a deployment's plan carries beyond a plain network: its border nodes with their peers (the peer
border's node ID, deployment and ETSI GS QKD 020 URL) and where keys for SAEs of other domains
go. Plain data, recorded in plan.json, so the verbs read it without the topology's models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["INTERWORKING_PORT", "BorderPlan", "DomainRole", "deployment_name"]

INTERWORKING_PORT = 8020  # a border's ETSI GS QKD 020 API, beside gRPC (50051) and 014 (8443)


def deployment_name(topology: str, domain: str) -> str:
    """The name of the deployment of `domain` of the topology named `topology`."""
    return f"{topology}-{domain}"


@dataclass(frozen=True)
class BorderPlan:
    """A border node of this domain and its peer in another domain."""

    node: str
    port: int  # where its 020 API listens (on the node's host)
    url: str  # https://host:port the peer reaches that API by
    peer_node: str
    peer_domain: str
    peer_deployment: str  # the peer domain's deployment: its name gives its trust domain
    peer_url: str
    far_saes: tuple[str, ...]  # SAEs of other domains reached through the peer
    # The QKD link the two borders share, when they do (its kind, channel, processing and
    # external KMEs as node configurations have them), and where the peer's gRPC listens.
    link: dict[str, Any] | None = None
    peer_address: str | None = None

    @property
    def link_id(self) -> str:
        """The shared link's ID (`a--b`, the sorted node IDs)."""
        return "--".join(sorted((self.node, self.peer_node)))

    def peer_ca(self, pki_dir: Path) -> Path:
        """Where this deployment keeps the peer domain's CA certificate (its trust bundle)."""
        return pki_dir / "peers" / f"{self.peer_deployment}.pem"

    def as_json(self) -> dict[str, Any]:
        return {**self.__dict__, "far_saes": list(self.far_saes)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BorderPlan:
        return cls(**{**data, "port": int(data["port"]), "far_saes": tuple(data["far_saes"])})


@dataclass(frozen=True)
class DomainRole:
    """This deployment is domain `domain` of the topology `topology`."""

    topology: str
    domain: str
    borders: tuple[BorderPlan, ...]
    far_directory: dict[str, str]  # SAE ID of another domain -> this domain's border for it

    def border(self, node_id: str) -> BorderPlan | None:
        return next((b for b in self.borders if b.node == node_id), None)

    def as_json(self) -> dict[str, Any]:
        return {
            "topology": self.topology,
            "domain": self.domain,
            "borders": [border.as_json() for border in self.borders],
            "far_directory": dict(self.far_directory),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DomainRole:
        return cls(
            topology=str(data["topology"]),
            domain=str(data["domain"]),
            borders=tuple(BorderPlan.from_json(b) for b in data["borders"]),
            far_directory={str(k): str(v) for k, v in data["far_directory"].items()},
        )
