"""Topologies with domains: what `validate` refuses, and how a topology splits into domains,
their borders and where each domain sends keys for the SAEs of the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from qkdnet.node.errors import ConfigError
from qkdnet.orchestrator.plan.domains import Border, borders, domain_topology, far_directory
from qkdnet.orchestrator.plan.network_plan import NetworkPlan
from qkdnet.orchestrator.plan.topology import Topology, load_topology

# Three domains in a row (at -- de -- fr), each with a node serving an SAE and a border or two.
THREE = """\
name: eu
domains:
  at: {description: Austria}
  de: {}
  fr: {}
nodes:
  vienna: {domain: at, saes: [sae-vienna]}
  at-border: {domain: at}
  de-east: {domain: de}
  berlin: {domain: de, saes: [sae-berlin]}
  de-west: {domain: de}
  fr-east: {domain: fr}
  paris: {domain: fr, saes: [sae-paris]}
links:
  - {endpoints: [vienna, at-border], length_km: 20}
  - {endpoints: [at-border, de-east], length_km: 0, kind: interworking}
  - {endpoints: [de-east, berlin], length_km: 30}
  - {endpoints: [berlin, de-west], length_km: 30}
  - {endpoints: [de-west, fr-east], length_km: 0, kind: interworking}
  - {endpoints: [fr-east, paris], length_km: 25}
"""


def _load(tmp_path: Path, text: str) -> Topology:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return load_topology(path)


def test_a_topology_splits_into_its_domains_and_borders(tmp_path: Path) -> None:
    topology = _load(tmp_path, THREE)
    assert [link.endpoints for link in topology.resolved_links()] == [
        ("vienna", "at-border"),
        ("de-east", "berlin"),
        ("berlin", "de-west"),
        ("fr-east", "paris"),
    ]  # interworking links are no QKD links
    de = domain_topology(topology, "de")
    assert de.name == "eu-de"
    assert set(de.nodes) == {"de-east", "berlin", "de-west"}
    assert [link.endpoints for link in de.links] == [("de-east", "berlin"), ("berlin", "de-west")]
    assert all(node.domain is None for node in de.nodes.values())
    assert not de.domains
    assert borders(topology) == [
        Border("at-border", "at", "de-east", "de", ("sae-berlin", "sae-paris")),
        Border("de-east", "de", "at-border", "at", ("sae-vienna",)),
        Border("de-west", "de", "fr-east", "fr", ("sae-paris",)),
        Border("fr-east", "fr", "de-west", "de", ("sae-vienna", "sae-berlin")),
    ]
    # Austria reaches Paris through Germany: its one border; Germany splits by direction.
    assert far_directory(topology, "at") == {"sae-berlin": "at-border", "sae-paris": "at-border"}
    assert far_directory(topology, "de") == {"sae-vienna": "de-east", "sae-paris": "de-west"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("  berlin: {domain: de, saes: [sae-berlin]}", "  berlin: {saes: [sae-berlin]}"),
         "node 'berlin' names no domain"),
        (("  paris: {domain: fr,", "  paris: {domain: es,"), "unknown domain 'es'"),
        (("{endpoints: [at-border, de-east], length_km: 0, kind: interworking}",
          "{endpoints: [at-border, de-east], length_km: 10}"),
         "only an 'interworking' link may"),
        (("{endpoints: [de-east, berlin], length_km: 30}",
          "{endpoints: [de-east, berlin], length_km: 0, kind: interworking}"),
         "are in the same one"),
        (("{endpoints: [de-west, fr-east]", "{endpoints: [de-east, fr-east]"),
         "node 'de-east' is a border already"),
    ],
)  # fmt: skip
def test_validate_names_the_domain_mistake_and_its_line(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in THREE
    with pytest.raises(ConfigError, match=message) as caught:
        _load(tmp_path, THREE.replace(old, new))
    assert str(caught.value).startswith(f"{tmp_path / 't.yaml'}:")


def test_a_node_may_name_a_domain_only_when_domains_are_declared(tmp_path: Path) -> None:
    text = "name: one\nnodes:\n  a: {domain: x, saes: [s1, s2]}\n"
    with pytest.raises(ConfigError, match="unknown domain 'x' \\(none are declared\\)"):
        _load(tmp_path, text)


def test_an_sae_reached_only_across_domains_is_reachable(tmp_path: Path) -> None:
    """Each domain holds one SAE; the interworking links make them reach each other."""
    topology = _load(tmp_path, THREE)
    assert sum(len(node.saes) for node in domain_topology(topology, "at").nodes.values()) == 1


def test_deploying_a_topology_with_domains_is_refused_plainly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be deployed as one network yet"):
        NetworkPlan.build(_load(tmp_path, THREE), tmp_path / "state", runtime="process")
