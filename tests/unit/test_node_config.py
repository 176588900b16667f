"""Bad node configuration stops `qkdnet node` with one message naming the field or file, exit 2."""

from __future__ import annotations

import subprocess
import sys
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
    root = tmp_path_factory.mktemp("pki")
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


def _run_node(tmp_path: Path, config: dict[str, Any] | str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "node.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "qkdnet.orchestrator", "node", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


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


def test_cli_bad_field_exit_2_without_traceback(pki: Path, tmp_path: Path) -> None:
    result = _run_node(tmp_path, _config(pki, links=_link(pki, length_km=-1)))
    assert result.returncode == 2
    assert "links[0].channel.length_km" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_yaml_syntax_error(tmp_path: Path) -> None:
    result = _run_node(tmp_path, "node_id: [unclosed\n")
    assert result.returncode == 2
    assert "line" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_missing_config_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "qkdnet.node", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "nope.yaml: no such file" in result.stderr


@pytest.mark.parametrize(
    ("tls_change", "expected"),
    [
        ({"cert": "missing.pem"}, "missing.pem: certificate not found"),
        ({"cert": "OTHER"}, "not issued by the CA"),
        ({"key": "BOB_KEY"}, "does not match the certificate"),
        ({"cert": "BOB_CERT", "key": "BOB_KEY"}, "certificate is for 'bob', not for node 'alice'"),
        # The right name in the wrong role: an application's certificate cannot run a node.
        (
            {"cert": "ALICE_SAE_CERT", "key": "ALICE_SAE_KEY"},
            "certificate names sae 'alice', not node 'alice'",
        ),
        ({"ca": "KEYFILE"}, "not a PEM certificate"),
    ],
)
def test_cli_wrong_certificates(
    pki: Path, tmp_path: Path, tls_change: dict[str, str], expected: str
) -> None:
    files = {
        "OTHER": str(pki / "alice-other" / "cert.pem"),
        "BOB_KEY": str(pki / "bob" / "key.pem"),
        "BOB_CERT": str(pki / "bob" / "cert.pem"),
        "ALICE_SAE_CERT": str(pki / "alice-sae" / "cert.pem"),
        "ALICE_SAE_KEY": str(pki / "alice-sae" / "key.pem"),
        "KEYFILE": str(pki / "alice" / "key.pem"),
        "missing.pem": str(tmp_path / "missing.pem"),
    }
    config = _config(pki)
    config["tls"] = {**config["tls"], **{k: files[v] for k, v in tls_change.items()}}
    result = _run_node(tmp_path, config)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_missing_psk(pki: Path, tmp_path: Path) -> None:
    config = _config(pki)
    config["links"][0]["psk_file"] = str(tmp_path / "absent.psk")
    result = _run_node(tmp_path, config)
    assert result.returncode == 2
    assert "absent.psk: pre-shared secret file not found" in result.stderr


def test_link_demo_bad_options() -> None:
    for args, expected in (
        (["--length-km", "-3"], "--length-km"),
        (["--eavesdrop", "1.5"], "--eavesdrop"),
        (["--speedup", "0"], "--speedup"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "qkdnet.orchestrator", "link-demo", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        assert expected in result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
