"""`qkdnet key stream`: a key stream through a deployed network's ETSI GS QKD 004 API, as two
applications use one: OPEN_CONNECT as --from (status 1 and a KSID), OPEN_CONNECT with that KSID
as --to (status 0), GET_KEY of the same chunks at both ends, a check that they match, CLOSE.
A fingerprint of each chunk is shown, never the chunk unless --json asks for it."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from qkdnet.node.edge.etsi004_client import StreamQos, StreamStatus
from qkdnet.node.errors import ConfigError

from .console_output import Progress
from .network_commands import NetworkOptions, deploy_command, load_plans, require_deployed

if TYPE_CHECKING:
    from qkdnet.node.edge.etsi004_client import KeyStreamClient

    from ..plan.network_plan import NetworkPlan

__all__ = ["key_stream"]

_EXPLAINED = {
    StreamStatus.PEER_NOT_CONNECTED: "the peer application has not opened the stream",
    StreamStatus.INSUFFICIENT_KEY: "that chunk is not due at the stream's rate within the timeout",
    StreamStatus.NOT_CONNECTED: "no such open stream",
    StreamStatus.NO_QKD_CONNECTION: "no route to the peer's KME, or no such SAE",
    StreamStatus.KSID_IN_USE: "the KSID is in use",
    StreamStatus.TIMEOUT: "the call's timeout elapsed",
    StreamStatus.QOS_NOT_MET: "the QoS cannot be met",
    StreamStatus.METADATA_TOO_SMALL: "the metadata buffer is too small",
}


class _StreamFailed(Exception):
    def __init__(self, call: str, status: StreamStatus, detail: str = "") -> None:
        self.call, self.status = call, status
        text = f"{call} answered {status.value} ({_EXPLAINED.get(status, status.name)})"
        super().__init__(f"{text}: {detail}" if detail else text)


@dataclass(frozen=True)
class _Run:
    ksid: uuid.UUID
    qos: StreamQos
    chunks: dict[str, list[bytes]]  # SAE -> chunk i
    seconds: dict[str, float]  # SAE -> from the stream's connection to its last chunk
    open_ms: float
    join_ms: float


async def _read(
    client: KeyStreamClient, ksid: uuid.UUID, count: int, connected: float
) -> tuple[list[bytes], float]:
    """Chunks 0 .. count-1, and the seconds from the stream's connection to the last."""
    chunks: list[bytes] = []
    for index in range(count):
        got = await client.get_key(ksid, index)
        if got.status is not StreamStatus.SUCCESS:
            raise _StreamFailed(f"GET_KEY of chunk {index}", got.status)
        chunks.append(got.key)
    return chunks, time.perf_counter() - connected


async def _stream(
    plan_of: dict[str, NetworkPlan], source: str, destination: str, qos: StreamQos, count: int
) -> _Run:
    from ..client.stream_client import stream_client_for

    async with (
        stream_client_for(plan_of[source], source) as a,
        stream_client_for(plan_of[destination], destination) as b,
    ):
        started = time.perf_counter()
        opened = await a.open_connect(f"qkd://{source}", f"qkd://{destination}", qos)
        open_ms = (time.perf_counter() - started) * 1e3
        if opened.status is StreamStatus.QOS_NOT_MET and opened.qos is not None:
            raise _StreamFailed(
                "OPEN_CONNECT",
                opened.status,
                f"the route can carry --rate {opened.qos.max_bps} bit/s now",
            )
        if opened.status is not StreamStatus.PEER_NOT_CONNECTED or opened.ksid is None:
            raise _StreamFailed("OPEN_CONNECT", opened.status)
        ksid = opened.ksid
        try:
            started = time.perf_counter()
            joined = await b.open_connect(f"qkd://{destination}", f"qkd://{source}", qos, ksid)
            connected = time.perf_counter()
            join_ms = (connected - started) * 1e3
            if joined.status is not StreamStatus.SUCCESS:
                raise _StreamFailed(f"OPEN_CONNECT as {destination}", joined.status)
            (at_a, span_a), (at_b, span_b) = await asyncio.gather(
                _read(a, ksid, count, connected), _read(b, ksid, count, connected)
            )
        finally:
            await a.close(ksid)
        return _Run(
            ksid,
            qos,
            {source: at_a, destination: at_b},
            {source: span_a, destination: span_b},
            open_ms,
            join_ms,
        )


def key_stream(
    opts: NetworkOptions,
    console: Console,
    *,
    source: str,
    destination: str,
    chunks: int,
    chunk_size: int,
    rate: int,
    timeout_ms: int,
    as_json: bool,
) -> int:
    """Open a stream from `source` to `destination`, read `chunks` chunks at both ends; 0 when
    they match."""
    from qkdnet.node.edge.etsi004_client import StreamApiError

    from ..client.key_client import fingerprint

    if chunks < 1:
        raise ConfigError(f"--chunks: must be at least 1, not {chunks}")
    if not 1 <= chunk_size <= 4096:
        raise ConfigError(f"--chunk-size: 1 to 4096 bytes, not {chunk_size}")
    if rate < 1:
        raise ConfigError(f"--rate: must be at least 1 bit/s, not {rate}")
    if source == destination:
        raise ConfigError(f"--to: {destination} is --from itself")
    plans = load_plans(opts)
    plan_of: dict[str, NetworkPlan] = {}
    for option, sae in (("--from", source), ("--to", destination)):
        serving = [p for p in plans if any(sae in n.saes for n in p.nodes.values())]
        if not serving:
            known = [s for p in plans for n in p.nodes.values() for s in n.saes]
            raise ConfigError(f"{option}: no SAE {sae!r} (SAEs: {', '.join(known)})")
        plan_of[sae] = serving[0]
    if plan_of[source] is not plan_of[destination]:
        raise ConfigError("--to: a key stream stays within one domain (020 carries no streams)")
    require_deployed(plan_of[source], [source, destination], deploy_command(opts))
    qos = StreamQos(key_chunk_size=chunk_size, max_bps=rate, timeout=timeout_ms, ttl=3600)
    try:
        with Progress(console, f"a key stream {source} → {destination}, {chunks} chunk(s)"):
            run = asyncio.run(_stream(plan_of, source, destination, qos, chunks))
    except (_StreamFailed, StreamApiError) as exc:
        console.print(f"[red]✗[/] {exc}", highlight=False)
        return 1
    at_source, at_destination = run.chunks[source], run.chunks[destination]
    matches = [x == y for x, y in zip(at_source, at_destination, strict=True)]
    rates = {
        sae: (chunks - 1) * 8 * chunk_size / span if chunks > 1 and span > 0 else None
        for sae, span in run.seconds.items()
    }
    if as_json:
        out: dict[str, Any] = {
            "ksid": str(run.ksid),
            "from": source,
            "to": destination,
            "qos": {"key_chunk_size": chunk_size, "max_bps": rate, "timeout": timeout_ms},
            "open_connect_ms": round(run.open_ms, 3),
            "join_ms": round(run.join_ms, 3),
            "measured_bps": {sae: round(r, 1) if r else None for sae, r in rates.items()},
            "chunks": [
                {"index": i, "key": base64.b64encode(key).decode(), "match": matches[i]}
                for i, key in enumerate(at_source)
            ],
        }
        print(json.dumps(out, indent=2))
    else:
        table = Table(
            title=f"{source} → {destination}: {chunk_size}-byte chunks at {rate} bit/s",
            title_justify="left",
        )
        table.add_column("index", justify="right")
        table.add_column("SHA-256", no_wrap=True)
        table.add_column("match", no_wrap=True)
        for index, key in enumerate(at_source):
            table.add_row(
                str(index),
                fingerprint(key),
                "[green]match[/]" if matches[index] else "[red]MISMATCH[/]",
            )
        console.print(table)
        console.print(f"Key_stream_ID {run.ksid}", highlight=False)
        console.print(
            f"OPEN_CONNECT {run.open_ms:.1f} ms (status 1), the peer's {run.join_ms:.1f} ms "
            "(status 0)",
            highlight=False,
        )
        measured = ", ".join(f"{sae} {r:.0f} bit/s" for sae, r in rates.items() if r)
        if measured:
            console.print(f"measured: {measured} (asked {rate})", highlight=False)
    if not all(matches):
        console.print("[red]✗[/] the two ends' chunks differ")
    return 0 if all(matches) else 1
