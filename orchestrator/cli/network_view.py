"""Tables of a deployment for the terminal and for `--json`: nodes, and links with live figures.

Link figures come either from the nodes over NodeControl (`rows_from_snapshot`) or from MQTT
telemetry (`rows_from_telemetry`); both give the same `LinkRow`, drawn by `links_table`.
Whatever comes from the network is drawn as plain text (`rich.text.Text`), never read as markup.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from qkdnet.node.link_names import link_id_for

from ..durations import format_age
from ..plan.network_plan import KEY_API_PREFIX, NetworkPlan
from ..runtime.seam import BROKER, ComponentState, DeploymentInfo
from .graph import format_rate as graph_format_rate

if TYPE_CHECKING:
    from ..client.network_status import NetworkSnapshot
    from ..client.telemetry_watch import TelemetryState

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
    age_s: float | None = None  # how old the figures are (telemetry); None: asked just now
    kind: str = "bb84"
    source: str = ""  # where the key comes from, when not the link's own photons
    last_fault: str = ""  # why the transmitter's last session ended

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


def _live_qber(last_sample: float | None, cumulative: float | None) -> float | None:
    """The QBER a live view shows: the last frame's disclosed sample when there is one (it
    moves at once when an eavesdropper appears, even if every frame since then aborted), else
    the cumulative QBER of the frames that gave key."""
    return last_sample if last_sample is not None else cumulative


def rows_from_snapshot(
    plan: NetworkPlan, snapshot: NetworkSnapshot, info: DeploymentInfo | None = None
) -> list[LinkRow]:
    """Link rows from the nodes' own NodeControl answers (the transmitting end's figures).

    A transmitter that did not answer is "unreachable", or with `info` what its runtime says
    of it when it is not running ("paused", "crashed", ...)."""
    rows = []
    for view in snapshot.links:
        tx = view.tx
        if tx is None:
            state = "unreachable"
            component = info.nodes.get(view.transmitter) if info is not None else None
            if component is not None and component.state != "running":
                state = f"{view.transmitter} {component.state}"
            rows.append(
                LinkRow(view.link_id, view.transmitter, view.receiver, view.length_km, state)
            )
            continue
        if tx.kind not in ("", "bb84"):  # no photons: no QBER, no model, no emulated time
            rows.append(
                LinkRow(
                    link=view.link_id,
                    transmitter=view.transmitter,
                    receiver=view.receiver,
                    length_km=view.length_km,
                    state=tx.state,
                    frames=tx.frames_ok,
                    wall_secret_rate_bps=tx.secret_rate_bps,
                    store_bits=tx.store_bits,
                    kind=tx.kind,
                    source=tx.source,
                    last_fault=tx.last_fault,
                )
            )
            continue
        rows.append(
            LinkRow(
                link=view.link_id,
                transmitter=view.transmitter,
                receiver=view.receiver,
                length_km=view.length_km,
                state=tx.state,
                last_fault=tx.last_fault,
                frames=tx.frames_ok,
                qber=_live_qber(tx.last_sample_qber if tx.last_sample_bits else None, tx.qber)
                if tx.frames_ok or tx.last_sample_bits
                else None,
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
    """Link rows from the newest MQTT `link/<id>/stats` payloads, with their age."""
    now = time.time()
    rows = []
    for view in plan.links:
        a, b = sorted(view.endpoints)
        link_id = link_id_for(a, b)
        data = state.links.get(link_id)
        if data is None:
            rows.append(LinkRow(link_id, a, b, view.length_km, "no report"))
            continue
        rows.append(
            LinkRow(
                link=link_id,
                transmitter=a,
                receiver=b,
                length_km=view.length_km,
                state=str(data.get("state", "?")),
                frames=data.get("frames_ok"),
                qber=_live_qber(data.get("last_sample_qber"), data.get("qber"))
                if data.get("frames_ok") or data.get("last_sample_qber") is not None
                else None,
                model_qber=data.get("model_qber"),
                sifted_rate_bps=data.get("sifted_rate_bps"),
                secret_rate_bps=data.get("secret_rate_bps"),
                model_secret_rate_bps=data.get("model_secret_rate_bps"),
                wall_secret_rate_bps=data.get("wall_secret_rate_bps"),
                store_bits=data.get("store_bits"),
                age_s=now - state.received.get(("link", link_id), now),
                kind=str(data.get("kind") or "bb84"),
                source=str(data.get("source") or ""),
                last_fault=str(data.get("last_fault") or ""),
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
    aged = any(row.age_s is not None for row in rows)
    if aged:
        table.add_column("age", justify="right")
    table.caption = (
        "QBER of the last frame's sample and secret key rate (bit/s, per emulated second) "
        "measured beside the model's; "
        "wall: key stored per wall-clock second lately"
    )
    sources = [row for row in rows if row.source]
    for row in sources:
        table.caption += f"\n{row.link}: key from {row.source}"
        if row.last_fault and row.state != "running":
            table.caption += f"; last fault: {row.last_fault}"
    for row in rows:
        table.add_row(
            Text(row.link),
            f"{row.length_km:g}",
            Text(row.state if row.kind == "bb84" else f"{row.state} ({row.kind})"),
            "-" if row.frames is None else str(row.frames),
            _percent(row.qber),
            _percent(row.model_qber),
            _compact(row.secret_rate_bps),
            _compact(row.model_secret_rate_bps),
            _compact(row.wall_secret_rate_bps),
            _bits(row.store_bits),
            *([format_age(row.age_s) if row.age_s is not None else "-"] if aged else []),
        )
    return table


def relay_text(event: dict[str, Any]) -> str:
    """A relay event in words: 'key_delivered sae-a → sae-b: 4 key(s) over a → r1 → b,
    12.3 ms (relayed on demand)'."""
    kind = str(event.get("event"))
    if kind == "relay_failed":
        return f"relay_failed {event.get('reason')}: {event.get('message')}"
    slaves = event.get("slaves")
    to = ", ".join(map(str, slaves)) if isinstance(slaves, list) else "?"
    pair = f"{event.get('master')} → {to}"
    parts = [f"{kind} {pair}: {event.get('keys', '?')} key(s)"]
    routes = [r for r in event.get("routes") or [] if isinstance(r, dict) and r.get("route")]
    if routes:
        parts.append("over " + "; ".join(" → ".join(map(str, r["route"])) for r in routes))
    ms = event.get("ms")
    if isinstance(ms, int | float):
        parts.append(f"{ms:.1f} ms")
    source = event.get("source")
    text = ", ".join(parts)
    return f"{text} ({source})" if source else text


def _node_line(
    plan: NetworkPlan, state: TelemetryState, components: dict[str, ComponentState]
) -> Text | None:
    """What is wrong with nodes and the broker: not running, or silent for long."""
    now = time.time()
    silent_after = 3 * plan.telemetry_interval_s
    notes = []
    for name in [*plan.nodes, BROKER]:
        component = components.get(name)
        label = "broker" if name == BROKER else name
        if component is not None and component.state != "running":
            notes.append(f"{label} {component.describe()} {component_age(component, now)}")
            continue
        if name == BROKER:
            continue
        heard = state.received.get(("node", name))
        if heard is None:
            notes.append(f"{label} not heard from")
        elif now - heard > silent_after:
            notes.append(f"{label} silent for {format_age(now - heard)}")
    return Text("nodes: " + "; ".join(notes), style="yellow") if notes else None


def telemetry_view(
    plan: NetworkPlan,
    state: TelemetryState,
    components: dict[str, ComponentState] | None = None,
) -> list[RenderableType]:
    """What `qkdnet watch` draws: the links table (each row with the age of its figures), what
    is wrong with nodes (from the runtime's `components` and the telemetry's silence), the
    latest relay events and node events, and what was refused."""
    components = components or {}
    up = sum(1 for node in plan.nodes if state.nodes.get(node, {}).get("state") == "up")
    running = sum(
        1 for node in plan.nodes if getattr(components.get(node), "state", "") == "running"
    )
    title = (
        f"{plan.name}: {up}/{len(plan.nodes)} nodes report up"
        + (f", {running} running" if components else "")
        + f" · {plan.broker_address} · {state.messages} messages"
    )
    if state.rejected:
        title += f" · {state.rejected_total} refused"
    parts: list[RenderableType] = [links_table(rows_from_telemetry(plan, state), title=title)]
    nodes = _node_line(plan, state, components)
    if nodes is not None:
        parts.append(nodes)
    for event in list(state.relay_events)[-5:]:
        parts.append(Text(f"relay {event.get('node')}: {relay_text(event)}"))
    for event in list(state.events)[-5:]:
        details = " ".join(
            f"{k}={v}" for k, v in event.items() if k not in ("schema", "node", "event", "ts")
        )
        parts.append(Text(f"{event.get('node')}: {event.get('event')} {details}".rstrip()))
    if state.rejected:
        reasons = ", ".join(f"{reason} ({n})" for reason, n in state.rejected.most_common(3))
        parts.append(Text(f"refused messages: {reasons}", style="yellow"))
    return parts


def component_state(component: ComponentState, unreachable: bool = False) -> str:
    """What a node's (or the broker's) state column says: 'crashed (killed by SIGKILL)', or
    'unreachable' for a running node that did not answer."""
    if unreachable and component.state == "running":
        return "unreachable (runs, does not answer)"
    return component.describe()


def component_age(component: ComponentState, now: float | None = None) -> str:
    """'up 5 min' for what runs or is paused, '2 min ago' for what ended, '-' when unknown."""
    if component.since is None:
        return "-"
    age = format_age((now or time.time()) - component.since)
    return f"up {age}" if component.live else f"{age} ago"


def nodes_table(
    plan: NetworkPlan, info: DeploymentInfo, unreachable: Collection[str] = ()
) -> Table:
    table = Table(title=f"{plan.name} ({info.runtime} runtime)", title_justify="left")
    for column in ("node", "state", "since", "pid", "address", "SAEs"):
        table.add_column(column)
    now = time.time()
    for node_id, node in info.nodes.items():
        table.add_row(
            node_id,
            _styled(component_state(node, node_id in unreachable), node.state),
            component_age(node, now),
            str(node.pid or "-"),
            node.address,
            ", ".join(plan.nodes[node_id].saes) or "-",
        )
    if info.broker is not None:
        broker = info.broker
        table.add_row(
            "(broker)",
            _styled(component_state(broker), broker.state),
            component_age(broker, now),
            str(broker.pid or "-"),
            broker.address,
            "",
        )
    return table


_STATE_STYLE = {"running": "green", "paused": "yellow", "stopped": "dim", "crashed": "red"}


def _styled(text: str, state: str) -> Text:
    return Text(text, style=_STATE_STYLE.get(state, "") if "unreachable" not in text else "red")


def _saes_json(plan: NetworkPlan, node_id: str) -> dict[str, dict[str, str]]:
    """SAE ID -> the absolute paths of its client certificate, private key and the CA."""
    saes = {}
    for sae in plan.nodes[node_id].saes:
        paths = plan.sae_credentials(sae)
        saes[sae] = {
            "certificate": str(paths.cert.absolute()),
            "private_key": str(paths.key.absolute()),
            "ca_certificate": str(paths.ca.absolute()),
        }
    return saes


def nodes_json(
    plan: NetworkPlan, info: DeploymentInfo, unreachable: Collection[str] = ()
) -> list[dict[str, Any]]:
    """Every node for `--json`: state, addresses, its KME (ETSI GS QKD 014) and SAE credentials.

    `kme_id` is what the node's KME reports as source_KME_ID; `key_api_url` the ETSI 014 base
    URL (None when the node serves no SAE); `saes` maps each SAE it serves to the files an
    application needs to call that API as the SAE. `state` is running, paused, stopped,
    crashed (`detail` says how) or unreachable (running, but it did not answer); `since` when
    it started or ended (seconds since the epoch).
    """
    nodes = []
    for node_id, node in info.nodes.items():
        url = plan.nodes[node_id].key_api_url
        nodes.append(
            {
                "node": node_id,
                "state": (
                    "unreachable"
                    if node_id in unreachable and node.state == "running"
                    else node.state
                ),
                "detail": node.detail,
                "since": node.since,
                "pid": node.pid,
                "address": node.address,
                "kme_id": node_id,
                "key_api_url": f"{url}{KEY_API_PREFIX}" if url else None,
                "stream_api": plan.nodes[node_id].stream_api_address,
                "restconf_url": plan.nodes[node_id].restconf_url,
                "saes": _saes_json(plan, node_id),
                "config": str(plan.nodes[node_id].config_path),
                "log": str(plan.nodes[node_id].log_path),
            }
        )
    return nodes


def virtual_links_json(snapshot: NetworkSnapshot | None) -> list[dict[str, Any]]:
    """The virtual links SDN controllers created (ETSI GS QKD 015), node by node."""
    if snapshot is None:
        return []
    return [
        {
            "node": node_id,
            "qkdl_id": link.qkdl_id,
            "remote": link.remote,
            "path": list(link.path),
            "bandwidth_bps": link.bandwidth_bps,
            "usable": link.usable,
        }
        for node_id, status in sorted(snapshot.nodes.items())
        if status is not None
        for link in status.virtual_links
    ]


def virtual_links_table(links: list[dict[str, Any]]) -> Table:
    table = Table(title="virtual links (created over ETSI GS QKD 015)", title_justify="left")
    for column in ("node", "qkdl_id", "to", "path (relays pinned to it)", "bandwidth", "state"):
        table.add_column(column)
    for link in links:
        table.add_row(
            link["node"],
            link["qkdl_id"],
            link["remote"],
            " → ".join(link["path"]),
            f"{link['bandwidth_bps']} bit/s",
            "[green]up[/]" if link["usable"] else "[red]a hop is down[/]",
        )
    return table


def borders_table(plan: NetworkPlan, snapshot: NetworkSnapshot | None = None) -> Table:
    """A domain's border nodes: where their ETSI GS QKD 020 API listens, their peers, the QKD
    link they share with them and the keys that crossed (with `snapshot`: live, from the
    border) and the SAEs of other domains reached through them."""
    assert plan.domain is not None
    table = Table(title=f"{plan.name}: borders (ETSI GS QKD 020)", title_justify="left")
    columns = ("border", "020 API", "peer", "peer's 020 API", "shared link", "keys out/in")
    for column in (*columns, "SAEs reached"):
        table.add_column(column)
    for border in plan.domain.borders:
        status = snapshot.nodes.get(border.node) if snapshot is not None else None
        crossed = "-"
        if status is not None and status.HasField("interworking"):
            counters = status.interworking
            crossed = f"{counters.keys_exported}/{counters.keys_imported}"
            if counters.keys_voided:
                crossed += f" ({counters.keys_voided} voided)"
        shared = "none: keys cross over TLS only"
        if border.link is not None:
            shared = f"{border.link['kind']} {border.link['channel']['length_km']:g} km"
            links = status.links if status is not None else []
            end = next((s for s in links if s.link_id == border.link_id), None)
            if end is not None:
                shared += f", {end.state}, store {_bits(end.store_bits)}"
        table.add_row(
            border.node,
            border.url,
            f"{border.peer_node} (domain {border.peer_domain})",
            border.peer_url,
            shared,
            crossed,
            ", ".join(border.far_saes) or "-",
        )
    return table
