"""The `qkdnet fault` verbs: pause, unpause, stop, kill and restart nodes, cut and restore links,
netem set/show/reset on a node's interface, and show everything in force.

Each function takes parsed options and a console and returns the exit status; errors are raised
and turned into messages by `cli.main`, as in network_commands.py.
"""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from qkdnet.node.errors import ConfigError

from .faults import FaultReport, Impairment, parse_duration_ms, parse_percent
from .network_commands import NetworkOptions, load_plan, require_deployed
from .runtime import BROKER, Runtime, runtime_for

__all__ = [
    "cut",
    "freeze",
    "netem_reset",
    "netem_set",
    "netem_show",
    "restore",
    "show",
]


def _deployed(opts: NetworkOptions) -> Runtime:
    plan = load_plan(opts)
    require_deployed(plan, [])
    return runtime_for(plan)


def freeze(opts: NetworkOptions, console: Console, action: str, names: list[str]) -> int:
    """pause or unpause nodes (or the broker)."""
    runtime = _deployed(opts)
    for name in names:
        getattr(runtime, action)(name)
        console.print(f"[green]✓[/] {action}d {'the broker' if name == BROKER else name}")
    return 0


def cut(opts: NetworkOptions, console: Console, a: str, b: str) -> int:
    runtime = _deployed(opts)
    runtime.cut_link(a, b)
    console.print(f"[green]✓[/] cut {a} — {b}: every packet between them is dropped")
    return 0


def restore(opts: NetworkOptions, console: Console, pair: list[str], every: bool) -> int:
    runtime = _deployed(opts)
    if every == bool(pair):
        raise ConfigError("name the link's two nodes, or --all")
    pairs = runtime.faults().cuts if every else [(pair[0], pair[1])]
    for a, b in pairs:
        runtime.restore_link(a, b)
        console.print(f"[green]✓[/] restored {a} — {b}")
    if not pairs:
        console.print("no link is cut")
    return 0


def netem_set(
    opts: NetworkOptions,
    console: Console,
    node: str,
    *,
    delay: str | None,
    jitter: str | None,
    loss: str | None,
) -> int:
    if delay is None and jitter is None and loss is None:
        raise ConfigError("give at least one of --delay, --jitter, --loss (or use netem reset)")
    impairment = Impairment(
        delay_ms=parse_duration_ms(delay, "--delay") if delay else 0.0,
        jitter_ms=parse_duration_ms(jitter, "--jitter") if jitter else 0.0,
        loss_percent=parse_percent(loss, "--loss") if loss else 0.0,
    )
    runtime = _deployed(opts)
    runtime.set_impairment(node, impairment)
    console.print(f"[green]✓[/] {node}: {impairment.describe()} (replaces what was set)")
    return 0


def netem_reset(opts: NetworkOptions, console: Console, nodes: list[str], every: bool) -> int:
    runtime = _deployed(opts)
    if every == bool(nodes):
        raise ConfigError("name nodes, or --all")
    targets = list(runtime.faults().impairments) if every else nodes
    for node in targets:
        runtime.set_impairment(node, Impairment())
        console.print(f"[green]✓[/] {node}: no impairment")
    return 0


def netem_show(opts: NetworkOptions, console: Console, nodes: list[str], as_json: bool) -> int:
    runtime = _deployed(opts)
    report = runtime.faults()
    for node in nodes:
        if node not in runtime.plan.nodes:
            raise ConfigError(f"no node {node!r} in {runtime.plan.name}")
    shown = nodes or list(runtime.plan.nodes)
    impairments = {node: report.impairments.get(node, Impairment()) for node in shown}
    if as_json:
        print(json.dumps({node: imp.as_json() for node, imp in impairments.items()}, indent=2))
        return 0
    table = Table(title=f"{runtime.plan.name}: netem", title_justify="left")
    for column in ("node", "delay ms", "jitter ms", "loss %"):
        table.add_column(column, justify="left" if column == "node" else "right")
    for node, imp in impairments.items():
        table.add_row(node, f"{imp.delay_ms:g}", f"{imp.jitter_ms:g}", f"{imp.loss_percent:g}")
    console.print(table)
    return 0


def show(opts: NetworkOptions, console: Console, as_json: bool) -> int:
    """Every fault in force: paused nodes, cut links, impairments."""
    runtime = _deployed(opts)
    report = runtime.faults()
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
        return 0
    console.print(_describe(runtime.plan.name, report), highlight=False)
    return 0


def _describe(name: str, report: FaultReport) -> str:
    if not (report.paused or report.cuts or report.impairments):
        return f"{name}: no fault in force"
    lines = [f"{name}:"]
    if report.paused:
        lines.append(f"  paused: {', '.join(report.paused)}")
    for a, b in report.cuts:
        lines.append(f"  cut: {a} — {b}")
    for node, imp in report.impairments.items():
        lines.append(f"  netem on {node}: {imp.describe()}")
    return "\n".join(lines)
