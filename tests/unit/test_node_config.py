"""Bad node configuration stops `qkdnet node` with one message naming the field or file, exit 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from qkdnet.node.config import load_node_config
from qkdnet.node.errors import ConfigError
from qkdnet.node.identity import Role
from qkdnet.orchestrator.plan.pki import CertificateAuthority, write_psk


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return issue_pki(tmp_path_factory.mktemp("pki"))


def issue_pki(root: Path) -> Path:
    """A CA under `root` with node certificates for alice and bob, an SAE certificate named
    alice, alice's node certificate from another CA, and a link secret."""
    ca = CertificateAuthority(root / "ca")
    ca.issue(Role.NODE, "alice", root / "alice")
    ca.issue(Role.NODE, "bob", root / "bob")
    ca.issue(Role.SAE, "alice", root / "alice-sae")
    CertificateAuthority(root / "other-ca").issue(Role.NODE, "alice", root / "alice-other")
    write_psk(root / "link.psk", 64)
    return root


def _config(pki: Path, **changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "node_id": "alice",
        "listen": "127.0.0.1:0",
        "state_dir": "state",
        "tls": {
            "ca": str(pki / "ca" / "ca.pem"),
            "cert": str(pki / "alice" / "cert.pem"),
            "key": str(pki / "alice" / "key.pem"),
        },
        "links": [
            {
                "peer": "bob",
                "address": "127.0.0.1:1",
                "psk_file": str(pki / "link.psk"),
                "channel": {"length_km": 10},
            }
        ],
    }
    config.update(changes)
    return config


def _link(pki: Path, **channel: Any) -> list[dict[str, Any]]:
    return [
        {
            "peer": "bob",
            "address": "127.0.0.1:1",
            "psk_file": str(pki / "link.psk"),
            "channel": {"length_km": 10, **channel},
        }
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"colour": "blue"}, "colour: unknown field"),
        ({"listen": "nowhere"}, "listen: "),
        ({"advertise": "a-node"}, "advertise: "),
        ({"node_id": ""}, "node_id: "),
        ("negative_length", "links[0].channel.length_km: Input should be greater than or equal"),
        ("mu_out_of_range", "links[0].channel.mu: Input should be less than or equal to 10"),
        ("nu_above_mu", "links[0].channel: nu (decoy intensity) must be below mu"),
        ("probabilities", "links[0].channel: p_signal + p_decoy + p_vacuum must be 1"),
        ("unknown_channel_field", "links[0].channel.lenght_km: unknown field"),
    ],
)
def test_invalid_fields_named(pki: Path, tmp_path: Path, change: Any, expected: str) -> None:
    if isinstance(change, dict):
        config = _config(pki, **change)
    else:
        channels: dict[str, dict[str, Any]] = {
            "negative_length": {"length_km": -5},
            "mu_out_of_range": {"mu": 11},
            "nu_above_mu": {"mu": 0.1, "nu": 0.3},
            "probabilities": {"p_signal": 0.9},
            "unknown_channel_field": {"lenght_km": 3},
        }
        config = _config(pki, links=_link(pki, **channels[change]))
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as error:
        load_node_config(path)
    assert expected in str(error.value)
    assert str(path) in str(error.value)
