"""`qkdnet link-demo`: two node processes on loopback distilling key over one link, shown live.

Builds a throw-away PKI and pre-shared secret, writes both node configurations, starts the two
agents as child processes (they die with the demo, whatever kills it), polls their status over
NodeControl and draws measured figures next to the model's prediction. At the end it compares
both key stores through keyed digests and stops the nodes; `--json` prints one final object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from qkdnet.node.config import (
    ChannelConfig,
    LinkConfig,
    NodeConfig,
    ProcessingConfig,
    TlsConfig,
    node_config_yaml,
)
from qkdnet.node.file_modes import private_dir, write_private
from qkdnet.node.identity import CONTROLLER_NAME, Role
from qkdnet.node.link_names import link_id_for
from qkdnet.v1 import control_pb2

from ..client.controller import NodeClient, compare_link_stores
from ..plan.pki import CertificateAuthority, write_psk
from ..runtime.node_process import NodeProcess

__all__ = ["RECEIVER", "TRANSMITTER", "LinkDemoOptions", "LinkPair", "run_link_demo"]

TRANSMITTER, RECEIVER = "alice", "bob"


@dataclass(frozen=True)
class LinkDemoOptions:
    """What the user asked for on the command line (already validated)."""

    channel: ChannelConfig
    processing: ProcessingConfig
    duration: float
    json: bool
    state_dir: Path | None = None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _workdir(state_dir: Path | None) -> Iterator[Path]:
    if state_dir is not None:
        yield private_dir(state_dir)
        return
    path = Path(tempfile.mkdtemp(prefix="qkdnet-link-demo-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class LinkPair:
    """Two node processes (`alice` transmits, `bob` receives) with one link, under `root`."""

    def __init__(self, root: Path, channel: ChannelConfig, processing: ProcessingConfig) -> None:
        self.root = root
        self.link_id = link_id_for(TRANSMITTER, RECEIVER)
        ca = CertificateAuthority(root / "pki", "qkdnet link-demo CA", "link-demo.qkdnet")
        self.controller_paths = ca.issue_once(
            Role.CONTROLLER, CONTROLLER_NAME, root / "pki" / "orchestrator"
        )
        psk = root / "pki" / "links" / f"{self.link_id}.psk"
        if not psk.exists():
            write_psk(psk)
        ports = {TRANSMITTER: free_port(), RECEIVER: free_port()}
        self.nodes: dict[str, NodeProcess] = {}
        for node, peer in ((TRANSMITTER, RECEIVER), (RECEIVER, TRANSMITTER)):
            paths = ca.issue_once(Role.NODE, node, root / "pki" / "nodes" / node)
            link = LinkConfig(
                peer=peer,
                psk_file=psk,
                channel=channel,
                processing=processing,
                address=f"127.0.0.1:{ports[peer]}" if node == TRANSMITTER else None,
            )
            config = NodeConfig(
                node_id=node,
                listen=f"127.0.0.1:{ports[node]}",
                state_dir=root / "nodes" / node,
                tls=TlsConfig(ca=paths.ca, cert=paths.cert, key=paths.key),
                links=[link],
            )
            path = root / "nodes" / f"{node}.yaml"
            write_private(path, node_config_yaml(config))
            self.nodes[node] = NodeProcess(
                node, path, root / "nodes" / node, root / "logs" / f"{node}.log"
            )
        self.clients: dict[str, NodeClient] = {}

    def store_path(self, node: str) -> Path:
        return self.root / "nodes" / node / "links" / f"{self.link_id}.sqlite"

    async def start(self, node: str | None = None) -> None:
        """Start one node (or both, receiver first) and connect to its NodeControl."""
        for name in [node] if node else [RECEIVER, TRANSMITTER]:
            self.nodes[name].start(tied_to_parent=True)
            address = await asyncio.to_thread(self.nodes[name].wait_ready)
            old = self.clients.pop(name, None)
            if old is not None:
                await old.close()
            self.clients[name] = NodeClient(name, address, self.controller_paths)

    async def stop(self, node: str | None = None) -> None:
        """Stop one node (or both, transmitter first)."""
        for name in [node] if node else [TRANSMITTER, RECEIVER]:
            client = self.clients.pop(name, None)
            if client is not None:
                await client.close()
            await asyncio.to_thread(self.nodes[name].stop)

    async def status(self, node: str = TRANSMITTER) -> control_pb2.LinkStatus:
        return (await self.clients[node].status()).links[0]


def measured_qber(status: control_pb2.LinkStatus) -> float:
    """QBER from the errors reconciliation corrected; from the disclosed sample when no frame
    reached reconciliation (an eavesdropper above the threshold, or beyond the cutoff)."""
    return status.qber if status.reconciled_bits else status.sample_qber


def _rate(bits: int, status: control_pb2.LinkStatus) -> float:
    return bits / status.emulated_seconds if status.emulated_seconds > 0 else 0.0


def _table(status: control_pb2.LinkStatus, opts: LinkDemoOptions, elapsed: float) -> Table:
    ch = opts.channel
    title = (
        f"qkdnet link-demo: {ch.length_km:g} km, {ch.pulse_rate_hz / 1e6:g} MHz, "
        f"speed-up x{opts.processing.speedup:g}"
        + (f", eavesdropper on {ch.eavesdrop_fraction:.0%}" if ch.eavesdrop_fraction else "")
        + ("" if ch.decoy else ", no decoys (GLLP)")
        + f" - {elapsed:.0f} s"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("figure")
    table.add_column("measured", justify="right")
    table.add_column("model", justify="right")
    table.add_row("QBER", f"{measured_qber(status):.2%}", f"{status.model_qber:.2%}")
    table.add_row(
        "sifted key rate",
        f"{_rate(status.sifted_bits, status):,.0f} bit/s",
        f"{status.model_sifted_rate_bps:,.0f} bit/s",
    )
    table.add_row(
        "secret key rate",
        f"{_rate(status.secret_bits + status.auth_bits, status):,.0f} bit/s",
        f"{status.model_secret_rate_bps:,.0f} bit/s",
    )
    table.add_row(
        "secret bits per pulse",
        f"{status.secret_fraction_per_pulse:.3e}",
        f"{status.model_secret_fraction_per_pulse:.3e}",
    )
    table.add_row("reconciliation efficiency f", f"{status.reconciliation_efficiency:.3f}", "")
    aborted = ", ".join(f"{k} {v}" for k, v in sorted(status.aborts_by_reason.items()))
    table.add_row(
        "frames stored / aborted",
        f"{status.frames_ok} / {status.frames_aborted}" + (f" ({aborted})" if aborted else ""),
        "",
    )
    table.add_row("key in store", f"{status.store_bits:,} bits", "")
    table.add_row("wall-clock secret rate", f"{status.secret_rate_bps:,.0f} bit/s", "")
    table.add_row(
        "emulated time", f"{status.emulated_seconds:.2f} s in {elapsed:.0f} s of wall time", ""
    )
    table.caption = "rates per emulated second; the link runs at the speed-up above"
    return table


def _summary(
    status: control_pb2.LinkStatus, opts: LinkDemoOptions, keys_match: bool, elapsed: float
) -> dict[str, Any]:
    return {
        "length_km": opts.channel.length_km,
        "eavesdrop": opts.channel.eavesdrop_fraction,
        "decoy": opts.channel.decoy,
        "speedup": opts.processing.speedup,
        "qber": measured_qber(status),
        "sample_qber": status.sample_qber,
        "model_qber": status.model_qber,
        "pulses": status.pulses,
        "detections": status.detections,
        "sifted_bits": status.sifted_bits,
        "reconciled_bits": status.reconciled_bits,
        "disclosed_bits": status.disclosed_bits,
        "secret_bits": status.secret_bits,
        "auth_bits": status.auth_bits,
        "secret_fraction_per_pulse": status.secret_fraction_per_pulse,
        "net_secret_fraction_per_pulse": status.secret_bits / status.pulses if status.pulses else 0,
        "model_secret_fraction_per_pulse": status.model_secret_fraction_per_pulse,
        "secret_rate_bps": _rate(status.secret_bits + status.auth_bits, status),
        "model_secret_rate_bps": status.model_secret_rate_bps,
        "reconciliation_efficiency": status.reconciliation_efficiency,
        "frames_ok": status.frames_ok,
        "frames_aborted": status.frames_aborted,
        "aborts": dict(status.aborts_by_reason),
        "rejected_messages": dict(status.rejected_messages),
        "store_bits": status.store_bits,
        "emulated_seconds": status.emulated_seconds,
        "elapsed_seconds": elapsed,
        "keys_match": keys_match,
    }


async def _run(opts: LinkDemoOptions, root: Path, console: Console) -> dict[str, Any]:
    pair = LinkPair(root, opts.channel, opts.processing)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await pair.start()
        started = time.monotonic()
        status = control_pb2.LinkStatus()
        live = Live(console=console, auto_refresh=False) if console.is_terminal else None
        last_line = 0.0
        with live if live is not None else contextlib.nullcontext():
            while not stop.is_set():
                elapsed = time.monotonic() - started
                status = await pair.status()
                if live is not None:
                    live.update(_table(status, opts, elapsed), refresh=True)
                elif not opts.json and elapsed - last_line >= 5:
                    last_line = elapsed
                    console.print(
                        f"[{elapsed:5.0f} s] QBER {measured_qber(status):.2%} "
                        f"(model {status.model_qber:.2%})"
                        f"  secret {status.secret_bits:,} bits, "
                        f"{status.secret_fraction_per_pulse:.3e}/pulse "
                        f"(model {status.model_secret_fraction_per_pulse:.3e})"
                        f"  frames {status.frames_ok} ok / {status.frames_aborted} aborted"
                    )
                if elapsed >= opts.duration:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
        elapsed = time.monotonic() - started
        status = await pair.status()
        comparison = await compare_link_stores(
            pair.clients[TRANSMITTER], pair.clients[RECEIVER], pair.link_id
        )
        if not opts.json and not console.is_terminal:
            console.print(_table(status, opts, elapsed))
        return _summary(status, opts, comparison.match, elapsed)
    finally:
        await pair.stop()


def run_link_demo(opts: LinkDemoOptions, console: Console) -> dict[str, Any]:
    """Run the demo to completion (or Ctrl-C) and return the final figures."""
    with _workdir(opts.state_dir) as root:
        return asyncio.run(_run(opts, root, console))


def print_summary(summary: dict[str, Any], as_json: bool, console: Console) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return
    verdict = "identical" if summary["keys_match"] else "DIFFERENT"
    console.print(
        f"{summary['secret_bits']:,} secret bits in {summary['frames_ok']} frames; "
        f"both key stores {verdict}."
    )
