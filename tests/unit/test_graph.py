"""Topology graphs: PNG, SVG and PDF files with node IDs, link lengths and key rates as text."""

from __future__ import annotations

import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from qkdnet.node.errors import ConfigError
from qkdnet.orchestrator.cli.graph import format_rate, render_graph
from qkdnet.orchestrator.plan.topology import Topology, load_topology

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def chain5() -> Topology:
    return load_topology(ROOT / "examples" / "chain5.yaml")


def svg_texts(path: Path) -> list[str]:
    """The text elements of an SVG file (text stays text: svg.fonttype is 'none')."""
    root = ET.parse(path).getroot()
    return [el.text or "" for el in root.iter("{http://www.w3.org/2000/svg}text")]


def test_png(chain5: Topology, tmp_path: Path) -> None:
    out = tmp_path / "chain5.png"
    assert render_graph(chain5, out) == out
    assert out.read_bytes().startswith(PNG_SIGNATURE)


def test_svg_has_node_ids_sae_ids_and_lengths(chain5: Topology, tmp_path: Path) -> None:
    out = render_graph(chain5, tmp_path / "chain5.svg")
    assert "<svg" in out.read_text(encoding="utf-8")
    texts = svg_texts(out)
    assert set(chain5.nodes) <= set(texts)
    assert {"sae-a", "sae-b"} <= set(texts)
    assert {"20 km", "35 km", "30 km", "15 km"} <= set(texts)
    assert "chain5: 5 nodes, 4 links, 2 SAEs" in texts


def test_svg_with_rates(chain5: Topology, tmp_path: Path) -> None:
    rates = {"a--r1": 12_345.0, "b--r3": 0.0}
    out = render_graph(chain5, tmp_path / "rates.svg", rates, title="chain5, live")
    texts = svg_texts(out)
    assert "20 km · 12.3 kbit/s" in texts
    assert "15 km · 0 bit/s" in texts
    assert "35 km" in texts  # no rate given: the length only
    assert "chain5, live" in texts


def test_pdf_and_missing_directories(chain5: Topology, tmp_path: Path) -> None:
    out = tmp_path / "deep" / "er" / "chain5.PDF"
    assert render_graph(chain5, out) == out
    assert out.read_bytes().startswith(b"%PDF")


def test_same_topology_same_file(chain5: Topology, tmp_path: Path) -> None:
    first = render_graph(chain5, tmp_path / "1.svg", {"a--r1": 1e5})
    second = render_graph(chain5, tmp_path / "2.svg", {"a--r1": 1e5})
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_draws(path: Path, tmp_path: Path) -> None:
    topology = load_topology(path)
    texts = svg_texts(render_graph(topology, tmp_path / "graph.svg"))
    assert set(topology.nodes) <= set(texts)


@pytest.mark.parametrize("name", ["graph.jpg", "graph", "graph.svg.gz"])
def test_unsupported_extension(chain5: Topology, tmp_path: Path, name: str) -> None:
    out = tmp_path / "sub" / name
    with pytest.raises(ConfigError, match=r"\.png, \.svg, \.pdf") as info:
        render_graph(chain5, out)
    assert str(out) in str(info.value)
    assert not (tmp_path / "sub").exists()


def test_rate_for_unknown_link(chain5: Topology, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="r1--a"):
        render_graph(chain5, tmp_path / "x.png", {"r1--a": 1.0})


@pytest.mark.parametrize(
    ("rate", "text"),
    [
        (0.0, "0 bit/s"),
        (0.5, "0.5 bit/s"),
        (512.0, "512 bit/s"),
        (999.7, "1 kbit/s"),
        (12_345.0, "12.3 kbit/s"),
        (25_600.0, "25.6 kbit/s"),
        (2.5e6, "2.5 Mbit/s"),
        (1.234e9, "1.23 Gbit/s"),
    ],
)
def test_format_rate(rate: float, text: str) -> None:
    assert format_rate(rate) == text


@pytest.mark.parametrize("rate", [-1.0, math.nan, math.inf])
def test_format_rate_refuses(rate: float) -> None:
    with pytest.raises(ValueError, match="key rate"):
        format_rate(rate)


def test_import_is_cheap() -> None:
    code = (
        "import sys, qkdnet.orchestrator.cli.graph; "
        "print(sorted(m for m in ('matplotlib', 'networkx', 'grpc') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
