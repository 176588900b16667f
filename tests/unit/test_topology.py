"""Topology files: the bundled examples load; malformed files give FILE:LINE: field: message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qkdnet.node.errors import ConfigError
from qkdnet.orchestrator.topology import load_topology, topology_json_schema

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

GOOD = """\
name: net
defaults:
  speedup: 10
nodes:
  a: {saes: [sae-a]}
  r: {}
  b: {saes: [sae-b]}
links:
  - endpoints: [a, r]
    length_km: 10
  - endpoints: [r, b]
    length_km: 20
"""


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_load(path: Path) -> None:
    topology = load_topology(path)
    assert topology.links
    for link in topology.resolved_links():
        assert link.channel.length_km >= 0


def test_defaults_apply_and_links_override(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(GOOD.replace("    length_km: 20", "    length_km: 20\n    speedup: 2"))
    first, second = load_topology(path).resolved_links()
    assert first.processing.speedup == 10
    assert second.processing.speedup == 2
    assert second.channel.length_km == 20


# (what is wrong, the file, the line and the text the message must contain)
MALFORMED = [
    ("yaml syntax", "name: x\nnodes: {a: {}\n", 3, "YAML syntax"),
    ("tab indentation", "name: x\nnodes:\n\ta: {}\n", 3, "YAML syntax"),
    ("not a mapping", "- a\n- b\n", 1, "expected a mapping"),
    ("name missing", "nodes: {a: {}}\n", 1, "name: required field missing"),
    ("nodes missing", "name: x\n", 1, "nodes: required field missing"),
    ("no nodes", "name: x\nnodes: {}\n", 2, "nodes: "),
    ("bad name", "name: 'my net'\nnodes: {a: {}}\n", 1, "name: String should match"),
    ("unknown top field", "name: x\ncolour: red\nnodes: {a: {}}\n", 2, "colour: unknown field"),
    ("duplicate node", "name: x\nnodes:\n  a: {}\n  a: {}\n", 4, "nodes.a: duplicate key"),
    ("node not a mapping", "name: x\nnodes:\n  a: 3\n", 3, "nodes.a: "),
    ("unknown node field", "name: x\nnodes:\n  a: {sae: [s]}\n", 3, "nodes.a.sae: unknown field"),
    ("saes not a list", "name: x\nnodes:\n  a: {saes: s1}\n", 3, "nodes.a.saes: Input should be"),
    (
        "sae on two nodes",
        "name: x\nnodes:\n  a: {saes: [s1]}\n  b: {saes: [s1]}\n",
        4,
        "nodes.b.saes: SAE 's1' is already served by node 'a'",
    ),
    ("sae twice on a node", "name: x\nnodes:\n  a: {saes: [s, s]}\n", 3, "listed twice"),
    (
        "unknown node in link",
        "name: x\nnodes: {a: {}}\nlinks:\n  - endpoints: [a, z]\n    length_km: 1\n",
        4,
        "links[0].endpoints: unknown node 'z'",
    ),
    (
        "self loop",
        "name: x\nnodes: {a: {}}\nlinks:\n  - endpoints: [a, a]\n    length_km: 1\n",
        4,
        "links[0].endpoints: link from 'a' to itself",
    ),
    (
        "three endpoints",
        "name: x\nnodes: {a: {}, b: {}, c: {}}\nlinks:\n  - endpoints: [a, b, c]\n"
        "    length_km: 1\n",
        4,
        "links[0].endpoints: Tuple should have at most 2 items",
    ),
    (
        "duplicate link",
        "name: x\nnodes: {a: {}, b: {}}\nlinks:\n  - {endpoints: [a, b], length_km: 1}\n"
        "  - {endpoints: [b, a], length_km: 2}\n",
        5,
        "links[1].endpoints: second link between 'b' and 'a'",
    ),
    (
        "negative length",
        "name: x\nnodes: {a: {}, b: {}}\nlinks:\n  - endpoints: [a, b]\n    length_km: -4\n",
        5,
        "links[0].length_km: Input should be greater than or equal to 0",
    ),
    (
        "missing length",
        "name: x\nnodes: {a: {}, b: {}}\nlinks:\n  - endpoints: [a, b]\n",
        4,
        "links[0].length_km: required field missing",
    ),
    (
        "length not a number",
        "name: x\nnodes: {a: {}, b: {}}\nlinks:\n  - endpoints: [a, b]\n    length_km: far\n",
        5,
        "links[0].length_km: Input should be a valid number",
    ),
    (
        "unknown link parameter",
        "name: x\nnodes: {a: {}, b: {}}\nlinks:\n  - endpoints: [a, b]\n    length_km: 1\n"
        "    lenght: 2\n",
        6,
        "links[0].lenght: unknown field",
    ),
    (
        "eavesdropper above one",
        "name: x\nnodes: {a: {}, b: {}}\nlinks:\n  - endpoints: [a, b]\n    length_km: 1\n"
        "    eavesdrop_fraction: 2\n",
        6,
        "links[0].eavesdrop_fraction: Input should be less than or equal to 1",
    ),
    (
        "bad default",
        "name: x\ndefaults:\n  mu: -1\nnodes: {a: {}}\n",
        3,
        "defaults.mu: Input should be greater than 0",
    ),
    (
        "unknown default",
        "name: x\ndefaults:\n  speed: 3\nnodes: {a: {}}\n",
        3,
        "defaults.speed: unknown field",
    ),
    (
        "inconsistent intensities after merge",
        "name: x\ndefaults: {nu: 0.3}\nnodes: {a: {}, b: {}}\nlinks:\n"
        "  - {endpoints: [a, b], length_km: 1, mu: 0.2}\n",
        5,
        "links[0]: nu (decoy intensity) must be below mu",
    ),
    ("unknown runtime", "name: x\nruntime: vm\nnodes: {a: {}}\n", 2, "runtime: Input should be"),
    ("links not a list", "name: x\nnodes: {a: {}}\nlinks: {a: b}\n", 3, "links: Input should be"),
]


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [m[1:] for m in MALFORMED],
    ids=[m[0] for m in MALFORMED],
)
def test_malformed_files(tmp_path: Path, text: str, line: int, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_topology(path)
    message = str(error.value)
    first = message.splitlines()[0]
    assert first.startswith(f"{path}:{line}: "), message
    assert expected in message, message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_topology(tmp_path / "absent.yaml")


def test_schema_is_current_and_valid_json() -> None:
    committed = (ROOT / "examples" / "topology.schema.json").read_text()
    assert committed == topology_json_schema(), "run: qkdnet schema > examples/topology.schema.json"
    schema = json.loads(committed)
    assert set(schema["required"]) == {"name", "nodes"}


def test_cli_validate(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MALFORMED[14][1])
    result = subprocess.run(
        [sys.executable, "-m", "qkdnet.orchestrator", "validate", "-t", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{bad}:4: links[0].endpoints: unknown node 'z'" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    good = subprocess.run(
        [sys.executable, "-m", "qkdnet.orchestrator", "validate", "-t", str(EXAMPLES[0])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert good.returncode == 0
    assert "nodes" in good.stdout


NAMESPACE = [
    (
        "an SAE named like a node",
        "name: x\nnodes:\n  r1: {}\n  a:\n    saes: [sae-a, r1]\n",
        5,
        "nodes.a.saes[1]: SAE 'r1' of node 'a' clashes with node 'r1' (nodes.r1, line 3)",
    ),
    (
        "an SAE named orchestrator",
        "name: x\nnodes:\n  a:\n    saes: [orchestrator]\n",
        4,
        "nodes.a.saes[0]: SAE 'orchestrator' of node 'a' clashes with the reserved name of "
        "the controller",
    ),
    (
        "a node named broker, in capitals",
        "name: x\nnodes:\n  BROKER: {}\n",
        3,
        "nodes.BROKER: node 'BROKER' clashes with the reserved name of the MQTT broker",
    ),
    (
        "two SAEs differing in case",
        "name: x\nnodes:\n  a: {saes: [sae-a]}\n  b: {saes: [SAE-A]}\n",
        4,
        "nodes.b.saes[0]: SAE 'SAE-A' of node 'b' clashes with SAE 'sae-a' of node 'a' "
        "(nodes.a.saes[0], line 3)",
    ),
    (
        "two nodes differing in case",
        "name: x\nnodes:\n  r: {}\n  R: {}\n",
        4,
        "nodes.R: node 'R' clashes with node 'r' (nodes.r, line 3)",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [m[1:] for m in NAMESPACE],
    ids=[m[0] for m in NAMESPACE],
)
def test_node_sae_and_reserved_names_share_one_namespace(
    tmp_path: Path, text: str, line: int, expected: str
) -> None:
    path = tmp_path / "clash.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_topology(path)
    message = str(error.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert expected in message, message
    assert "share one namespace" in message


def test_cli_validate_refuses_an_sae_named_like_the_controller(tmp_path: Path) -> None:
    path = tmp_path / "clash.yaml"
    path.write_text(NAMESPACE[1][1])
    result = subprocess.run(
        [sys.executable, "-m", "qkdnet.orchestrator", "validate", "-t", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{path}:4: nodes.a.saes[0]: SAE 'orchestrator'" in result.stderr
    assert "Traceback" not in result.stderr
