"""The command line refuses bad input with one message naming what and where, exit status 2,
no traceback: `qkdnet node` with a bad configuration or certificates, `validate` with a bad
topology, `link-demo` with bad options. Each test runs the real command in a process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_node_config import _config, _link, issue_pki
from tests.unit.test_topology import EXAMPLES, MALFORMED, NAMESPACE, UNWORKABLE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return issue_pki(tmp_path_factory.mktemp("pki"))


def _qkdnet(*args: str) -> subprocess.CompletedProcess[str]:
    """`qkdnet ARGS...` in a process of its own, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "qkdnet.orchestrator", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _run_node(tmp_path: Path, config: dict[str, Any] | str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "node.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return _qkdnet("node", "--config", str(path))


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
        result = _qkdnet("link-demo", *args)
        assert result.returncode == 2
        assert expected in result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr


def test_cli_validate(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MALFORMED[14][1])
    result = _qkdnet("validate", "-t", str(bad))
    assert result.returncode == 2
    assert f"{bad}:4: links[0].endpoints: unknown node 'z'" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    good = _qkdnet("validate", "-t", str(EXAMPLES[0]))
    assert good.returncode == 0
    assert "nodes" in good.stdout


def test_cli_validate_refuses_an_sae_named_like_the_controller(tmp_path: Path) -> None:
    path = tmp_path / "clash.yaml"
    path.write_text(NAMESPACE[1][1])
    result = _qkdnet("validate", "-t", str(path))
    assert result.returncode == 2
    assert f"{path}:4: nodes.a.saes[0]: SAE 'orchestrator'" in result.stderr
    assert "Traceback" not in result.stderr


# -- well-formed, but cannot work: refused with the reason and the fix ---------------------------


def test_cli_validate_refuses_a_200_km_link(tmp_path: Path) -> None:
    path = tmp_path / "long.yaml"
    path.write_text(UNWORKABLE[0][1])
    result = _qkdnet("validate", "-t", str(path))
    assert result.returncode == 2
    assert f"{path}:5: links[0].length_km: link a--b of 200 km yields no key" in result.stderr
    assert "Traceback" not in result.stderr
