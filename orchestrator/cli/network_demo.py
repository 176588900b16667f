"""`qkdnet demo`: deploy a bundled example on local processes, show it distilling key, tear down.

The example is deployed under its usual state directory, so a demo that was killed can still be
cleaned up with `qkdnet destroy --name <example>` (and the next demo does that itself first).
At the end every link's two stores are compared through keyed digests.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from ..client.network_status import NetworkStatus
from ..plan.network_plan import NetworkPlan
from ..plan.topology import load_topology
from ..runtime import runtime_for
from .console_output import Progress
from .network_view import format_rate, links_table, rows_from_snapshot

__all__ = ["bundled_example", "bundled_examples", "run_demo"]


def bundled_examples() -> list[str]:
    """Names of the example topologies shipped with qkdnet."""
    files = resources.files("qkdnet.examples").iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def bundled_example(name: str) -> Path:
    """The path of a bundled example topology."""
    return Path(str(resources.files("qkdnet.examples") / f"{name}.yaml"))


async def _show(
    plan: NetworkPlan, console: Console, duration: float, stop: asyncio.Event
) -> dict[str, Any]:
    started = time.monotonic()
    first_key: dict[str, float] = {}
    async with NetworkStatus(plan) as status:
        # Off a terminal a live table would show nothing until the end: lines on stderr instead.
        live: Live | Progress = (
            Live(console=console, refresh_per_second=2)
            if console.is_terminal
            else Progress(console, f"{plan.name}: waiting for the first frames")
        )
        with live:
            while not stop.is_set():
                elapsed = time.monotonic() - started
                snapshot = await status.snapshot()
                for link in snapshot.links:
                    if link.has_key:
                        first_key.setdefault(link.link_id, elapsed)
                title = (
                    f"qkdnet demo: {plan.name}, {len(plan.nodes)} nodes, {len(plan.links)} links"
                    f" - {elapsed:.0f} s, {len(first_key)}/{len(plan.links)} links with key"
                )
                if isinstance(live, Live):
                    live.update(links_table(rows_from_snapshot(plan, snapshot), title=title))
                else:
                    live.update(title)
                if elapsed >= duration:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        final = await status.snapshot()
        comparisons = {link.link_id: await status.compare_stores(link) for link in final.links}
    return {"snapshot": final, "first_key": first_key, "comparisons": comparisons}


def run_demo(example: str, duration: float, state_dir: Path | None, console: Console) -> int:
    """Deploy `example`, show it for `duration` seconds (or until Ctrl-C), destroy it (an
    example with domains: `federation_demo`)."""
    if example == "wireguard":
        from .wireguard_demo import run_wireguard_demo

        return run_wireguard_demo(duration, state_dir, console)
    topology = load_topology(bundled_example(example))
    if topology.domains:
        from .federation_demo import run_federation_demo

        return run_federation_demo(example, duration, state_dir, console)
    plan = NetworkPlan.build(topology, state_dir)
    runtime = runtime_for(plan)
    if runtime.inspect().running:
        console.print(f"an earlier {plan.name} deployment is still running: destroying it first")
        runtime.destroy()
    start = time.monotonic()
    with Progress(console, f"deploying {plan.name}: PKI, broker, {len(plan.nodes)} nodes"):
        runtime.deploy()
    console.print(
        f"[green]✓[/] {plan.name}: {len(plan.nodes)} nodes up in {time.monotonic() - start:.1f} s"
        f" in {plan.network_cidr}, telemetry on mqtts://{plan.broker_address}"
    )
    stop = asyncio.Event()

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await _show(plan, console, duration, stop)

    try:
        result = asyncio.run(main())
    finally:
        with Progress(console, f"destroying {plan.name}"):
            runtime.destroy()
    table = Table(title="every link, end to end", title_justify="left")
    for column in ("link", "first key after", "stored (both ends)", "secret rate", "stores"):
        table.add_column(column)
    ok = True
    rows = {row.link: row for row in rows_from_snapshot(plan, result["snapshot"])}
    for link_id, comparison in result["comparisons"].items():
        first = result["first_key"].get(link_id)
        ok = ok and first is not None and comparison.match and comparison.common_blocks > 0
        table.add_row(
            link_id,
            "-" if first is None else f"{first:.0f} s",
            f"{comparison.common_bits:,} bits in {comparison.common_blocks} blocks",
            format_rate(rows[link_id].secret_rate_bps),
            "[green]identical[/]" if comparison.match else f"[red]{comparison.detail}[/]",
        )
    console.print()
    console.print(Group(table))
    console.print("[green]✓[/] torn down: no node, broker or state left behind")
    return 0 if ok else 1
