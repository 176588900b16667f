"""Tables of a deployment for the terminal and for `--json`: nodes, and links with live figures.

Link figures come either from the nodes over NodeControl (`rows_from_snapshot`) or from MQTT
telemetry (`rows_from_telemetry`); both give the same `LinkRow`, drawn by `links_table`.
Whatever comes from the network is drawn as plain text (`rich.text.Text`), never read as markup.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from qkdnet.node.link import link_id_for

from .graph import format_rate as graph_format_rate
from .key_client import API_PREFIX, sae_credentials
from .network_plan import NetworkPlan
from .network_status import NetworkSnapshot
from .runtime import DeploymentInfo
from .telemetry_watch import TelemetryState

__all__ = [
    "LinkRow",
    "format_rate",
    "links_table",
    "nodes_json",
    "nodes_table",
    "rows_from_snapshot",
    "rows_from_telemetry",
    "telemetry_view",
]


@dataclass(frozen=True)
class LinkRow:
    """One link's live figures (None where nothing was reported yet)."""

    link: str
    transmitter: str
    receiver: str
    length_km: float
    state: str
    frames: int | None = None
    qber: float | None = None
    model_qber: float | None = None
    sifted_rate_bps: float | None = None
    secret_rate_bps: float | None = None
    model_secret_rate_bps: float | None = None
    wall_secret_rate_bps: float | None = None
    store_bits: int | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def format_rate(bps: float | None) -> str:
    """12.3 kbit/s style (graph.format_rate); '-' when unknown."""
    return "-" if bps is None else graph_format_rate(bps)


def _compact(bps: float | None) -> str:
    """695k style for narrow tables; '-' when unknown."""
    if bps is None:
        return "-"
    for factor, unit in ((1e6, "M"), (1e3, "k")):
        if bps >= factor:
            return f"{bps / factor:.3g}{unit}"
    return f"{bps:.0f}"


def _bits(bits: int | None) -> str:
    if bits is None:
        return "-"
    return f"{bits / 8e3:.0f} kB" if bits < 8e6 else f"{bits / 8e6:.1f} MB"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _per_second(bits: int, seconds: float) -> float | None:
    return bits / seconds if seconds > 0 else None


def rows_from_snapshot(plan: NetworkPlan, snapshot: NetworkSnapshot) -> list[LinkRow]:
    """Link rows from the nodes' own NodeControl answers (the transmitting end's figures)."""
    rows = []
    for view in snapshot.links:
        tx = view.tx
        if tx is None:
            state = "unreachable"
            rows.append(
                LinkRow(view.link_id, view.transmitter, view.receiver, view.length_km, state)
            )
            continue
        rows.append(
            LinkRow(
                link=view.link_id,
                transmitter=view.transmitter,
                receiver=view.receiver,
                length_km=view.length_km,
                state=tx.state,
                frames=tx.frames_ok,
                qber=tx.qber if tx.frames_ok else None,
                model_qber=tx.model_qber,
                sifted_rate_bps=_per_second(tx.sifted_bits, tx.emulated_seconds),
                secret_rate_bps=_per_second(tx.secret_bits + tx.auth_bits, tx.emulated_seconds),
                model_secret_rate_bps=tx.model_secret_rate_bps,
                wall_secret_rate_bps=tx.secret_rate_bps,
                store_bits=tx.store_bits,
            )
        )
    return rows


def rows_from_telemetry(plan: NetworkPlan, state: TelemetryState) -> list[LinkRow]:
    """Link rows from the newest MQTT `link/<id>/stats` payloads."""
    rows = []
    for view in plan.links:
        a, b = sorted(view.endpoints)
        link_id = link_id_for(a, b)
        data = state.links.get(link_id)
        if data is None:
            rows.append(LinkRow(link_id, a, b, view.channel.length_km, "no report"))
            continue
        rows.append(
            LinkRow(
                link=link_id,
                transmitter=a,
                receiver=b,
                length_km=view.channel.length_km,
                state=str(data.get("state", "?")),
                frames=data.get("frames_ok"),
                qber=data.get("qber") if data.get("frames_ok") else None,
                model_qber=data.get("model_qber"),
                sifted_rate_bps=data.get("sifted_rate_bps"),
                secret_rate_bps=data.get("secret_rate_bps"),
                model_secret_rate_bps=data.get("model_secret_rate_bps"),
                wall_secret_rate_bps=data.get("wall_secret_rate_bps"),
                store_bits=data.get("store_bits"),
            )
        )
    return rows


def links_table(rows: list[LinkRow], title: str = "links") -> Table:
    table = Table(title=title, title_justify="left")
    columns = ("link", "km", "state", "frames", "QBER", "model", "key b/s", "model", "wall")
    for column in columns:
        left = column in ("link", "state")
        table.add_column(column, justify="left" if left else "right", no_wrap=left)
    table.add_column("store", justify="right")
    table.caption = (
        "QBER and secret key rate (bit/s) measured beside the model's, per emulated second; "
        "wall: key stored per wall-clock second lately"
    )
    for row in rows:
        table.add_row(
            Text(row.link),
            f"{row.length_km:g}",
            Text(row.state),
            "-" if row.frames is None else str(row.frames),
            _percent(row.qber),
            _percent(row.model_qber),
            _compact(row.secret_rate_bps),
            _compact(row.model_secret_rate_bps),
            _compact(row.wall_secret_rate_bps),
            _bits(row.store_bits),
        )
    return table


def telemetry_view(plan: NetworkPlan, state: TelemetryState) -> list[RenderableType]:
    """What `qkdnet watch` draws: the links table, the latest events and what was refused."""
    up = sum(1 for node in plan.nodes if state.nodes.get(node, {}).get("state") == "up")
    title = (
        f"{plan.name}: {up}/{len(plan.nodes)} nodes up · {plan.broker_address} · "
        f"{state.messages} messages"
    )
    if state.rejected:
        title += f" · {state.rejected_total} refused"
    parts: list[RenderableType] = [links_table(rows_from_telemetry(plan, state), title=title)]
    for event in list(state.events)[-5:]:
        details = " ".join(
            f"{k}={v}" for k, v in event.items() if k not in ("schema", "node", "event", "ts")
        )
        parts.append(Text(f"{event.get('node')}: {event.get('event')} {details}".rstrip()))
    if state.rejected:
        reasons = ", ".join(f"{reason} ({n})" for reason, n in state.rejected.most_common(3))
        parts.append(Text(f"refused messages: {reasons}", style="yellow"))
    return parts


def nodes_table(plan: NetworkPlan, info: DeploymentInfo) -> Table:
    table = Table(title=f"{plan.name} ({info.runtime} runtime)", title_justify="left")
    for column in ("node", "state", "pid", "address", "SAEs"):
        table.add_column(column)
    for node_id, node in info.nodes.items():
        table.add_row(
            node_id,
            node.state,
            str(node.pid or "-"),
            node.address,
            ", ".join(plan.nodes[node_id].saes) or "-",
        )
    if info.broker is not None:
        table.add_row(
            "(broker)", info.broker.state, str(info.broker.pid or "-"), info.broker.address, ""
        )
    return table


def _saes_json(plan: NetworkPlan, node_id: str) -> dict[str, dict[str, str]]:
    """SAE ID -> the absolute paths of its client certificate, private key and the CA."""
    saes = {}
    for sae in plan.nodes[node_id].saes:
        paths = sae_credentials(plan, sae)
        saes[sae] = {
            "certificate": str(paths.cert.absolute()),
            "private_key": str(paths.key.absolute()),
            "ca_certificate": str(paths.ca.absolute()),
        }
    return saes


def nodes_json(plan: NetworkPlan, info: DeploymentInfo) -> list[dict[str, Any]]:
    """Every node for `--json`: state, addresses, its KME (ETSI GS QKD 014) and SAE credentials.

    `kme_id` is what the node's KME reports as source_KME_ID; `key_api_url` the ETSI 014 base
    URL (None when the node serves no SAE); `saes` maps each SAE it serves to the files an
    application needs to call that API as the SAE.
    """
    nodes = []
    for node_id, node in info.nodes.items():
        url = plan.nodes[node_id].key_api_url
        nodes.append(
            {
                "node": node_id,
                "state": node.state,
                "pid": node.pid,
                "address": node.address,
                "kme_id": node_id,
                "key_api_url": f"{url}{API_PREFIX}" if url else None,
                "saes": _saes_json(plan, node_id),
                "config": str(plan.nodes[node_id].config_path),
                "log": str(plan.nodes[node_id].log_path),
            }
        )
    return nodes
