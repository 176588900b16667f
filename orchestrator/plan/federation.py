"""Laying out a topology with domains: one deployment per domain, joined at their borders.

Each domain deploys as a network of its own (`domains.domain_topology`), named
`<topology>-<domain>`, with its own state directory, CA, broker and address block; its plan
carries a `DomainRole`: its borders, each with its peer border's node ID, deployment and ETSI
GS QKD 020 URL, and where keys for other domains' SAEs go. Deployed all at once, the domains get
distinct blocks and learn each other's borders' addresses from each other's plans; deployed
apart (`only`), a peer border's URL comes from its `border_url` in the topology, else from the
peer domain's deployment on this machine, else from the peer domain's `subnet`.

The two borders of an interworking link trust each other through the peer domain's CA
certificate, copied into the deployment's `pki/peers/` before its nodes start
(`install_peer_ca`): exchanged at deploy time, never a shared CA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qkdnet.node.errors import ConfigError

from .domain_role import INTERWORKING_PORT, BorderPlan, DomainRole, deployment_name
from .domains import Border, borders, domain_topology, far_directory
from .network_plan import GRPC_PORT, NetworkPlan, default_state_dir, node_host
from .registry import Registry, block_of_subnet
from .topology import Topology

__all__ = ["domain_state_dir", "install_peer_ca", "plan_domains", "share_link_secrets"]


def domain_state_dir(
    topology: Topology, domain: str, state_dir: Path | None, *, apart: bool
) -> Path:
    """Where the deployment of `domain` keeps its state: `state_dir` itself for a domain
    deployed apart, `state_dir/<domain>` for all at once; by default, where the registry says
    it is deployed, else `~/.local/state/qkdnet/<topology>-<domain>`."""
    name = deployment_name(topology.name, domain)
    if state_dir is not None:
        return (state_dir if apart else state_dir / domain).absolute()
    entry = Registry().get(name)
    return entry.state_dir if entry is not None else default_state_dir(name).absolute()


def _port(url: str | None) -> int:
    return int(url.rpartition(":")[2]) if url else INTERWORKING_PORT


def plan_domains(
    topology: Topology,
    *,
    state_dir: Path | None = None,
    broker_url: str | None = None,
    runtime: str | None = None,
    only: str | None = None,
) -> dict[str, NetworkPlan]:
    """The plan of every domain of `topology` (of domain `only`), each with its `DomainRole`."""
    if only is not None and only not in topology.domains:
        raise ConfigError(
            f"--domain: {topology.name} has no domain {only!r} "
            f"(its domains: {', '.join(topology.domains)})"
        )
    runtime = runtime or topology.runtime
    if runtime != "process":
        raise ConfigError(
            f"{topology.name}: a topology with domains deploys on the process runtime only for "
            "now (on docker each domain's bridge network is closed to the others')"
        )
    registry = Registry()
    plans: dict[str, NetworkPlan] = {}
    taken: set[int] = set()
    for domain in topology.domains:
        if only is not None and domain != only:
            continue
        plan = NetworkPlan.build(
            domain_topology(topology, domain),
            domain_state_dir(topology, domain, state_dir, apart=only is not None),
            broker_url,
            runtime,
            avoid=frozenset(taken),
        )
        taken.add(plan.subnet)
        plans[domain] = plan
    hosts = {node: plan.nodes[node].host for plan in plans.values() for node in plan.nodes}

    def url_of(node: str) -> str:
        declared = topology.nodes[node].border_url
        if declared is not None:
            return declared
        domain = topology.nodes[node].domain
        assert domain is not None
        host = hosts.get(node) or _host_elsewhere(topology, domain, node, registry)
        if host is None:
            raise ConfigError(
                f"{topology.name}: where does border {node} of domain {domain} listen? Deployed "
                f"apart, give it `border_url: https://HOST:PORT` in the topology (or give "
                f"domain {domain} a `subnet`, or deploy it on this machine first)"
            )
        return f"https://{host}:{INTERWORKING_PORT}"

    resolved = {link.index: link for link in topology.resolved_links()}

    def shared_link(border: Border) -> dict[str, Any] | None:
        link = resolved.get(border.link_index)  # none for an interworking link
        if link is None:
            return None
        if only is not None:
            raise ConfigError(
                f"{topology.name}: domain {only} shares a {link.kind} link with domain "
                f"{border.peer_domain} (links[{link.index}]); its two ends need one pre-shared "
                "authentication secret, which deploying domains apart does not exchange yet: "
                "deploy all domains at once, or join them with an interworking link"
            )
        return {
            "kind": link.kind,
            "channel": link.channel.model_dump(mode="json"),
            "processing": link.processing.model_dump(mode="json"),
            "external_kme": (
                link.external_kme.model_dump(mode="json") if link.external_kme else None
            ),
            "pqc_bridge": link.pqc_bridge.model_dump(mode="json") if link.pqc_bridge else None,
        }

    out = {}
    for domain, plan in plans.items():
        role = DomainRole(
            topology=topology.name,
            domain=domain,
            borders=tuple(
                BorderPlan(
                    node=border.node,
                    port=_port(topology.nodes[border.node].border_url),
                    url=url_of(border.node),
                    peer_node=border.peer_node,
                    peer_domain=border.peer_domain,
                    peer_deployment=deployment_name(topology.name, border.peer_domain),
                    peer_url=url_of(border.peer_node),
                    far_saes=border.far_saes,
                    link=shared_link(border),
                    peer_address=f"{hosts[border.peer_node]}:{GRPC_PORT}"
                    if border.peer_node in hosts
                    else None,
                )
                for border in borders(topology)
                if border.domain == domain
            ),
            far_directory=far_directory(topology, domain),
        )
        out[domain] = plan.with_domain(role)
    return out


def _host_elsewhere(topology: Topology, domain: str, node: str, registry: Registry) -> str | None:
    """The host of `node` of a domain not laid out here: from that domain's deployment on this
    machine, else from the domain's `subnet`."""
    entry = registry.get(deployment_name(topology.name, domain))
    if entry is not None:
        recorded = NetworkPlan.load(entry.state_dir)
        if recorded is not None and node in recorded.nodes:
            return recorded.nodes[node].host
    subnet = topology.domains[domain].subnet
    if subnet is None:
        return None
    members = [n for n, spec in topology.nodes.items() if spec.domain == domain]
    return node_host("process", block_of_subnet(subnet, "process", "subnet"), members.index(node))


def install_peer_ca(plan: NetworkPlan, peer_domain: str, pem: bytes, where: str) -> Path:
    """Keep `pem`, the CA certificate of `peer_domain` (read from `where`), as the trust bundle
    of this domain's borders towards it (ConfigError when it is not a CA certificate)."""
    from cryptography import x509

    from qkdnet.node.file_modes import private_dir, write_private

    assert plan.domain is not None
    chosen = [b for b in plan.domain.borders if b.peer_domain == peer_domain]
    if not chosen:
        peers = sorted({b.peer_domain for b in plan.domain.borders}) or ["none"]
        raise ConfigError(
            f"{where}: domain {plan.domain.domain} has no border towards {peer_domain!r} "
            f"(its peers: {', '.join(peers)})"
        )
    try:
        certificate = x509.load_pem_x509_certificate(pem)
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except (ValueError, x509.ExtensionNotFound):
        raise ConfigError(f"{where}: not a PEM CA certificate") from None
    if not constraints.value.ca:
        raise ConfigError(f"{where}: a certificate, but not a CA's")
    path = chosen[0].peer_ca(plan.pki_dir)
    private_dir(path.parent)
    write_private(path, pem)
    return path


def share_link_secrets(plans: dict[str, NetworkPlan]) -> None:
    """Give both ends of every QKD link across domains the same pre-shared authentication
    secret: the one of the domain whose name sorts first, copied into the other's PKI (both
    domains are laid out here: deployed at once)."""
    from qkdnet.node.file_modes import write_private

    pkis = {domain: plan.provision_pki() for domain, plan in plans.items()}
    for domain, plan in plans.items():
        for border in plan.shared_links():
            if border.peer_domain in pkis and border.peer_domain < domain:
                source = pkis[border.peer_domain].link_secrets[border.link_id]
                write_private(pkis[domain].link_secrets[border.link_id], source.read_bytes())
