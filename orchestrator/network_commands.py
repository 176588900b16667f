"""The deployment verbs of the CLI: deploy, destroy, inspect, start/stop/kill/restart, watch, graph,
and `key get` (keys through a deployed network's ETSI GS QKD 014 API, as applications get them).

Each function takes parsed options and a console and returns the exit status; errors are raised
(`ConfigError` for user errors, other `QkdnetError`s for failures) and turned into messages by
`cli.main`. The runtimes know nothing of the terminal: their events are drawn here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.status import Status
from rich.table import Table

from qkdnet.node.errors import ConfigError, QkdnetError

from .key_client import KeyApiClient, KeyContainer, fingerprint, node_of_sae
from .network_plan import NetworkPlan
from .network_status import NetworkSnapshot, NetworkStatus
from .network_view import (
    links_table,
    nodes_json,
    nodes_table,
    rows_from_snapshot,
    telemetry_view,
)
from .runtime import BROKER, DeployError, Runtime, RuntimeEvent, runtime_for
from .telemetry_watch import TelemetryWatch
from .topology import load_topology

__all__ = [
    "NetworkOptions",
    "deploy",
    "destroy",
    "graph",
    "inspect",
    "key_get",
    "lifecycle",
    "load_plan",
    "require_deployed",
    "wait_for_key",
    "watch",
]


@dataclass(frozen=True)
class NetworkOptions:
    """Options every deployment verb shares."""

    topology: Path
    state_dir: Path | None = None
    broker: str | None = None
    runtime: str | None = None  # overrides the topology's (and the recorded) runtime


def load_plan(opts: NetworkOptions) -> NetworkPlan:
    """Validate the topology file and lay out the deployment (ConfigError when it is wrong).

    The runtime is `opts.runtime`, else the one the deployment was started with (recorded in
    its state directory), else the topology's."""
    return NetworkPlan.build(
        load_topology(opts.topology), opts.state_dir, opts.broker, opts.runtime
    )


class _Progress:
    """Draws runtime events under a spinner."""

    def __init__(self, console: Console, status: Status, total: int) -> None:
        self.console = console
        self.status = status
        self.total = total
        self.ready = 0

    def __call__(self, event: RuntimeEvent) -> None:
        if event.kind == "node_ready":
            self.ready += 1
            self.status.update(f"nodes ready: {self.ready}/{self.total}")
        elif event.kind == "broker_started":
            self.console.print(f"[green]✓[/] MQTT broker on {event.detail}")
        elif event.kind == "pki_ready":
            self.console.print(f"[green]✓[/] PKI in {event.detail}")
        elif event.kind in ("node_stopped", "broker_stopped", "stopped"):
            self.console.print(f"[green]✓[/] stopped {event.subject}")


async def wait_for_key(
    plan: NetworkPlan,
    timeout: float,
    on_progress: Callable[[NetworkSnapshot], None] | None = None,
) -> NetworkSnapshot:
    """Poll the nodes until every link has distilled key at both ends (DeployError on timeout)."""
    deadline = time.monotonic() + timeout
    async with NetworkStatus(plan) as status:
        while True:
            snapshot = await status.snapshot()
            if on_progress is not None:
                on_progress(snapshot)
            if snapshot.every_link_has_key:
                return snapshot
            if time.monotonic() > deadline:
                missing = [link.link_id for link in snapshot.links if not link.has_key]
                raise DeployError(
                    f"no key after {timeout:.0f} s on {len(missing)} link(s): "
                    + ", ".join(missing[:10])
                )
            await asyncio.sleep(0.5)


def deploy(
    opts: NetworkOptions, console: Console, *, wait_key: bool, timeout: float, as_json: bool
) -> int:
    plan = load_plan(opts)
    started = time.monotonic()
    with console.status(f"deploying {plan.name}") as status:
        progress = _Progress(console, status, len(plan.nodes))
        runtime = runtime_for(plan, progress)
        info = runtime.deploy(timeout)
        ready_s = time.monotonic() - started
        console.print(f"[green]✓[/] {len(info.nodes)} nodes ready in {ready_s:.1f} s")
        key_s = None
        if wait_key and plan.links:

            def show(snapshot: NetworkSnapshot) -> None:
                done = sum(link.has_key for link in snapshot.links)
                status.update(f"links with distilled key: {done}/{len(snapshot.links)}")

            asyncio.run(wait_for_key(plan, timeout, show))
            key_s = time.monotonic() - started
            console.print(
                f"[green]✓[/] every link ({len(plan.links)}) distilled key "
                f"{key_s:.1f} s after deploy"
            )
    if as_json:
        print(
            json.dumps(
                {
                    "name": plan.name,
                    "state_dir": str(plan.state_dir),
                    "broker": plan.broker_address,
                    "nodes": nodes_json(plan, info),
                    "ready_seconds": ready_s,
                    "key_seconds": key_s,
                },
                indent=2,
            )
        )
    else:
        console.print(nodes_table(plan, info))
        console.print(
            f"telemetry: mqtt://{plan.broker_address} topics {plan.topic_prefix}/#  ·  "
            f"qkdnet inspect -t {opts.topology}  ·  qkdnet destroy -t {opts.topology}",
            highlight=False,
        )
    return 0


def destroy(opts: NetworkOptions, console: Console, *, keep_state: bool) -> int:
    plan = load_plan(opts)
    with console.status(f"destroying {plan.name}"):
        report = runtime_for(plan).destroy(keep_state=keep_state)
    gone = [*report.stopped, *report.killed]
    console.print(
        f"[green]✓[/] {plan.name}: stopped {len(gone)} "
        + ("container(s)" if plan.runtime == "docker" else "process(es)")
        + (f" ({len(report.killed)} needed SIGKILL)" if report.killed else "")
        + (f"; removed {plan.state_dir}" if report.state_removed else "")
    )
    return 0


def inspect(opts: NetworkOptions, console: Console, *, as_json: bool) -> int:
    plan = load_plan(opts)
    info = runtime_for(plan).inspect()
    snapshot = asyncio.run(_snapshot(plan)) if info.running else None
    rows = rows_from_snapshot(plan, snapshot) if snapshot else []
    if as_json:
        print(
            json.dumps(
                {
                    "name": plan.name,
                    "runtime": info.runtime,
                    "state_dir": info.state_dir,
                    "broker": {
                        "address": info.broker_address,
                        "state": info.broker.state if info.broker else "external",
                        "pid": info.broker.pid if info.broker else None,
                        "topics": f"{plan.topic_prefix}/#",
                    },
                    "nodes": nodes_json(plan, info),
                    "links": [row.as_json() for row in rows],
                    "ca": str(plan.pki_dir / "ca.pem"),
                },
                indent=2,
            )
        )
    else:
        console.print(nodes_table(plan, info))
        if rows:
            console.print(links_table(rows))
    if not info.running:
        console.print(f"{plan.name} is not running (state dir {plan.state_dir})", style="yellow")
        return 1
    return 0


async def _snapshot(plan: NetworkPlan) -> NetworkSnapshot:
    async with NetworkStatus(plan) as status:
        return await status.snapshot(timeout=3.0)


def lifecycle(opts: NetworkOptions, console: Console, action: str, names: list[str]) -> int:
    """start, stop, kill or restart nodes (or the broker, named `BROKER`)."""
    plan = load_plan(opts)
    runtime: Runtime = runtime_for(plan)
    for name in names:
        label = "the broker" if name == BROKER else name
        with console.status(f"{action} {label}"):
            getattr(runtime, action)(name)
        console.print(f"[green]✓[/] {action} {label}")
    return 0


def watch(opts: NetworkOptions, console: Console, *, duration: float | None) -> int:
    """A live table fed by MQTT until Ctrl-C (or `duration` seconds)."""
    plan = load_plan(opts)
    telemetry = TelemetryWatch.for_plan(plan)

    def render() -> Group:
        return Group(*telemetry_view(plan, telemetry.state))

    async def run() -> None:
        with Live(render(), console=console, refresh_per_second=4) as live:
            async for _ in telemetry.updates():
                live.update(render())

    with contextlib.suppress(TimeoutError):
        asyncio.run(asyncio.wait_for(run(), duration) if duration else run())
    return 0


def graph(opts: NetworkOptions, console: Console, *, output: Path | None) -> int:
    """Draw the topology (with live secret key rates when it is deployed)."""
    from .graph import render_graph

    plan = load_plan(opts)
    rates: dict[str, float] | None = None
    if runtime_for(plan).inspect().running:
        snapshot = asyncio.run(_snapshot(plan))
        rates = {
            row.link: row.secret_rate_bps
            for row in rows_from_snapshot(plan, snapshot)
            if row.secret_rate_bps is not None
        }
    path = render_graph(plan.topology, output or Path(f"{plan.name}.png"), rates)
    console.print(f"[green]✓[/] wrote {path}" + (" with live key rates" if rates else ""))
    return 0


def require_deployed(plan: NetworkPlan, saes: list[str], deploy_hint: str = "") -> None:
    """ConfigError when the deployment is not running (`deploy_hint`: the command that would
    deploy it); QkdnetError when a node serving one of `saes` is stopped."""
    info = runtime_for(plan).inspect()
    if not info.running:
        raise ConfigError(
            f"{plan.name} is not deployed (state dir {plan.state_dir})"
            + (f"; deploy it with: {deploy_hint}" if deploy_hint else "")
        )
    for sae in saes:
        node = node_of_sae(plan, sae).node_id
        state = info.nodes[node].state
        if state != "running":
            raise QkdnetError(f"node {node}, which serves {sae}, is {state}")


@dataclass(frozen=True)
class _KeyRound:
    issued: KeyContainer
    fetched: dict[str, dict[str, bytes]]  # slave -> key ID -> key
    enc_keys_ms: float


async def _key_round(
    plan: NetworkPlan,
    master: str,
    slaves: list[str],
    number: int,
    size: int,
    multipath: bool,
) -> _KeyRound:
    async with KeyApiClient.for_sae(plan, master) as client:
        await client.status(slaves[0])  # checks the pair and opens the TLS connection
        started = time.perf_counter()
        issued = await client.enc_keys(
            slaves[0],
            number,
            size,
            additional_slaves=slaves[1:],
            extension_mandatory=[{"qkdnet_multipath": True}] if multipath else None,
        )
        enc_keys_ms = (time.perf_counter() - started) * 1e3
    fetched: dict[str, dict[str, bytes]] = {}
    ids = [key.key_id for key in issued.keys]
    for slave in slaves:
        async with KeyApiClient.for_sae(plan, slave) as client:
            answer = await client.dec_keys(master, ids)
        fetched[slave] = {key.key_id: key.key for key in answer.keys}
    return _KeyRound(issued, fetched, enc_keys_ms)


_SOURCES = {
    "local": "master and slaves on one node, no relay",
    "pool": "from the pool the KME relayed ahead of demand",
    "relay": "relayed on demand",
    "pool+relay": "partly from the pool, partly relayed on demand",
}


def _route_text(relay: Any) -> str | None:
    """'relayed on demand over a → r1 → b, 4.2 ms at the KME' from a qkdnet_relay extension."""
    if not isinstance(relay, dict):
        return None
    source = relay.get("source")
    parts = [_SOURCES.get(source, str(source))] if source else []
    routes = [r for r in relay.get("routes") or [] if isinstance(r, dict) and r.get("route")]
    if routes:
        shown = []
        for route in routes:
            text = " → ".join(map(str, route["route"]))
            if isinstance(route.get("shares"), int) and route["shares"] > 1:
                text += f" (share {int(route.get('share', 0)) + 1}/{route['shares']})"
            shown.append(text)
        parts.append("over " + "; ".join(shown))
    ms = relay.get("ms")
    if isinstance(ms, int | float):
        parts.append(f"{ms:.1f} ms at the KME")
    return ", ".join(parts) or None


def key_get(
    opts: NetworkOptions,
    console: Console,
    *,
    master: str,
    slaves: list[str],
    number: int,
    size: int,
    multipath: bool,
    as_json: bool,
) -> int:
    """enc_keys as `master`, dec_keys as every slave; 0 when every key matches everywhere."""
    if number < 1:
        raise ConfigError(f"--number: must be at least 1, not {number}")
    if size < 8 or size % 8:
        raise ConfigError(f"--size: must be a positive multiple of 8 bits, not {size}")
    if master in slaves:
        raise ConfigError(f"--to: {master} is the master (--from) itself")
    if len(set(slaves)) != len(slaves):
        raise ConfigError("--to: an SAE is named twice")
    plan = load_plan(opts)
    for option, sae in [("--from", master), *(("--to", slave) for slave in slaves)]:
        try:
            node_of_sae(plan, sae)
        except ConfigError as exc:
            raise ConfigError(f"{option}: {exc}") from None
    hint = f"qkdnet deploy -t {opts.topology}" + (
        f" --state-dir {opts.state_dir}" if opts.state_dir else ""
    )
    require_deployed(plan, [master, *slaves], hint)
    with console.status(f"enc_keys as {master}, dec_keys as {', '.join(slaves)}"):
        result = asyncio.run(_key_round(plan, master, slaves, number, size, multipath))
    extension = result.issued.extension or {}
    relay = extension.get("qkdnet_relay")
    matches = {
        key.key_id: {slave: result.fetched[slave].get(key.key_id) == key.key for slave in slaves}
        for key in result.issued.keys
    }
    ok = len(result.issued.keys) == number and all(
        all(per_slave.values()) for per_slave in matches.values()
    )
    if as_json:
        print(
            json.dumps(
                {
                    "master": master,
                    "slaves": slaves,
                    "keys": [
                        {
                            "key_ID": key.key_id,
                            "key": base64.b64encode(key.key).decode(),
                            "match": matches[key.key_id],
                        }
                        for key in result.issued.keys
                    ],
                    "enc_keys_ms": result.enc_keys_ms,
                    "relay": relay if isinstance(relay, dict) else None,
                },
                indent=2,
            )
        )
    else:
        master_node = node_of_sae(plan, master).node_id
        table = Table(
            title=f"{len(result.issued.keys)} key(s) of {size} bits: {master} (KME "
            f"{master_node}) → {', '.join(slaves)}",
            title_justify="left",
        )
        table.add_column("key ID", no_wrap=True)
        table.add_column("SHA-256", no_wrap=True)
        for slave in slaves:
            table.add_column(slave, no_wrap=True)
        for key in result.issued.keys:
            table.add_row(
                key.key_id,
                fingerprint(key.key),
                *(
                    "[green]match[/]" if matches[key.key_id][slave] else "[red]MISMATCH[/]"
                    for slave in slaves
                ),
            )
        console.print(table)
        console.print(f"enc_keys took {result.enc_keys_ms:.1f} ms", highlight=False)
        route = _route_text(relay)
        if route:
            console.print(f"relay: {route}", highlight=False)
    if len(result.issued.keys) != number:
        console.print(f"[red]✗[/] asked for {number} key(s), got {len(result.issued.keys)}")
    elif not ok:
        console.print("[red]✗[/] the slaves' keys differ from the master's")
    return 0 if ok else 1
