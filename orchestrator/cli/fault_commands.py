"""The `qkdnet fault` verbs: pause, unpause, stop, kill and restart nodes, cut and restore links,
shape a node's traffic (netem set/show/reset, alias shape), change a link's quantum channel live
(link), show and reset everything in force, and play a scenario (run).

Each function takes parsed options and a console and returns the exit status; errors are raised
and turned into messages by `cli.main`, as in network_commands.py. The faults themselves are
fault_scenario.py's, so that a verb and a scenario step do the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from qkdnet.node.core.channel_change import ChannelChange
from qkdnet.node.errors import ConfigError

from ..plan.network_plan import NetworkPlan
from ..runtime import runtime_for
from ..runtime.fault_scenario import (
    ChannelFault,
    Cut,
    Shape,
    Step,
    Undo,
    channel_updates,
    impairment_of,
    load_scenario,
    reset_everything,
    run_scenario,
)
from ..runtime.faults import FaultReport, Impairment, change_as_json, describe_change
from ..runtime.seam import BROKER, Runtime
from .network_commands import NetworkOptions, expand_targets, load_plan, require_deployed

if TYPE_CHECKING:  # the channel model imports numpy: only the verbs that model load it
    from qkdnet.node.core.channel_model import ChannelParameters

__all__ = [
    "cut",
    "freeze",
    "link",
    "netem_reset",
    "netem_set",
    "netem_show",
    "reset",
    "restore",
    "run",
    "show",
]


def _deployed(opts: NetworkOptions) -> Runtime:
    plan = load_plan(opts)
    require_deployed(plan, [])
    return runtime_for(plan)


def _label(name: str) -> str:
    return "the broker" if name == BROKER else name


def freeze(opts: NetworkOptions, console: Console, action: str, names: list[str]) -> int:
    """pause or unpause nodes (or the broker)."""
    runtime = _deployed(opts)
    for name in expand_targets(runtime.plan, names):
        getattr(runtime, action)(name)
        console.print(f"[green]✓[/] {action}d {_label(name)}")
    return 0


def cut(opts: NetworkOptions, console: Console, a: str, b: str) -> int:
    runtime = _deployed(opts)
    Cut(a, b).apply(runtime, Undo())
    how = (
        "every packet between them is dropped"
        if runtime.name == "docker"
        else "the link stops and neither node takes the other's link, relay or routing calls"
    )
    console.print(f"[green]✓[/] cut {a} — {b}: {how}")
    return 0


def restore(opts: NetworkOptions, console: Console, pair: list[str], every: bool) -> int:
    runtime = _deployed(opts)
    if every == bool(pair):
        raise ConfigError("name the link's two nodes, or --all")
    pairs = runtime.faults().cuts if every else [(pair[0], pair[1])]
    for a, b in pairs:
        Cut(a, b, restore=True).apply(runtime, Undo())
        console.print(f"[green]✓[/] restored {a} — {b}")
    if not pairs:
        console.print("no link is cut")
    return 0


def netem_set(
    opts: NetworkOptions,
    console: Console,
    node: str,
    *,
    peer: str | None = None,
    delay: str | None,
    jitter: str | None,
    loss: str | None,
    rate: str | None = None,
) -> int:
    if not (delay or jitter or loss or rate):
        raise ConfigError(
            "give at least one of --delay, --jitter, --loss, --rate (or use netem reset)"
        )
    impairment = impairment_of(delay, jitter, loss, rate, prefix="--")
    runtime = _deployed(opts)
    Shape(node, peer, impairment).apply(runtime, Undo())
    target = node + (f" → {peer}" if peer else "")
    mechanism = runtime.faults().mechanism.get(node, "in-node") if peer is None else "in-node"
    console.print(
        f"[green]✓[/] {target}: {impairment.describe()} ({mechanism}; replaces what was set)"
    )
    return 0


def netem_reset(
    opts: NetworkOptions, console: Console, nodes: list[str], every: bool, peer: str | None = None
) -> int:
    runtime = _deployed(opts)
    if every == bool(nodes):
        raise ConfigError("name nodes, or --all")
    if every:
        report = runtime.faults()
        targets: list[tuple[str, str | None]] = [(n, None) for n in report.impairments]
        targets += [(n, p) for n, peers in report.peer_impairments.items() for p in peers]
    else:
        targets = [(node, peer) for node in nodes]
    for node, toward in targets:
        Shape(node, toward, Impairment()).apply(runtime, Undo())
        console.print(f"[green]✓[/] {node}{f' → {toward}' if toward else ''}: no shaping")
    if not targets:
        console.print("no traffic is shaped")
    return 0


def netem_show(opts: NetworkOptions, console: Console, nodes: list[str], as_json: bool) -> int:
    runtime = _deployed(opts)
    for node in nodes:
        runtime.check_node(node)
    report = runtime.faults()
    shown = nodes or list(runtime.plan.nodes)
    impairments = {node: report.impairments.get(node, Impairment()) for node in shown}
    if as_json:
        data: dict[str, Any] = {}
        for node, imp in impairments.items():
            data[node] = imp.as_json() | {
                "mechanism": report.mechanism.get(node, "none" if imp.is_none else "netem"),
                "peers": {
                    peer: p.as_json() for peer, p in report.peer_impairments.get(node, {}).items()
                },
            }
        print(json.dumps(data, indent=2))
        return 0
    table = Table(title=f"{runtime.plan.name}: shaping", title_justify="left")
    for column in ("node", "toward", "delay ms", "jitter ms", "loss %", "rate kbit/s", "by"):
        table.add_column(column, justify="left" if column in ("node", "toward", "by") else "right")

    def row(node: str, toward: str, imp: Impairment, by: str) -> None:
        figures = (imp.delay_ms, imp.jitter_ms, imp.loss_percent, imp.rate_kbit)
        table.add_row(node, toward, *(f"{x:g}" for x in figures), by)

    for node, imp in impairments.items():
        row(node, "all", imp, report.mechanism.get(node, "") if not imp.is_none else "")
        for peer, peer_imp in sorted(report.peer_impairments.get(node, {}).items()):
            row(node, peer, peer_imp, "in-node")
    console.print(table)
    return 0


def link(
    opts: NetworkOptions,
    console: Console,
    a: str,
    b: str,
    *,
    eavesdrop: float | None,
    extra_loss_db: float | None,
    misalignment: float | None,
    reset: bool,
) -> int:
    """Change the quantum channel of link a--b live (both ends, from their next frames)."""
    updates = channel_updates(eavesdrop, extra_loss_db, misalignment)
    if not updates and not reset:
        raise ConfigError(
            "give at least one of --eavesdrop, --extra-loss-db, --misalignment (or --reset)"
        )
    runtime = _deployed(opts)
    fault = ChannelFault(a, b, updates, reset=reset)
    fault.apply(runtime, Undo())
    pair = runtime.check_link(a, b)
    change = _channel_changes(runtime)[pair]
    console.print(
        f"[green]✓[/] {a} — {b}: {describe_change(change)}; "
        f"{_model_text(runtime.plan, pair, change)}",
        highlight=False,
    )
    return 0


def _channel_changes(runtime: Runtime) -> dict[tuple[str, str], ChannelChange]:
    """Every link's channel change as the nodes hold it (an unchanged link: none)."""
    changes: dict[tuple[str, str], ChannelChange] = {}
    for item in runtime.plan.links:
        a, b = sorted(item.endpoints)
        changes[(a, b)] = ChannelChange()
    changes.update(runtime.faults().channels)
    return changes


# Cascade's reconciliation efficiency the model assumes here (a link's own figures use what
# its Cascade achieved, about 1.1 to 1.2).
_EFFICIENCY = 1.16


def _model(plan: NetworkPlan, pair: tuple[str, str], change: ChannelChange) -> dict[str, float]:
    """The model's QBER and secret key rate of a link, configured and with `change`."""
    from qkdnet.node.core.channel_model import model_figures

    links = plan.topology.resolved_links()
    item = next(item for item in links if tuple(sorted(item.endpoints)) == pair)
    configured: ChannelParameters = item.channel.parameters()
    sample = item.processing.pe_sample_fraction
    before = model_figures(configured, _EFFICIENCY, pe_sample_fraction=sample)
    after = model_figures(change.apply(configured), _EFFICIENCY, pe_sample_fraction=sample)
    return {
        "qber": before.e_mu,
        "secret_rate_bps": before.secret_per_pulse * configured.pulse_rate_hz,
        "changed_qber": after.e_mu,
        "changed_secret_rate_bps": after.secret_per_pulse * configured.pulse_rate_hz,
    }


def _model_text(plan: NetworkPlan, pair: tuple[str, str], change: ChannelChange) -> str:
    model = _model(plan, pair, change)
    return (
        f"model QBER {model['qber']:.2%} → {model['changed_qber']:.2%}, secret key "
        f"{_rate(model['secret_rate_bps'])} → {_rate(model['changed_secret_rate_bps'])}"
    )


def _rate(bps: float) -> str:
    for unit, scale in (("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.3g} {unit}"
    return f"{bps:.3g} bit/s"


def _report_json(plan: NetworkPlan, report: FaultReport) -> dict[str, Any]:
    data = report.as_json()
    data["channels"] = {
        f"{a}--{b}": change_as_json(change) | {"model": _model(plan, (a, b), change)}
        for (a, b), change in report.channels.items()
    }
    return data


def show(opts: NetworkOptions, console: Console, as_json: bool) -> int:
    """Every fault in force: paused nodes and broker, cut links, shaping, channel changes."""
    runtime = _deployed(opts)
    report = runtime.faults()
    if as_json:
        print(json.dumps(_report_json(runtime.plan, report), indent=2))
        return 0
    console.print(_describe(runtime.plan, report), highlight=False, soft_wrap=True)
    return 0


def reset(opts: NetworkOptions, console: Console, as_json: bool) -> int:
    """Undo every fault in force; prints what was reset."""
    runtime = _deployed(opts)
    report = reset_everything(runtime)
    if as_json:
        print(json.dumps({"reset": _report_json(runtime.plan, report)}, indent=2))
        return 0
    if report.is_empty:
        console.print(f"{runtime.plan.name}: no fault was in force")
        return 0
    lines = _describe(runtime.plan, report).splitlines()
    console.print(
        f"[green]✓[/] {runtime.plan.name}: reset\n" + "\n".join(lines[1:]),
        highlight=False,
        soft_wrap=True,
    )
    return 0


def run(opts: NetworkOptions, console: Console, path: Path) -> int:
    """Play a scenario file (fault_scenario.py) against the deployment."""
    plan = load_plan(opts)
    runtime = runtime_for(plan)
    scenario = load_scenario(path, runtime)  # every step checked before anything happens
    require_deployed(plan, [])
    console.print(
        f"{plan.name}: playing {path} ({len(scenario.steps)} steps, "
        f"{scenario.duration:g} s); Ctrl-C resets what it applied",
        highlight=False,
    )

    def on_step(step: Step, elapsed: float, done: str) -> None:
        console.print(
            f"[green]✓[/] {elapsed:7.1f} s  step {step.number}/{len(scenario.steps)}: {done}",
            highlight=False,
        )

    try:
        run_scenario(runtime, scenario, on_step)
    except KeyboardInterrupt:
        console.print("interrupted: what the scenario applied is reset")
        raise
    left = runtime.faults()
    console.print(
        f"[green]✓[/] {path}: done"
        + ("" if left.is_empty else "; faults still in force (qkdnet fault show, fault reset)"),
        highlight=False,
    )
    return 0


def _describe(plan: NetworkPlan, report: FaultReport) -> str:
    if report.is_empty:
        return f"{plan.name}: no fault in force"
    lines = [f"{plan.name}:"]
    if report.paused:
        lines.append(f"  paused: {', '.join(map(_label, report.paused))}")
    for a, b in report.cuts:
        lines.append(f"  cut: {a} — {b}")
    for node, imp in report.impairments.items():
        lines.append(
            f"  shaping of {node} ({report.mechanism.get(node, 'netem')}): {imp.describe()}"
        )
    for node, peers in report.peer_impairments.items():
        for peer, imp in sorted(peers.items()):
            lines.append(f"  shaping of {node} → {peer} (in-node): {imp.describe()}")
    for pair, change in report.channels.items():
        lines.append(
            f"  link {pair[0]} — {pair[1]}: {describe_change(change)} "
            f"({_model_text(plan, pair, change)})"
        )
    return "\n".join(lines)
