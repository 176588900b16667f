"""Topologies with domains: what `validate` refuses, and how a topology splits into domains,
their borders and where each domain sends keys for the SAEs of the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from qkdnet.node.errors import ConfigError
from qkdnet.orchestrator.plan.domains import Border, borders, domain_topology, far_directory
from qkdnet.orchestrator.plan.federation import install_peer_ca, plan_domains
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
        Border("at-border", "at", "de-east", "de", ("sae-berlin", "sae-paris"), 1),
        Border("de-east", "de", "at-border", "at", ("sae-vienna",), 1),
        Border("de-west", "de", "fr-east", "fr", ("sae-paris",), 4),
        Border("fr-east", "fr", "de-west", "de", ("sae-vienna", "sae-berlin"), 4),
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
        (("{endpoints: [de-east, berlin], length_km: 30}",
          "{endpoints: [de-east, berlin], length_km: 0, kind: interworking}"),
         "are in the same one"),
        (("{endpoints: [de-west, fr-east]", "{endpoints: [de-east, fr-east]"),
         "node 'de-east' is a border already"),
        (("{endpoints: [de-west, fr-east], length_km: 0, kind: interworking}",
          "{endpoints: [de-east, fr-east], length_km: 10}"),
         "one link across domains per border node"),
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


def test_a_topology_with_domains_is_laid_out_as_one_deployment_per_domain(
    tmp_path: Path,
) -> None:
    topology = _load(tmp_path, THREE)
    with pytest.raises(ConfigError, match="each deploys as a network of its own"):
        NetworkPlan.build(topology, tmp_path / "state", runtime="process")
    plans = plan_domains(topology, state_dir=tmp_path / "state")
    assert [plan.name for plan in plans.values()] == ["eu-at", "eu-de", "eu-fr"]
    assert [plan.state_dir for plan in plans.values()] == [
        tmp_path / "state" / domain for domain in ("at", "de", "fr")
    ]
    assert len({plan.subnet for plan in plans.values()}) == 3  # three blocks
    de = plans["de"]
    assert de.domain is not None
    east, west = de.domain.borders
    assert (east.node, east.peer_node, east.peer_deployment) == ("de-east", "at-border", "eu-at")
    assert east.url == f"https://{de.nodes['de-east'].host}:8020"
    assert east.peer_url == f"https://{plans['at'].nodes['at-border'].host}:8020"
    assert west.far_saes == ("sae-paris",)
    assert de.nodes["de-east"].interworking_address == f"{de.nodes['de-east'].host}:8020"
    assert de.nodes["berlin"].interworking_address is None
    # Recorded and read back with its role.
    de.save()
    loaded = NetworkPlan.load(de.state_dir)
    assert loaded is not None
    assert loaded.domain == de.domain
    assert loaded.nodes == de.nodes


def test_each_border_gets_an_interworking_section_and_every_node_the_far_saes(
    tmp_path: Path,
) -> None:
    plans = plan_domains(_load(tmp_path, THREE), state_dir=tmp_path / "state")
    at, de = plans["at"], plans["de"]
    with pytest.raises(ConfigError, match="border at-border needs the CA certificate of domain de"):
        at.node_configs(at.layout(at.provision_pki()))
    ca = de.provision_pki().ca
    with pytest.raises(ConfigError, match="not a PEM CA certificate"):
        install_peer_ca(at, "de", b"junk", "--peer-ca de=junk")
    with pytest.raises(ConfigError, match="a certificate, but not a CA's"):
        install_peer_ca(at, "de", de.provision_pki().nodes["berlin"].cert.read_bytes(), "x")
    with pytest.raises(ConfigError, match="no border towards 'fr'"):
        install_peer_ca(at, "fr", ca.read_bytes(), "x")
    install_peer_ca(at, "de", ca.read_bytes(), "--peer-ca de=FILE")
    configs = at.node_configs(at.layout(at.provision_pki()))
    border = configs["at-border"].interworking
    assert border is not None
    assert border.peer_node == "de-east"
    assert border.peer_trust_domain == de.trust_domain
    assert border.peer_saes == ["sae-berlin", "sae-paris"]
    assert border.peer_ca.read_bytes() == ca.read_bytes()
    assert configs["vienna"].interworking is None
    assert configs["vienna"].sae_directory == {
        "sae-vienna": "vienna",
        "sae-berlin": "at-border",
        "sae-paris": "at-border",
    }


def test_a_domain_deployed_apart_finds_its_peer_border_only_where_the_topology_says(
    tmp_path: Path,
) -> None:
    topology = _load(tmp_path, THREE)
    with pytest.raises(ConfigError, match="where does border de-east of domain de listen"):
        plan_domains(topology, only="at", state_dir=tmp_path / "at")
    with pytest.raises(ConfigError, match="--domain: eu has no domain 'es'"):
        plan_domains(topology, only="es")
    with pytest.raises(ConfigError, match="process runtime only"):
        plan_domains(topology, runtime="docker")
    given = THREE.replace("  de: {}", "  de: {subnet: 127.77.0.0/16}").replace(
        "  at-border: {domain: at}", "  at-border: {domain: at, border_url: 'https://qkd.at:9020'}"
    )
    plans = plan_domains(_load(tmp_path, given), only="at", state_dir=tmp_path / "at")
    assert list(plans) == ["at"]
    (border,) = plans["at"].domain.borders if plans["at"].domain else ()
    assert border.peer_url == "https://127.77.1.1:8020"  # de-east: the first node of de
    assert (border.url, border.port) == ("https://qkd.at:9020", 9020)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("  vienna: {domain: at,", "  vienna: {border_url: 'https://x:1', domain: at,"),
         "node 'vienna' is not a border"),
        (("name: eu\n", "name: eu\nsubnet: 127.9.0.0/16\n"), "give `subnet` to the domains"),
        (("  de: {}\n  fr: {}", "  de: {subnet: 127.9.0.0/16}\n  fr: {subnet: 127.9.0.0/16}"),
         "is domain 'de'.s block already"),
    ],
)  # fmt: skip
def test_domain_addresses_are_checked(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in THREE
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, THREE.replace(old, new))


def test_a_qkd_link_across_domains_joins_two_borders_that_share_its_key(tmp_path: Path) -> None:
    shared = THREE.replace(
        "{endpoints: [at-border, de-east], length_km: 0, kind: interworking}",
        "{endpoints: [at-border, de-east], length_km: 30}",
    )
    topology = _load(tmp_path, shared)
    plans = plan_domains(topology, state_dir=tmp_path / "state")
    at, de = plans["at"], plans["de"]
    (border,) = at.shared_links()
    assert border.link is not None
    assert (border.link["kind"], border.link["channel"]["length_km"]) == ("bb84", 30)
    assert border.peer_address == de.nodes["de-east"].address
    assert "at-border--de-east" in at.link_ids()
    assert [link.endpoints for link in at.links] == [("vienna", "at-border")]  # not its own
    # Telemetry: the border publishes its end of the shared link (de-east transmits).
    access = at.telemetry_access()
    assert "qkdnet/eu-at/link/at-border--de-east/store/at-border" in access.publish["at-border"]
    install_peer_ca(at, "de", de.provision_pki().ca.read_bytes(), "x")
    config = at.node_configs(at.layout(at.provision_pki()))["at-border"]
    assert config.interworking is not None
    assert config.interworking.shared_link
    assert [link.peer for link in config.links] == ["vienna", "de-east"]
    assert config.links[1].address == de.nodes["de-east"].address  # "at-border" sorts first
    # Deployed apart, the two ends could not share the link's secret: refused, saying why.
    with pytest.raises(ConfigError, match="deploying domains apart does not exchange yet"):
        plan_domains(
            _load(tmp_path, shared.replace("  de: {}", "  de: {subnet: 127.77.0.0/16}")),
            only="at",
        )
