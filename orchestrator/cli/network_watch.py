"""`qkdnet watch`: a deployment as its telemetry (MQTT) and its runtime show it, live.

Two sources, because neither tells the whole truth alone: telemetry carries the figures (link
QBER and key rates, store levels, relay events), but a paused or crashed node publishes
nothing, and the broker's "lost" comes only after its keep-alive runs out. So the runtime is
asked too, every second (at most every telemetry period): a paused, stopped or crashed node or
broker shows as such within one period, and every figure shows its age.

On a terminal the view is a table redrawn in place. To a pipe or a file (or with `--json`) it
is one line per update, flushed at once: a telemetry message, or a change of a node's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.live import Live

from ..client.telemetry_watch import TelemetryState, TelemetryWatch
from ..plan.network_plan import NetworkPlan
from ..runtime.seam import BROKER, ComponentState, Runtime
from .network_view import format_rate, relay_text, telemetry_view

__all__ = ["message_line", "watch_deployment"]

_RUNTIME_POLL_S = 1.0


def watch_deployment(
    plan: NetworkPlan,
    runtime: Runtime,
    console: Console,
    *,
    duration: float | None,
    lines: bool,
    as_json: bool,
) -> None:
    """Watch until Ctrl-C or `duration` seconds; `lines`: one line per update."""
    telemetry = TelemetryWatch.for_plan(plan)
    components: dict[str, ComponentState] = {}
    period = min(_RUNTIME_POLL_S, plan.telemetry_interval_s)

    def write(record: dict[str, Any], text: str) -> None:
        if as_json:
            print(json.dumps(record), flush=True)
        else:
            print(text, flush=True)

    def on_change(name: str, old: ComponentState | None, new: ComponentState) -> None:
        if lines:
            label = "broker" if name == BROKER else name
            was = f"{old.describe()} → " if old is not None else ""
            write(
                {
                    "time": _now_iso(),
                    "kind": "runtime",
                    "name": label,
                    "state": new.state,
                    "detail": new.detail,
                    "previous": old.state if old is not None else None,
                },
                f"{_clock()} state {label}: {was}{new.describe()}",
            )

    async def poll_runtime() -> None:
        while True:
            info = await asyncio.to_thread(runtime.inspect)
            parts = dict(info.nodes)
            if info.broker is not None:
                parts[BROKER] = info.broker
            for name, component in parts.items():
                old = components.get(name)
                if old is None or old.describe() != component.describe():
                    components[name] = component
                    on_change(name, old, component)
            await asyncio.sleep(period)

    async def follow(draw: Callable[[TelemetryState], None]) -> None:
        async for state in telemetry.updates():
            draw(state)

    async def run() -> None:
        poller = asyncio.create_task(poll_runtime())
        try:
            if lines:
                seen = {"messages": 0, "refused": 0}

                def draw_line(state: TelemetryState) -> None:
                    if state.messages > seen["messages"] and state.last is not None:
                        kind, data = state.last
                        write(
                            {"time": _now_iso(), "kind": kind, "data": data},
                            message_line(kind, data),
                        )
                    elif state.rejected_total > seen["refused"] and state.last_refused:
                        reason = state.last_refused
                        write(
                            {"time": _now_iso(), "kind": "refused", "reason": reason},
                            f"{_clock()} refused a message: {reason} "
                            f"({state.rejected_total} refused so far)",
                        )
                    seen["messages"] = state.messages
                    seen["refused"] = state.rejected_total

                await follow(draw_line)
            else:

                def render() -> Group:
                    return Group(*telemetry_view(plan, telemetry.state, components))

                with Live(render(), console=console, refresh_per_second=4) as live:

                    async def redraw() -> None:
                        while True:  # ages and runtime states change without messages
                            await asyncio.sleep(1.0)
                            live.update(render())

                    ticker = asyncio.create_task(redraw())
                    try:
                        await follow(lambda _: live.update(render()))
                    finally:
                        ticker.cancel()
        finally:
            poller.cancel()

    with contextlib.suppress(TimeoutError):
        asyncio.run(asyncio.wait_for(run(), duration) if duration else run())


def _clock() -> str:
    return datetime.datetime.now().strftime("%H:%M:%S")


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def _percent(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, int | float) else "-"


def message_line(kind: str, data: dict[str, Any]) -> str:
    """One telemetry message as one line of text (what `watch` writes to a pipe)."""
    clock = _clock()
    if kind == "stats":
        return (
            f"{clock} link {data.get('link')} {data.get('state')} "
            f"frames={data.get('frames_ok', '-')} qber={_percent(data.get('qber'))} "
            f"(model {_percent(data.get('model_qber'))}) "
            f"key={format_rate(data.get('secret_rate_bps'))} "
            f"(model {format_rate(data.get('model_secret_rate_bps'))}) "
            f"store={data.get('store_bits', '-')} bits"
        )
    if kind == "status":
        uptime = data.get("uptime_s")
        up = f" uptime={uptime:.0f} s" if isinstance(uptime, int | float) else ""
        return f"{clock} node {data.get('node')} {data.get('state')}{up}"
    if kind == "store":
        return (
            f"{clock} store {data.get('link')} at {data.get('node')}: "
            f"{data.get('bits', '-')} bits in {data.get('blocks', '-')} blocks"
        )
    if kind == "relay":
        return f"{clock} relay {data.get('node')} {relay_text(data)}"
    details = " ".join(
        f"{key}={value}"
        for key, value in data.items()
        if key not in ("schema", "node", "event", "ts")
    )
    return f"{clock} event {data.get('node')} {data.get('event')} {details}".rstrip()
