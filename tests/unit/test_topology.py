"""Topology files: the bundled examples load; malformed files give FILE:LINE: field: message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qkdnet.node.errors import ConfigError
from qkdnet.orchestrator.plan.topology import load_topology, topology_json_schema

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


UNWORKABLE = [
    (
        "a 200 km link",
        "name: x\nnodes: {a: {saes: [s1]}, b: {saes: [s2]}}\nlinks:\n  - endpoints: [a, b]\n"
        "    length_km: 200\n",
        5,
        [
            "links[0].length_km: link a--b of 200 km yields no key: with these parameters the "
            "model's secret key rate falls to zero beyond 143.",
            "shorten the link (or relay through trusted nodes: 2 links of 100 km)",
        ],
    ),
    (
        "a lossier fibre (from the defaults) at 100 km",
        "name: x\ndefaults: {fiber_loss_db_per_km: 0.35}\nnodes: {a: {saes: [s1]}, b: {saes: [s2]}}"
        "\nlinks:\n  - {endpoints: [a, b], length_km: 100}\n",
        5,
        ["links[0].length_km: link a--b of 100 km yields no key", "beyond 8"],
    ),
    (
        "no decoys beyond the GLLP reach",
        "name: x\nnodes: {a: {saes: [s1]}, b: {saes: [s2]}}\nlinks:\n"
        "  - {endpoints: [a, b], length_km: 60, decoy: false}\n",
        4,
        ["links[0].length_km: link a--b of 60 km yields no key", "beyond 4"],
    ),
    (
        "an eavesdropper on most pulses",
        "name: x\nnodes: {a: {saes: [s1]}, b: {saes: [s2]}}\nlinks:\n  - endpoints: [a, b]\n"
        "    length_km: 10\n    eavesdrop_fraction: 0.6\n",
        4,
        ["links[0]: link a--b of 10 km yields no key", "zero at any length", "eavesdrop_fraction"],
    ),
    (
        "no decoys at a signal intensity of 0.48",
        "name: x\nnodes: {a: {saes: [s1]}, b: {saes: [s2]}}\nlinks:\n"
        "  - {endpoints: [a, b], length_km: 5, decoy: false, mu: 0.48}\n",
        4,
        ["links[0]: link a--b of 5 km yields no key: without decoys", "leave mu unset"],
    ),
    (
        "an SAE on a node without links",
        "name: x\nnodes:\n  a: {saes: [s1]}\n  b: {saes: [s2]}\n  c: {saes: [s3]}\nlinks:\n"
        "  - {endpoints: [a, b], length_km: 10}\n",
        5,
        [
            "nodes.c.saes: SAE 's3' of node 'c' cannot reach any other SAE: node 'c' has no link "
            "and serves no other SAE; link it to a node of the network"
        ],
    ),
    (
        "an SAE in a part of the network without another",
        "name: x\nnodes:\n  a: {saes: [s1]}\n  b: {saes: [s2]}\n  c: {saes: [s3]}\n  r: {}\n"
        "links:\n  - {endpoints: [a, b], length_km: 10}\n  - {endpoints: [r, c], length_km: 10}\n",
        5,
        ["nodes.c.saes: SAE 's3' of node 'c' cannot reach any other SAE: no node linked to 'c'"],
    ),
    (
        "the network's only SAE",
        "name: x\nnodes:\n  a: {saes: [s1]}\n  b: {}\nlinks:\n"
        "  - {endpoints: [a, b], length_km: 10}\n",
        3,
        ["nodes.a.saes: SAE 's1' of node 'a' cannot reach any other SAE: it is the network's only"],
    ),
    (
        "an unknown telemetry field",
        "name: x\nnodes: {a: {}}\ntelemetry:\n  intervall_s: 2\n",
        4,
        ["telemetry.intervall_s: unknown field (did you mean 'interval_s'?)"],
    ),
    (
        "an unknown key delivery field",
        "name: x\nnodes: {a: {}}\nkey_delivery: {pool: 10}\n",
        3,
        ["key_delivery.pool: unknown field (did you mean 'pool_keys'?)"],
    ),
    (
        "an unknown field without a close one",
        "name: x\nnodes: {a: {}}\nlogs: {colour: red}\n",
        3,
        ["logs.colour: unknown field (the fields here: files, max_mb)"],
    ),
    (
        "a misspelt link parameter",
        "name: x\nnodes: {a: {}, b: {}}\nlinks:\n"
        "  - {endpoints: [a, b], length_km: 1, spedup: 2}\n",
        4,
        ["links[0].spedup: unknown field (did you mean 'speedup'?)"],
    ),
    ("a single log file", "name: x\nnodes: {a: {}}\nlogs: {files: 1}\n", 3, ["logs.files: "]),
    (
        "a store cap below a frame",
        "name: x\nnodes: {a: {}}\ndefaults: {store_max_bits: 10}\n",
        3,
        ["defaults.store_max_bits: Input should be greater than or equal to 100000"],
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [m[1:] for m in UNWORKABLE],
    ids=[m[0] for m in UNWORKABLE],
)
def test_what_cannot_work_is_refused_with_reason_and_fix(
    tmp_path: Path, text: str, line: int, expected: list[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_topology(path)
    message = str(error.value)
    assert message.startswith(f"{path}:{line}: "), message
    for part in expected:
        assert part in message, message


def test_every_problem_on_its_own_line_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: x\nnodes:\n  a: {saes: [s1]}\n  b: {saes: [s2]}\n  c: {saes: [s3]}\nlinks:\n"
        "  - {endpoints: [a, b], length_km: 180}\n"
    )
    with pytest.raises(ConfigError) as error:
        load_topology(path)
    lines = str(error.value).splitlines()
    assert [line.split(": ")[0] for line in lines] == [f"{path}:5", f"{path}:7"]
    assert "nodes.c.saes" in lines[0]
    assert "links[0].length_km" in lines[1]


@pytest.mark.parametrize(
    "text",
    [
        # just below the cut-off of the GYS parameters
        "name: x\nnodes: {a: {saes: [s1]}, b: {saes: [s2]}}\nlinks:\n"
        "  - {endpoints: [a, b], length_km: 140}\n",
        # two SAEs on one node need no link; a node without SAEs may stand alone
        "name: x\nnodes: {a: {saes: [s1, s2]}, b: {}}\n",
        # the best GLLP intensity, picked by the node for the length
        "name: x\nnodes: {a: {saes: [s1]}, b: {saes: [s2]}}\nlinks:\n"
        "  - {endpoints: [a, b], length_km: 30, decoy: false}\n",
    ],
    ids=["140 km", "two SAEs on one node", "no decoys at 30 km"],
)
def test_what_can_work_is_accepted(tmp_path: Path, text: str) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(text)
    load_topology(path)


def test_log_rotation_and_store_cap_settings(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        GOOD.replace("  speedup: 10\n", "  speedup: 10\n  store_max_bits: 2000000\n")
        + "logs: {max_mb: 0.5, files: 4}\n"
    )
    topology = load_topology(path)
    assert (topology.logs.max_bytes, topology.logs.files) == (500_000, 4)
    assert [link.processing.store_max_bits for link in topology.resolved_links()] == [2_000_000] * 2
    path.write_text(GOOD)
    default = load_topology(path)
    assert (default.logs.max_bytes, default.logs.files) == (10_000_000, 3)
    assert default.resolved_links()[0].processing.store_max_bits == 8_000_000


EXTERNAL = """\
name: ext
nodes:
  x: {saes: [sae-x]}
  y: {saes: [sae-y]}
links:
  - endpoints: [x, y]
    length_km: 40
    kind: external-kme
    external_kme:
      keys_per_pull: 8
      ends:
        x: {url: 'https://kme-x:443', sae_id: dev-x, ca: ca.pem, cert: x.pem, key: x.key}
        y: {url: 'https://kme-y:443', sae_id: dev-y, ca: ca.pem, cert: y.pem, key: y.key}
"""


def test_an_external_kme_link_names_its_kmes_and_their_files(tmp_path: Path) -> None:
    path = tmp_path / "ext.yaml"
    path.write_text(EXTERNAL)
    with pytest.raises(ConfigError) as caught:
        load_topology(path)
    # Every missing file, with its line and field.
    lines = str(caught.value).splitlines()
    assert len(lines) == 6, lines  # ca, cert and key of each end
    assert lines[0] == (
        f"{path}:12: links[0].external_kme.ends.x.ca: no such file: {tmp_path / 'ca.pem'}"
    )
    for name in ("ca.pem", "x.pem", "x.key", "y.pem", "y.key"):
        (tmp_path / name).write_text("-")
    topology = load_topology(path)
    (link,) = topology.resolved_links()
    assert link.external_kme is not None
    assert link.external_kme.ends["y"].key == tmp_path / "y.key"  # relative to the file
    assert link.external_kme.keys_per_pull == 8


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("    kind: external-kme\n", "", "external_kme goes with kind 'external-kme'"),
        ("        y: {url", "        z: {url", "name the link's two endpoints, x and y"),
        ("'https://kme-y:443'", "'http://kme-y'", "String should match pattern"),
    ],
)
def test_external_kme_mistakes_are_named(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = tmp_path / "ext.yaml"
    assert old in EXTERNAL
    path.write_text(EXTERNAL.replace(old, new))
    with pytest.raises(ConfigError, match=message):
        load_topology(path)


def test_pqc_bridge_settings_go_with_their_kind(tmp_path: Path) -> None:
    path = tmp_path / "pqc.yaml"
    text = (
        "name: pqc\nnodes:\n  x: {saes: [sae-x]}\n  y: {saes: [sae-y]}\nlinks:\n"
        "  - {endpoints: [x, y], length_km: 400, kind: pqc-bridge,"
        " pqc_bridge: {block_bits: 4096, interval_s: 1}}\n"
    )
    path.write_text(text)
    (link,) = load_topology(path).resolved_links()  # 400 km: no model check for this kind
    assert link.pqc_bridge is not None
    assert link.pqc_bridge.block_bits == 4096
    path.write_text(text.replace("kind: pqc-bridge,", "").replace("400", "40"))
    with pytest.raises(ConfigError, match="pqc_bridge goes with kind 'pqc-bridge'"):
        load_topology(path)
    path.write_text(text.replace("block_bits: 4096", "block_bits: 100"))
    with pytest.raises(ConfigError, match="block_bits"):
        load_topology(path)
