"""`qkdnet demo --example euroqci`: a bundled topology with domains, keys relayed across borders.

Deploys what the example's external-KME links draw on first (bundled deployments named by
`qkdnet:`, the euroqci-devices pair), then every domain as its own deployment; while the links
distil key, the SAEs of different domains ask each other for keys in turn (enc_keys in one
domain, dec_keys in the other), each checked; the borders show what crossed over ETSI GS QKD 020.
At the end every link's two stores are compared and everything is torn down.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from qkdnet.node.errors import QkdnetError

from ..client.key_client import KeyApiClient, KeyApiError
from ..client.network_status import NetworkSnapshot, NetworkStatus
from ..plan.federation import plan_domains
from ..plan.network_plan import NetworkPlan
from ..plan.registry import Registry
from ..plan.topology import Topology, load_topology
from ..runtime import runtime_for
from .console_output import Progress
from .network_commands import _trust_peers
from .network_demo import bundled_example, bundled_examples
from .network_view import borders_table, links_table, rows_from_snapshot

__all__ = ["run_federation_demo"]

_KEYS = 4  # keys per request


@dataclass
class _Pair:
    """One master SAE asking keys for one slave SAE of another domain."""

    master: str
    slave: str
    ok: int = 0
    failed: int = 0
    last_ms: float | None = None
    last_error: str = ""
    latencies: list[float] = field(default_factory=list)


def _prerequisites(topology: Topology) -> list[str]:
    """The deployments the topology's external-KME links draw on."""
    names = {
        end.qkdnet
        for link in topology.links
        if link.external_kme is not None
        for end in link.external_kme.ends.values()
        if end.qkdnet is not None
    }
    return sorted(names)


async def _ask(pair: _Pair, plan_of: dict[str, NetworkPlan]) -> None:
    started = time.perf_counter()
    try:
        async with (
            KeyApiClient.for_sae(plan_of[pair.master], pair.master, timeout=20) as master,
            KeyApiClient.for_sae(plan_of[pair.slave], pair.slave, timeout=20) as slave,
        ):
            sent = await master.enc_keys(pair.slave, _KEYS, 256)
            got = await slave.dec_keys(pair.master, [key.key_id for key in sent.keys])
    except KeyApiError as exc:
        pair.failed += 1
        pair.last_error = exc.message[:80]
        return
    if [key.key for key in got.keys] == [key.key for key in sent.keys]:
        pair.ok += len(sent.keys)
        pair.last_ms = (time.perf_counter() - started) * 1e3
        pair.latencies.append(pair.last_ms)
        pair.last_error = ""
    else:
        pair.failed += 1
        pair.last_error = "MISMATCH"


def _pairs_table(pairs: list[_Pair], domain_of: dict[str, str]) -> Table:
    table = Table(title="keys across borders (enc_keys → dec_keys)", title_justify="left")
    for column in ("master", "slave", "domains", "keys matched", "failed", "last ms", "note"):
        table.add_column(column)
    for pair in pairs:
        table.add_row(
            pair.master,
            pair.slave,
            f"{domain_of[pair.master]} → {domain_of[pair.slave]}",
            str(pair.ok),
            str(pair.failed),
            "-" if pair.last_ms is None else f"{pair.last_ms:.0f}",
            pair.last_error,
        )
    return table


async def _show(
    plans: list[NetworkPlan],
    pairs: list[_Pair],
    domain_of: dict[str, str],
    console: Console,
    duration: float,
    stop: asyncio.Event,
) -> dict[str, NetworkSnapshot]:
    plan_of = {sae: p for p in plans for n in p.nodes.values() for sae in n.saes}
    started = time.monotonic()
    snapshots: dict[str, NetworkSnapshot] = {}
    async with contextlib.AsyncExitStack() as stack:
        statuses = [await stack.enter_async_context(NetworkStatus(p)) for p in plans]
        live: Live | Progress = (
            Live(console=console, refresh_per_second=2)
            if console.is_terminal
            else Progress(console, "waiting for key on every link")
        )
        turn = itertools.cycle(pairs)
        asking: asyncio.Task[None] | None = None
        with live:
            while not stop.is_set():
                elapsed = time.monotonic() - started
                for plan, status in zip(plans, statuses, strict=True):
                    snapshots[plan.name] = await status.snapshot()
                ready = all(s.every_link_has_key for s in snapshots.values())
                if ready and (asking is None or asking.done()):
                    asking = asyncio.create_task(_ask(next(turn), plan_of))
                crossed = sum(pair.ok for pair in pairs)
                title = (
                    f"{len(plans)} domains, {elapsed:.0f} s: {crossed} keys matched across borders"
                )
                if isinstance(live, Live):
                    parts: list[Table] = []
                    for plan in plans:
                        rows = rows_from_snapshot(plan, snapshots[plan.name])
                        parts.append(links_table(rows, title=f"{plan.name}: links"))
                        if plan.domain is not None and plan.domain.borders:
                            parts.append(borders_table(plan, snapshots[plan.name]))
                    parts.append(_pairs_table(pairs, domain_of))
                    live.update(Group(title, *parts))
                else:
                    live.update(title)
                if elapsed >= duration:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        if asking is not None:
            await asking
        for plan, status in zip(plans, statuses, strict=True):
            snapshots[plan.name] = await status.snapshot()
            comparisons = [await status.compare_stores(link) for link in snapshots[plan.name].links]
            if not all(c.match for c in comparisons):
                raise QkdnetError(f"{plan.name}: the two ends of a link hold different key")
    return snapshots


def run_federation_demo(
    example: str, duration: float, state_dir: Path | None, console: Console
) -> int:
    """Deploy `example` (a topology with domains), relay keys across its borders for
    `duration` seconds (or until Ctrl-C), tear everything down."""
    topology = load_topology(bundled_example(example), check_workable=True)
    started: list[NetworkPlan] = []
    registry = Registry()
    for name in _prerequisites(topology):
        if registry.get(name) is not None:
            continue  # deployed already: used as it is, left as it is
        if name not in bundled_examples():
            console.print(f"{example} draws on deployment {name}: deploy it first")
            return 2
        where = state_dir / name if state_dir is not None else None
        plan = NetworkPlan.build(load_topology(bundled_example(name)), where)
        with Progress(console, f"deploying {name}, which the external-KME links draw on"):
            runtime_for(plan).deploy()
        started.append(plan)
        console.print(f"[green]✓[/] {name} up ({len(plan.nodes)} nodes, {plan.network_cidr})")
    plans: list[NetworkPlan] = []
    try:
        plans = list(plan_domains(topology, state_dir=state_dir).values())
        _trust_peers(plans, [])
        for plan in plans:
            runtime = runtime_for(plan)
            if runtime.inspect().running:
                runtime.destroy()
            assert plan.domain is not None
            with Progress(console, f"deploying domain {plan.domain.domain}"):
                runtime.deploy()
            started.append(plan)
            console.print(
                f"[green]✓[/] domain {plan.domain.domain}: {plan.name}, {len(plan.nodes)} "
                f"nodes in {plan.network_cidr}, its own CA and broker"
            )
        domain_of = {
            sae: plan.domain.domain
            for plan in plans
            if plan.domain is not None
            for node in plan.nodes.values()
            for sae in node.saes
        }
        pairs = [
            _Pair(master, slave)
            for master in domain_of
            for slave in domain_of
            if domain_of[master] != domain_of[slave]
        ]
        stop = asyncio.Event()

        async def main() -> dict[str, NetworkSnapshot]:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            return await _show(plans, pairs, domain_of, console, duration, stop)

        snapshots = asyncio.run(main())
    finally:
        for plan in reversed(started):
            with Progress(console, f"destroying {plan.name}"):
                runtime_for(plan).destroy()
    console.print()
    console.print(_pairs_table(pairs, domain_of))
    for plan in plans:
        if plan.domain is not None and plan.domain.borders:
            console.print(borders_table(plan, snapshots[plan.name]))
    latencies = sorted(ms for pair in pairs for ms in pair.latencies)
    if latencies:
        console.print(
            f"{sum(p.ok for p in pairs)} keys matched across borders; enc_keys + dec_keys "
            f"p50 {latencies[len(latencies) // 2]:.0f} ms over {len(latencies)} requests"
        )
    console.print("[green]✓[/] torn down: no node, broker or state left behind")
    every_pair = all(pair.ok > 0 for pair in pairs)
    if not every_pair:
        missing = [f"{p.master} → {p.slave}" for p in pairs if p.ok == 0]
        console.print(f"[red]✗[/] no key crossed for: {', '.join(missing)}")
    return 0 if every_pair and not any(p.last_error == "MISMATCH" for p in pairs) else 1
