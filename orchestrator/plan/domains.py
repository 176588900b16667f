"""Domains of a topology: each a network of its own, joined to others at border nodes.

A topology that declares `domains` is several networks: each domain has its own nodes, links,
SAEs, CA and routing, and its border nodes are joined to the border nodes of other domains by
links across domains: an `interworking` link (two KMSs joined by ETSI GS QKD 020 alone) or a
QKD link of any kind, whose key pads what the two borders hand each other over 020.
`domain_topology` is one domain as a topology of its own; `borders` says, for each border
node, its peer and the SAEs of other domains it reaches through that peer (announced inside its
domain as served by the border); `far_directory` is where each node of a domain sends keys for
SAEs of other domains.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .topology import Topology

__all__ = ["Border", "borders", "domain_topology", "far_directory"]


@dataclass(frozen=True)
class Border:
    """A border node: its domain, its peer border in another domain, and the SAEs of other
    domains reached through that peer (its own domain excepted: no way back)."""

    node: str
    domain: str
    peer_node: str
    peer_domain: str
    far_saes: tuple[str, ...]
    link_index: int = -1  # the link across domains in the topology's `links`


def _saes_by_domain(topology: Topology) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {name: [] for name in topology.domains}
    for node in topology.nodes.values():
        if node.domain is not None:
            out[node.domain].extend(node.saes)
    return out


def borders(topology: Topology) -> list[Border]:
    """Every border node (both ends of every link across domains), in link order."""
    neighbours: dict[str, set[str]] = {name: set() for name in topology.domains}
    pairs = []
    for index, link in enumerate(topology.links):
        a, b = link.endpoints
        da, db = topology.nodes[a].domain, topology.nodes[b].domain
        if da == db:
            continue
        assert da is not None
        assert db is not None
        neighbours[da].add(db)
        neighbours[db].add(da)
        pairs += [(a, da, b, db, index), (b, db, a, da, index)]
    saes = _saes_by_domain(topology)
    out = []
    for node, domain, peer, peer_domain, index in pairs:
        # The domains reachable from the peer's without passing through this one.
        seen, queue = {domain, peer_domain}, deque([peer_domain])
        while queue:
            for nxt in sorted(neighbours[queue.popleft()] - seen):
                seen.add(nxt)
                queue.append(nxt)
        far = tuple(
            sae for name in topology.domains if name in seen - {domain} for sae in saes[name]
        )
        out.append(Border(node, domain, peer, peer_domain, far, index))
    return out


def far_directory(topology: Topology, domain: str) -> dict[str, str]:
    """SAE ID -> the border node of `domain` keys for it go to, for every SAE of another
    domain that `domain` reaches (through the first border, by node ID, that reaches it)."""
    out: dict[str, str] = {}
    for border in sorted(borders(topology), key=lambda b: b.node):
        if border.domain == domain:
            for sae in border.far_saes:
                out.setdefault(sae, border.node)
    return out


def domain_topology(topology: Topology, domain: str) -> Topology:
    """`domain` as a topology of its own (named `<name>-<domain>`): its nodes and the links
    between them, the domain's address block, the settings of the whole; no domains, no links
    across domains."""
    nodes = {
        node_id: node.model_copy(update={"domain": None, "border_url": None})
        for node_id, node in topology.nodes.items()
        if node.domain == domain
    }
    links = [link for link in topology.links if all(end in nodes for end in link.endpoints)]
    return topology.model_copy(
        update={
            "name": f"{topology.name}-{domain}",
            "domains": {},
            "nodes": nodes,
            "links": links,
            "subnet": topology.domains[domain].subnet,
        }
    )
