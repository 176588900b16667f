"""Draw a topology as an image: nodes, links, their lengths and, when known, their key rates.

```python
from qkdnet.orchestrator.cli.graph import render_graph
from qkdnet.orchestrator.plan.topology import load_topology

topology = load_topology(Path("examples/chain5.yaml"))
render_graph(topology, Path("chain5.svg"), {"a--r1": 12_300.0})
```

Nodes are circles labelled with their ID; nodes serving applications are drawn in another colour
with their SAE IDs below. Links are labelled with their length and, when `link_rates` gives one,
their secret key rate (their line is then thicker the higher the rate, red and dashed at zero).
In a topology with domains, each domain is framed and named, and the interworking links between
border nodes are drawn dotted in purple, labelled "ETSI 020".
The layout is deterministic and schematic: Kamada-Kawai on the square root of the link lengths,
not geography. The image format follows the file extension: .png, .svg or .pdf.

matplotlib and networkx are imported when a graph is drawn, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qkdnet.node.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    from qkdnet.orchestrator.plan.topology import Topology

__all__ = ["SUPPORTED_FORMATS", "format_rate", "render_graph"]

SUPPORTED_FORMATS: tuple[str, ...] = (".png", ".svg", ".pdf")
"""File extensions render_graph writes; the extension picks the format."""

# Colours: relay nodes, nodes serving SAEs, links without a rate, with a rate, with no key.
_RELAY_FILL, _RELAY_EDGE = "#dce6f2", "#35587f"
_SAE_FILL, _SAE_EDGE = "#f6d7a7", "#a8641b"
_LINK_UNKNOWN, _LINK_RATE, _LINK_ZERO = "#8c8c8c", "#2c7bb6", "#d7301f"
_INTERWORKING = "#7b3294"  # links between the borders of two domains (ETSI GS QKD 020)
_DOMAIN_FILLS = ("#eef5ea", "#f4eef7", "#fdf3e3", "#e9f1f8", "#f8ecec")

_NODE_PAD = 0.45  # space between a node's label and its circle, in font sizes

_PREFIXES = ((1e9, "Gbit/s"), (1e6, "Mbit/s"), (1e3, "kbit/s"))


def format_rate(rate_bps: float) -> str:
    """A key rate in bit/s with an SI prefix and three significant digits: "12.3 kbit/s".

    Raises:
        ValueError: if the rate is negative or not finite.
    """
    if not math.isfinite(rate_bps) or rate_bps < 0.0:
        raise ValueError(f"a key rate must be a finite number >= 0, got {rate_bps!r}")
    rounded = float(f"{rate_bps:.3g}")  # round first, so 999.7 bit/s becomes 1 kbit/s
    for factor, unit in _PREFIXES:
        if rounded >= factor:
            return f"{rounded / factor:.3g} {unit}"
    return f"{rounded:.3g} bit/s"


def _format_length(length_km: float) -> str:
    return f"{length_km:.3g} km" if length_km < 1000 else f"{length_km:.0f} km"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qkdnet" / "layouts"


def _cached_layout(topology: Topology) -> dict[str, tuple[float, float]]:
    """`_layout`, computed once per network shape: Kamada-Kawai costs seconds (scipy's
    optimiser), so positions are kept in `$XDG_CACHE_HOME/qkdnet/layouts/`, keyed by a hash
    of the nodes in file order and the links with their lengths. An unreadable cache entry is
    computed afresh; one that cannot be written is not kept."""
    nodes = list(topology.nodes)
    links = [[*link.endpoints, link.length_km] for link in topology.links]
    shape = json.dumps({"nodes": nodes, "links": links}, sort_keys=True)
    digest = hashlib.sha256(shape.encode()).hexdigest()[:32]
    path = _cache_dir() / f"{digest}.json"
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        cached = json.loads(path.read_text())
        return {node: (float(cached[node][0]), float(cached[node][1])) for node in nodes}
    positions = _layout(topology)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(positions))
        temporary.replace(path)
    return positions


def _layout(topology: Topology) -> dict[str, tuple[float, float]]:
    """Node positions: Kamada-Kawai per connected component, components side by side.

    The layout distance of a link is the square root of its length, at least a third of the
    longest, so an 80 m link and an 85 km link can share one legible picture. Nodes are taken
    in file order and Kamada-Kawai starts from a circle, so the same file gives the same picture.
    """
    import networkx as nx

    graph = nx.Graph()
    graph.add_nodes_from(topology.nodes)
    longest = max((math.sqrt(link.length_km) for link in topology.links), default=1.0)
    floor = max(longest / 3.0, 1e-3)
    for link in topology.links:
        a, b = link.endpoints
        graph.add_edge(a, b, distance=max(math.sqrt(link.length_km), floor))

    order = {node: index for index, node in enumerate(topology.nodes)}
    components = sorted(
        (sorted(component, key=order.__getitem__) for component in nx.connected_components(graph)),
        key=lambda nodes: (-len(nodes), order[nodes[0]]),
    )
    positions: dict[str, tuple[float, float]] = {}
    x_offset = 0.0
    for nodes in components:
        local = [(0.0, 0.0)]
        if len(nodes) > 1:
            # A component's size grows with the square root of its node count.
            scale = math.sqrt(len(nodes))
            raw = nx.kamada_kawai_layout(graph.subgraph(nodes), weight="distance", scale=scale)
            local = _landscape([(float(raw[node][0]), float(raw[node][1])) for node in nodes])
        left = min(x for x, _ in local)
        right = max(x for x, _ in local)
        for node, (x, y) in zip(nodes, local, strict=True):
            positions[node] = (x - left + x_offset, y)
        x_offset += right - left + 1.5
    return positions


def _landscape(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """`points` centred and turned so that their widest spread is horizontal.

    Mirror images are told apart by the first point: it ends up left of the centre and, if it
    is off the horizontal axis, above it. A chain is drawn left to right in file order.
    """
    import numpy as np

    array = np.array(points, dtype=float)
    array -= array.mean(axis=0)
    _, _, axes = np.linalg.svd(array, full_matrices=False)
    turned = array @ axes.T
    if turned[0, 0] > 1e-9:
        turned[:, 0] *= -1.0
    if turned[0, 1] < -1e-9:
        turned[:, 1] *= -1.0
    return [(float(x), float(y)) for x, y in turned]


def _same_circles(labels: list[Text], figure: Figure) -> None:
    """Pad the circles around node labels so they all have the size of the largest.

    Labels wider than about nine characters keep a circle that just fits them.
    """
    to_points = 72.0 / figure.dpi
    halves = []
    for label in labels:
        extent = label.get_window_extent()  # measured with the figure's (Agg) renderer
        halves.append(max(extent.width, extent.height) * to_points / 2.0)
    fontsize = float(labels[0].get_fontsize())
    common = min(max(halves), 3.0 * fontsize)
    for label, half in zip(labels, halves, strict=True):
        pad = _NODE_PAD + max(0.0, common - half) / fontsize
        patch = label.get_bbox_patch()
        assert patch is not None  # every node label has one
        patch.set_boxstyle("circle", pad=pad)


def _frame_domains(axes: Any, topology: Topology, positions: dict[str, Any]) -> None:
    """A rounded, tinted frame around each domain's nodes, with the domain's name above it."""
    from matplotlib.patches import FancyBboxPatch

    for index, name in enumerate(topology.domains):
        points = [positions[n] for n, node in topology.nodes.items() if node.domain == name]
        if not points:
            continue
        xs, ys = [x for x, _ in points], [y for _, y in points]
        pad = 0.3
        axes.add_patch(
            FancyBboxPatch(
                (min(xs) - pad, min(ys) - pad),
                max(xs) - min(xs) + 2 * pad,
                max(ys) - min(ys) + 2 * pad,
                boxstyle="round,pad=0.05",
                facecolor=_DOMAIN_FILLS[index % len(_DOMAIN_FILLS)],
                edgecolor="#999999",
                linewidth=1.0,
                zorder=0,
            )
        )
        axes.text(
            min(xs) - pad,
            max(ys) + pad + 0.08,
            f"domain {name}",
            fontsize=9,
            fontstyle="italic",
            color="#555555",
            zorder=2,
        )


def render_graph(
    topology: Topology,
    output: Path,
    link_rates: Mapping[str, float] | None = None,
    *,
    title: str | None = None,
) -> Path:
    """Draw `topology` to the image file `output` and return `output`.

    Args:
        topology: the network to draw.
        output: the file to write; its extension (.png, .svg, .pdf) picks the format. Missing
            parent directories are created.
        link_rates: secret key rate in bit/s per link ID (`link_id_for(a, b)`, "a--b" sorted),
            for the links whose rate is known; the others show their length only.
        title: the title above the graph; default: the topology's name and size.

    Returns:
        `output`.

    Raises:
        ConfigError: if the extension is not a supported image format.
        ValueError: if `link_rates` names a link the topology does not have, or a rate is
            negative or not finite.
        OSError: if the file cannot be written.
    """
    suffix = output.suffix.lower()
    if suffix not in SUPPORTED_FORMATS:
        raise ConfigError(
            f"{output}: cannot draw a graph as {suffix or 'a file without extension'!r}; "
            f"use one of {', '.join(SUPPORTED_FORMATS)}"
        )

    # Imported here: node.link pulls in gRPC and the post-processing stack.
    from qkdnet.node.link_names import link_id_for

    rates = dict(link_rates or {})
    link_ids = [link_id_for(*link.endpoints) for link in topology.links]
    unknown = sorted(set(rates) - set(link_ids))
    if unknown:
        raise ValueError(f"key rates given for links not in topology {topology.name!r}: {unknown}")
    labels = {link_id: format_rate(rate) for link_id, rate in rates.items()}

    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    positions = _cached_layout(topology)
    xs = [x for x, _ in positions.values()]
    ys = [y for _, y in positions.values()]
    margin = 0.5
    x_lim = (min(xs) - margin, max(xs) + margin)
    y_lim = (min(ys) - margin, max(ys) + margin)
    # About 2 inches per layout unit, so the labels of short links fit between their nodes.
    inches = min(2.0, 18.0 / (x_lim[1] - x_lim[0]), 14.0 / (y_lim[1] - y_lim[0]))
    figure = Figure(figsize=((x_lim[1] - x_lim[0]) * inches, (y_lim[1] - y_lim[0]) * inches))
    FigureCanvasAgg(figure)  # attaches itself: the figure draws, measures and saves with Agg
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    axes.set_axis_off()
    axes.set_xlim(*x_lim)
    axes.set_ylim(*y_lim)
    axes.set_aspect("equal", adjustable="box")

    _frame_domains(axes, topology, positions)
    positive = [rate for rate in rates.values() if rate > 0.0]
    top = math.log10(max(positive)) if positive else 0.0
    for link, link_id in zip(topology.links, link_ids, strict=True):
        a, b = link.endpoints
        (xa, ya), (xb, yb) = positions[a], positions[b]
        rate = rates.get(link_id)
        style: dict[str, Any]
        if link.kind == "interworking":
            style = {"color": _INTERWORKING, "linewidth": 2.0, "linestyle": ":"}
            text = "ETSI 020"
        elif rate is None:
            style = {"color": _LINK_UNKNOWN, "linewidth": 1.5}
            text = _format_length(link.length_km)
        else:
            if rate > 0.0:
                # 1.5 pt four decades below the best link, 6 pt at the best link.
                relative = max(0.0, 1.0 - (top - math.log10(rate)) / 4.0)
                style = {"color": _LINK_RATE, "linewidth": 1.5 + 4.5 * relative}
            else:
                style = {"color": _LINK_ZERO, "linewidth": 1.5, "linestyle": "--"}
            text = f"{_format_length(link.length_km)} · {labels[link_id]}"
        if link.kind not in ("bb84", "interworking"):
            text += f" · {link.kind}"
        axes.plot([xa, xb], [ya, yb], zorder=1, solid_capstyle="round", **style)
        axes.text(
            (xa + xb) / 2.0,
            (ya + yb) / 2.0,
            text,
            ha="center",
            va="center",
            fontsize=7,
            color="#333333",
            zorder=2,
            bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none"},
        )

    node_labels = []
    for node_id, node in topology.nodes.items():
        x, y = positions[node_id]
        fill, edge = (_SAE_FILL, _SAE_EDGE) if node.saes else (_RELAY_FILL, _RELAY_EDGE)
        label = axes.text(
            x,
            y,
            node_id,
            ha="center",
            va="center",
            fontsize=9,
            fontweight="bold",
            zorder=3,
            bbox={
                "boxstyle": f"circle,pad={_NODE_PAD}",
                "facecolor": fill,
                "edgecolor": edge,
                "linewidth": 1.5,
            },
        )
        node_labels.append(label)
        if node.saes:
            # Placed under the circle drawn around the label, whatever its size.
            patch = label.get_bbox_patch()
            assert patch is not None  # the label has a bbox
            axes.annotate(
                "\n".join(node.saes),
                xy=(0.5, 0.0),
                xycoords=patch,
                xytext=(0.0, -2.0),
                textcoords="offset points",
                ha="center",
                va="top",
                fontsize=7,
                color=_SAE_EDGE,
                zorder=4,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none"},
            )

    _same_circles(node_labels, figure)

    n_saes = sum(len(node.saes) for node in topology.nodes.values())
    axes.set_title(
        title
        if title is not None
        else f"{topology.name}: {len(topology.nodes)} nodes, {len(topology.links)} links, "
        f"{n_saes} SAEs",
        fontsize=11,
    )

    output.parent.mkdir(parents=True, exist_ok=True)
    metadata: dict[str, str | None] = {}
    if suffix == ".svg":
        metadata = {"Date": None}
    elif suffix == ".pdf":
        metadata = {"CreationDate": None}
    # Text stays text in SVG (searchable, selectable); fixed salt: same file, same element IDs.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "qkdnet"}):
        figure.savefig(
            output,
            format=suffix[1:],
            dpi=150,
            metadata=metadata,
            bbox_inches="tight",
            pad_inches=0.2,
            facecolor="white",
        )
    return output
