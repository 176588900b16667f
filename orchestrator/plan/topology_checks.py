"""What is well-formed in a topology but cannot work: links of a kind no node has, BB84 links
whose model gives no key (with the cut-off length and what to change), SAEs no other SAE can
reach. `load_topology` runs these checks after the file has parsed and validated.
"""

from __future__ import annotations

import math
from dataclasses import replace

from .topology import ResolvedLink, Topology, _PathError

__all__ = ["unworkable"]

# The reconciliation efficiency a link assumes when it decides that a frame can yield no key
# (its early abort, `_EARLY_ABORT_F` in node/protocol/transmitter.py): where the model gives
# no key at this efficiency, every frame of the link is aborted.
_NO_KEY_EFFICIENCY = 1.1


def unworkable(topology: Topology, links: list[ResolvedLink]) -> list[_PathError]:
    """Every link of a kind no node has, every BB84 link that distils no key, and every SAE
    that no other SAE can reach."""
    return [
        *_unknown_kinds(links),
        *_links_without_key([link for link in links if link.kind == "bb84"]),
        *_unreachable_saes(topology),
    ]


def _unknown_kinds(links: list[ResolvedLink]) -> list[_PathError]:
    """Links whose kind is not installed (the names come from entry points: nothing loads)."""
    if all(link.kind == "bb84" for link in links):
        return []
    from qkdnet.node.link_kinds import available

    have = available()
    return [
        _PathError(
            ("links", link.index, "kind"),
            f"no link kind {link.kind!r} is installed (have: {', '.join(have)})",
        )
        for link in links
        if link.kind not in have
    ]


def _links_without_key(links: list[ResolvedLink]) -> list[_PathError]:
    """Links whose model secret key rate is zero, each with the model's cut-off length.

    The model is closed-form: a fraction of a millisecond a link (the cut-off, searched only
    for a link that is refused, takes a few milliseconds more)."""
    from qkdnet.node.core.channel_model import max_distance, model_figures  # numpy: only here

    problems = []
    for link in links:
        params = link.channel.parameters()
        sample = link.processing.pe_sample_fraction
        figures = model_figures(params, _NO_KEY_EFFICIENCY, pe_sample_fraction=sample)
        if figures.secret_per_pulse > 0.0:
            continue
        a, b = link.endpoints
        length = link.channel.length_km
        what = f"link {a}--{b} of {length:g} km yields no key"
        cutoff = max_distance(
            params,
            _NO_KEY_EFFICIENCY,
            decoy=params.decoy,
            practical=True,
            optimize_mu=not params.decoy and link.channel.mu is None,
        )
        if 0.0 < cutoff < length:
            hops = math.floor(length / cutoff) + 1
            problems.append(
                _PathError(
                    ("links", link.index, "length_km"),
                    f"{what}: with these parameters the model's secret key rate falls to zero "
                    f"beyond {cutoff:.1f} km; shorten the link (or relay through trusted nodes: "
                    f"{hops} links of {length / hops:.4g} km), or give it better parameters "
                    "(fiber_loss_db_per_km, detector_efficiency, dark_count_yield)",
                )
            )
            continue
        problems.append(_PathError(("links", link.index), f"{what}: {_why_no_key(link)}"))
    return problems


def _why_no_key(link: ResolvedLink) -> str:
    """Why a link makes no key even at 0 km, and what to change."""
    channel = link.channel
    if not channel.decoy and channel.mu is not None:
        return (
            f"without decoys the multi-photon pulses of mu = {channel.mu:g} leave no key at any "
            "length (GLLP); leave mu unset (the node then picks the best one for the length) or "
            "turn decoy on"
        )
    from qkdnet.node.core.channel_model import model_figures

    qber = model_figures(replace(channel.parameters(), length_km=0.0), _NO_KEY_EFFICIENCY).e_mu
    fixes = ["misalignment_error", "dark_count_yield"]
    if channel.eavesdrop_fraction > 0.0:
        fixes.insert(0, "eavesdrop_fraction")
    return (
        "with these parameters the model's secret key rate is zero at any length (expected "
        f"QBER {qber:.1%} even at 0 km, where one-way post-processing needs under about 11 %); "
        f"lower {' or '.join(fixes)}"
    )


def _unreachable_saes(topology: Topology) -> list[_PathError]:
    """SAEs on nodes whose part of the network (nodes linked directly or through relays)
    holds no other SAE: nothing could ever deliver them a key."""
    parent = {node_id: node_id for node_id in topology.nodes}

    def root(node_id: str) -> str:
        while parent[node_id] != node_id:
            parent[node_id] = parent[parent[node_id]]
            node_id = parent[node_id]
        return node_id

    for link in topology.links:
        parent[root(link.endpoints[0])] = root(link.endpoints[1])
    saes_in: dict[str, int] = {}
    for node_id, node in topology.nodes.items():
        saes_in[root(node_id)] = saes_in.get(root(node_id), 0) + len(node.saes)
    total = sum(saes_in.values())
    problems = []
    for node_id, node in topology.nodes.items():
        if not node.saes or saes_in[root(node_id)] > 1:
            continue
        others = [n for n in topology.nodes if n != node_id and root(n) == root(node_id)]
        what = f"SAE {node.saes[0]!r} of node {node_id!r} cannot reach any other SAE"
        if total == 1:
            why = (
                "it is the network's only SAE, and every key has a master and a slave SAE; "
                "list a second SAE on a node"
            )
        elif not others:
            why = (
                f"node {node_id!r} has no link and serves no other SAE; link it to a node of "
                f"the network (links: - {{endpoints: [{node_id}, NODE], length_km: KM}}) or "
                "serve the SAE at a node that has links"
            )
        else:
            shown = ", ".join(repr(n) for n in others[:5]) + (", ..." if len(others) > 5 else "")
            why = (
                f"no node linked to {node_id!r}, directly or through relays ({shown}), serves an "
                "SAE; link this part of the network to a node that serves one, or list an SAE "
                "on one of its nodes"
            )
        problems.append(_PathError(("nodes", node_id, "saes"), f"{what}: {why}"))
    return problems
