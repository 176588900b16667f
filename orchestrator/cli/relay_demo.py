"""`qkdnet relay-demo`: keys relayed on demand through trusted nodes, hop by hop, shown live.

It deploys a topology (by default the bundled `chain5`: a - r1 - r2 - r3 - b) like `qkdnet
demo`, waits until every link has key, then acts as two applications: one key at a time, the
master SAE asks its KME for a key (ETSI GS QKD 014 enc_keys, with the optional extension
`qkdnet_pool: false` so that no key relayed ahead of demand is used) and the slave SAE fetches
it from its own KME (dec_keys); both halves must match.

When the KME reports how the relay went (`key_container_extension.qkdnet_relay`: the route and,
per node of the route, the wall time it spent including everything after it), the table shows
the median time of every hop on its own; a KME that reports nothing gets "n/a" there.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import statistics
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group, JustifyMethod, RenderableType
from rich.live import Live
from rich.table import Table

from qkdnet.node.errors import ConfigError

from ..client.key_client import KeyApiClient, KeyApiError, node_of_sae
from ..client.network_status import NetworkSnapshot
from ..plan.network_plan import NetworkPlan
from ..plan.topology import load_topology
from ..runtime import runtime_for
from .console_output import Progress
from .network_commands import wait_for_key
from .network_demo import bundled_example

__all__ = [
    "DEFAULT_EXAMPLE",
    "RelayDemoOptions",
    "RelayStats",
    "default_pair",
    "hop_times",
    "percentile",
    "run_relay_demo",
]

DEFAULT_EXAMPLE = "chain5"
KEY_BITS = 256
RETRY_S = 0.5


@dataclass(frozen=True)
class RelayDemoOptions:
    """What `qkdnet relay-demo` was asked for (None: the defaults)."""

    topology: Path | None = None
    state_dir: Path | None = None
    keys: int = 20
    master: str | None = None
    slave: str | None = None
    key_timeout: float = 60.0  # seconds one key may wait out 503s (routes still forming)
    link_timeout: float = 120.0  # seconds to wait for key on every link


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank `p`-th percentile (0 < p <= 100) of non-empty `values`."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def hop_times(hop_ms: list[float]) -> list[float]:
    """Per-hop times on their own from cumulative ones: hop i took hop_ms[i] - hop_ms[i+1]."""
    return [hop_ms[i] - hop_ms[i + 1] for i in range(len(hop_ms) - 1)] + hop_ms[-1:]


def default_pair(plan: NetworkPlan) -> tuple[str, str]:
    """The first SAE of the first node with SAEs and the first SAE of the last such node."""
    served = [node.saes for node in plan.nodes.values() if node.saes]
    if len(served) < 2:
        raise ConfigError(
            f"{plan.name}: relay-demo needs SAEs on two nodes; name them with --from and --to"
        )
    return served[0][0], served[-1][0]


@dataclass
class RelayStats:
    """What the demo has seen so far."""

    master: str
    slave: str
    wanted: int
    delivered: int = 0
    matched: int = 0
    failed: int = 0
    retries: int = 0
    enc_ms: list[float] = field(default_factory=list)
    kme_ms: list[float] = field(default_factory=list)  # qkdnet_relay "ms", when reported
    routes: Counter[tuple[str, ...]] = field(default_factory=Counter)
    hops: dict[tuple[str, ...], list[list[float]]] = field(default_factory=dict)
    sources: Counter[str] = field(default_factory=Counter)
    error: str | None = None  # the last failure (or the 503 being waited out)
    events: deque[str] = field(default_factory=lambda: deque(maxlen=3))

    interrupted: bool = False  # Ctrl-C (or SIGTERM) ended the run early

    @property
    def all_matched(self) -> bool:
        """Nothing failed and every key delivered matched (at least one, unless interrupted)."""
        complete = self.delivered > 0 or self.interrupted
        return complete and self.failed == 0 and self.matched == self.delivered

    def record_relay(self, extension: dict[str, Any] | None) -> None:
        """Take in a `key_container_extension` (anything missing or malformed is skipped)."""
        relay = (extension or {}).get("qkdnet_relay")
        if not isinstance(relay, dict):
            return
        if isinstance(relay.get("source"), str):
            self.sources[relay["source"]] += 1
        if isinstance(relay.get("ms"), int | float):
            self.kme_ms.append(float(relay["ms"]))
        for entry in relay.get("routes") or []:
            if not isinstance(entry, dict) or not isinstance(entry.get("route"), list):
                continue
            route = tuple(str(node) for node in entry["route"])
            self.routes[route] += 1
            hop_ms = entry.get("hop_ms")
            if (
                isinstance(hop_ms, list)
                and len(hop_ms) == len(route)
                and all(isinstance(ms, int | float) for ms in hop_ms)
            ):
                self.hops.setdefault(route, []).append(hop_times([float(ms) for ms in hop_ms]))


def _topology_route(plan: NetworkPlan, source: str, target: str) -> tuple[str, ...]:
    """A fewest-hops path in the topology (what routing picks while every link is healthy)."""
    neighbours: dict[str, list[str]] = {node: [] for node in plan.nodes}
    for link in plan.links:
        a, b = link.endpoints
        neighbours[a].append(b)
        neighbours[b].append(a)
    previous: dict[str, str | None] = {source: None}
    queue = deque([source])
    while queue:
        node = queue.popleft()
        for peer in neighbours[node]:
            if peer not in previous:
                previous[peer] = node
                queue.append(peer)
    if target not in previous:
        return (source, target)
    path = [target]
    while (step := previous[path[-1]]) is not None:
        path.append(step)
    return tuple(reversed(path))


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _route_table(plan: NetworkPlan, stats: RelayStats) -> Table:
    master_node = node_of_sae(plan, stats.master).node_id
    slave_node = node_of_sae(plan, stats.slave).node_id
    reported = bool(stats.routes)
    route = (
        stats.routes.most_common(1)[0][0]
        if reported
        else _topology_route(plan, master_node, slave_node)
    )
    samples = stats.hops.get(route, [])
    table = Table(
        title=f"route {' → '.join(route)}"
        + (f" ({stats.routes[route]} of {stats.delivered} keys)" if reported else ""),
        title_justify="left",
    )
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("hop", "right"),
        ("node", "left"),
        ("does", "left"),
        ("ms alone (p50)", "right"),
        ("ms from here (p50)", "right"),
    )
    for column, justify in columns:
        table.add_column(column, justify=justify)
    for i, node in enumerate(route):
        if i == 0:
            role = f"origin: pads K for {route[1]}" if len(route) > 1 else "origin"
        elif i == len(route) - 1:
            role = "target: stores K"
        else:
            role = f"relays: unpads, pads for {route[i + 1]}"
        alone = statistics.median(s[i] for s in samples) if samples else None
        total = statistics.median(sum(s[i:]) for s in samples) if samples else None
        table.add_row(str(i + 1), node, role, _ms(alone), _ms(total))
    if not reported:
        table.caption = (
            "the KME reports no qkdnet_relay extension: hop timings n/a, route as the topology "
            "suggests"
        )
    elif samples:
        table.caption = f"median over {len(samples)} relays; alone = without the hops after it"
    return table


def _render(plan: NetworkPlan, stats: RelayStats, started: float) -> Group:
    elapsed = time.monotonic() - started
    title = (
        f"qkdnet relay-demo: {plan.name}, {stats.master} → {stats.slave} - {elapsed:.0f} s, "
        f"{stats.delivered}/{stats.wanted} keys delivered, {stats.matched} matched"
    )
    lines: list[RenderableType] = [title, _route_table(plan, stats)]
    if stats.enc_ms:
        line = (
            f"enc_keys p50 {percentile(stats.enc_ms, 50):.1f} ms, "
            f"p99 {percentile(stats.enc_ms, 99):.1f} ms"
        )
        if stats.kme_ms:
            line += f" · KME relay p50 {statistics.median(stats.kme_ms):.1f} ms"
        if stats.retries:
            line += f" · {stats.retries} retried after 503"
        lines.append(line)
    lines.extend(stats.events)
    return Group(*lines)


async def _one_key(
    master: KeyApiClient,
    slave: KeyApiClient,
    stats: RelayStats,
    timeout: float,
    stop: asyncio.Event,
) -> bool:
    """Relay one key and check it at the slave; False when the demo should end."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            started = time.perf_counter()
            issued = await master.enc_keys(
                stats.slave, 1, KEY_BITS, extension_optional=[{"qkdnet_pool": False}]
            )
            enc_ms = (time.perf_counter() - started) * 1e3
            break
        except KeyApiError as exc:
            stats.error = str(exc)
            if exc.status == 503 and stop.is_set():
                return False  # interrupted while waiting for a route: not a failure
            if exc.status != 503 or time.monotonic() > deadline:
                stats.failed += 1
                stats.events.append(f"[red]✗[/] enc_keys: {exc}")
                return False
            stats.retries += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RETRY_S)
    try:
        fetched = await slave.dec_keys(stats.master, [key.key_id for key in issued.keys])
    except KeyApiError as exc:
        stats.failed += 1
        stats.error = str(exc)
        stats.events.append(f"[red]✗[/] dec_keys: {exc}")
        return False
    stats.error = None
    stats.delivered += 1
    stats.enc_ms.append(enc_ms)
    stats.record_relay(issued.extension)
    if [(k.key_id, k.key) for k in fetched.keys] == [(k.key_id, k.key) for k in issued.keys]:
        stats.matched += 1
    else:
        stats.events.append(f"[red]✗[/] key {issued.keys[0].key_id}: the halves differ")
    return True


async def _relay_keys(
    plan: NetworkPlan, opts: RelayDemoOptions, stats: RelayStats, console: Console
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        with Progress(console, "waiting for key on every link") as status:

            def show(snapshot: NetworkSnapshot) -> None:
                done = sum(link.has_key for link in snapshot.links)
                status.update(f"links with distilled key: {done}/{len(snapshot.links)}")

            waiting = asyncio.ensure_future(wait_for_key(plan, opts.link_timeout, show))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
                return
            waiting.result()  # DeployError when some link never got key
        console.print(f"[green]✓[/] every link ({len(plan.links)}) has key")
        started = time.monotonic()
        async with (
            KeyApiClient.for_sae(plan, stats.master) as master,
            KeyApiClient.for_sae(plan, stats.slave) as slave,
        ):
            await master.status(stats.slave)  # checks the pair, opens the TLS connections
            await slave.status(stats.master)
            with Live(_render(plan, stats, started), console=console, refresh_per_second=4) as live:
                while stats.delivered < stats.wanted and not stop.is_set():
                    going = await _one_key(master, slave, stats, opts.key_timeout, stop)
                    live.update(_render(plan, stats, started))
                    if not going:
                        break
            console.print()
    finally:
        stats.interrupted = stop.is_set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _plan(opts: RelayDemoOptions) -> tuple[NetworkPlan, bool]:
    """The plan, and whether it is the bundled default example."""
    bundled = opts.topology is None
    path = bundled_example(DEFAULT_EXAMPLE) if opts.topology is None else opts.topology
    return NetworkPlan.build(load_topology(path), opts.state_dir), bundled


def run_relay_demo(opts: RelayDemoOptions, console: Console) -> int:
    """Deploy, relay `opts.keys` keys one at a time, show them live, summarise, tear down.

    The bundled example replaces an earlier deployment of itself (as `qkdnet demo` does); a
    topology of your own that is already running is used as it is and left running.
    Returns 0 when every key was delivered and matched.
    """
    if opts.keys < 1:
        raise ConfigError(f"--keys: must be at least 1, not {opts.keys}")
    plan, bundled = _plan(opts)
    default_master, default_slave = (
        default_pair(plan) if opts.master is None or opts.slave is None else ("", "")
    )
    master = opts.master or default_master
    slave = opts.slave or default_slave
    for option, sae in (("--from", master), ("--to", slave)):
        try:
            node_of_sae(plan, sae)
        except ConfigError as exc:
            raise ConfigError(f"{option}: {exc}") from None
    if master == slave:
        raise ConfigError(f"--from and --to name the same SAE, {master}")
    runtime = runtime_for(plan)
    running = runtime.inspect().running
    owned = bundled or not running
    if running and bundled:
        console.print(f"an earlier {plan.name} deployment is still running: destroying it first")
        runtime.destroy()
    elif running:
        console.print(f"{plan.name} is running: using it (it is left running afterwards)")
    stats = RelayStats(master, slave, opts.keys)
    try:
        if owned:
            started = time.monotonic()
            with Progress(console, f"deploying {plan.name}: PKI, broker, {len(plan.nodes)} nodes"):
                runtime.deploy()
            master_node = node_of_sae(plan, master).node_id
            slave_node = node_of_sae(plan, slave).node_id
            console.print(
                f"[green]✓[/] {plan.name}: {len(plan.nodes)} nodes up in "
                f"{time.monotonic() - started:.1f} s; {master} at {master_node}, "
                f"{slave} at {slave_node}"
            )
        asyncio.run(_relay_keys(plan, opts, stats, console))
    finally:
        if owned:
            with Progress(console, f"destroying {plan.name}"):
                runtime.destroy()
    _summary(stats, console)
    if owned:
        console.print("[green]✓[/] torn down: no node, broker or state left behind")
    return 0 if stats.all_matched else 1


def _summary(stats: RelayStats, console: Console) -> None:
    mark = "[green]✓[/]" if stats.all_matched else "[red]✗[/]"
    matched = (
        f"all {stats.matched} matched"
        if stats.matched == stats.delivered
        else f"{stats.matched} of {stats.delivered} matched"
    )
    line = f"{mark} {stats.delivered} of {stats.wanted} keys relayed {stats.master} → "
    line += f"{stats.slave}: {matched}"
    if stats.interrupted:
        line += " (interrupted)"
    if stats.enc_ms:
        line += (
            f"; enc_keys p50 {percentile(stats.enc_ms, 50):.1f} ms, "
            f"p99 {percentile(stats.enc_ms, 99):.1f} ms"
        )
    console.print(line, highlight=False)
    if stats.routes:
        routes = ", ".join(f"{' → '.join(r)} ({n})" for r, n in stats.routes.most_common())
        console.print(f"routes: {routes}", highlight=False)
    if set(stats.sources) - {"relay"}:
        sources = ", ".join(f"{source} ({n})" for source, n in stats.sources.most_common())
        console.print(f"[yellow]keys came from: {sources}[/]", highlight=False)
    if stats.failed and stats.error:
        console.print(f"[red]failed:[/] {stats.error}", highlight=False)
