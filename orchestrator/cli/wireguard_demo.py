"""`qkdnet demo --example wireguard`: a real encryptor fed by qkdnet.

Deploys the bundled `wireguard` example on the Docker runtime (two sites' KMEs joined through a
trusted node), then starts beside it two encryptor containers from the node image, each
running `wireguard-go` as one SAE of its site (`qkdnet.orchestrator.client.wireguard_psk`):
both open the same ETSI 004 key stream and set each chunk, one per interval, as WireGuard's
preshared key, and site A's re-handshakes under it. A ping crosses the tunnel all the while.
The demo shows every rotation (the key's fingerprint at both sites, WireGuard's handshake, the
pings answered since the last rotation) and tears everything down; it exits 0 when every
rotation gave both sites the same key and the ping went through in every interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from qkdnet.node.errors import ConfigError
from qkdnet.node.file_modes import private_dir, write_private

from ..client.wireguard_psk import wireguard_keypair
from ..plan.network_plan import STREAM_API_PORT, NetworkPlan
from ..plan.topology import load_topology
from ..runtime import runtime_for
from ..runtime.docker_runtime import DockerRuntime
from .console_output import Progress
from .network_commands import wait_for_key
from .network_demo import bundled_example

__all__ = ["run_wireguard_demo"]

_TUNNEL = {"a": ("10.99.0.1", "10.99.0.2"), "b": ("10.99.0.2", "10.99.0.1")}
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ")


@dataclass
class _Site:
    side: str  # "a" | "b"
    sae: str
    container: Any = None
    events: list[dict[str, Any]] = field(default_factory=list)


def _follow(site: _Site) -> None:
    """Collect the encryptor's JSON lines (until its container ends)."""
    with contextlib.suppress(Exception):
        for raw in site.container.logs(stream=True, follow=True):
            for line in raw.decode(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    site.events.append(json.loads(line))


def _pings(container: Any, seconds: int, replies: list[float]) -> None:
    """Ping the peer's tunnel address every 0.2 s for `seconds`, timestamps of the replies."""
    with contextlib.suppress(Exception):
        _, stream = container.exec_run(
            ["ping", "-D", "-i", "0.2", "-w", str(seconds), _TUNNEL["a"][1]], stream=True
        )
        for raw in stream:
            for line in raw.decode(errors="replace").splitlines():
                match = _REPLY.match(line)
                if match:
                    replies.append(float(match.group(1)))


def run_wireguard_demo(
    duration: float, state_dir: Path | None, console: Console, interval: float = 5.0
) -> int:
    """Deploy, rotate WireGuard's key every `interval` s for `duration` s, tear down."""
    rotations = int(duration // interval)
    if rotations < 3:
        raise ConfigError(f"--duration: at least {3 * interval:g} s (three key rotations)")
    plan = NetworkPlan.build(load_topology(bundled_example("wireguard")), state_dir)
    runtime = runtime_for(plan)
    assert isinstance(runtime, DockerRuntime)
    if runtime.inspect().running:
        console.print(f"an earlier {plan.name} deployment is still running: destroying it first")
        runtime.destroy()
    with Progress(console, f"deploying {plan.name} in containers (images built if needed)"):
        runtime.deploy()
    try:
        return _run(plan, runtime, console, interval, rotations)
    finally:
        with Progress(console, f"destroying {plan.name} and the encryptors"):
            runtime.destroy()


def _run(
    plan: NetworkPlan, runtime: DockerRuntime, console: Console, interval: float, rotations: int
) -> int:
    with Progress(console, f"{plan.name}: waiting for key on every link"):
        asyncio.run(wait_for_key(plan, timeout=180))
    sites = {"a": _Site("a", "encryptor-a"), "b": _Site("b", "encryptor-b")}
    keys = {side: wireguard_keypair() for side in sites}
    secrets = private_dir(plan.state_dir / "wireguard")
    ksid = str(uuid.uuid4())
    for side, site in sites.items():
        peer = "b" if side == "a" else "a"
        write_private(secrets / f"{side}.key", keys[side][0].encode())
        node = plan.node_of_sae(site.sae)
        creds = plan.sae_credentials(site.sae)
        volumes = {
            str(creds.cert): {"bind": "/run/sae/cert.pem", "mode": "ro"},
            str(creds.key): {"bind": "/run/sae/key.pem", "mode": "ro"},
            str(creds.ca): {"bind": "/run/sae/ca.pem", "mode": "ro"},
            str(secrets / f"{side}.key"): {"bind": "/run/wg/private.key", "mode": "ro"},
        }
        command = [
            "-m", "qkdnet.orchestrator.client.wireguard_psk",
            "--sae", site.sae, "--peer-sae", sites[peer].sae,
            "--kme", f"{node.host}:{STREAM_API_PORT}",
            "--ca", "/run/sae/ca.pem", "--cert", "/run/sae/cert.pem", "--key", "/run/sae/key.pem",
            "--ksid", ksid, "--interval", f"{interval:g}", "--rotations", str(rotations),
            "--address", f"{_TUNNEL[side][0]}/24",
            "--peer-endpoint", runtime.application_name(f"encryptor-{peer}"),
            "--peer-allowed-ip", f"{_TUNNEL[side][1]}/32",
            "--peer-public-key", keys[peer][1],
            "--private-key-file", "/run/wg/private.key",
            *(["--initiates"] if side == "a" else []),
        ]  # fmt: skip
        site.container = runtime.run_application(
            f"encryptor-{side}",
            command,
            volumes=volumes,
            cap_add=["NET_ADMIN"],
            devices=["/dev/net/tun:/dev/net/tun"],
        )
    followers = [threading.Thread(target=_follow, args=(s,), daemon=True) for s in sites.values()]
    for thread in followers:
        thread.start()
    deadline = time.monotonic() + 120
    with Progress(console, "encryptors: WireGuard up, the key stream open"):
        while not all(any(e.get("event") == "up" for e in s.events) for s in sites.values()):
            failed = [e for s in sites.values() for e in s.events if e.get("event") == "failed"]
            if failed or time.monotonic() > deadline:
                console.print(f"[red]✗[/] the encryptors did not come up: {failed}")
                return 1
            time.sleep(0.5)
    replies: list[float] = []
    pinger = threading.Thread(
        target=_pings,
        args=(sites["a"].container, int(interval * (rotations + 2)) + 10, replies),
        daemon=True,
    )
    pinger.start()
    console.print(
        f"rotating WireGuard's preshared key every {interval:g} s from ETSI 004 stream {ksid}; "
        f"pinging {_TUNNEL['a'][1]} through the tunnel",
        highlight=False,
    )
    done_by = time.monotonic() + interval * (rotations + 6) + 60
    while time.monotonic() < done_by and not all(
        any(e.get("event") in ("done", "failed") for e in s.events) for s in sites.values()
    ):
        time.sleep(0.5)
    time.sleep(1.0)
    status = _report(console, sites, replies, rotations)
    if status:
        for site in sites.values():
            with contextlib.suppress(Exception):
                tail = site.container.logs(tail=15).decode(errors="replace").strip()
                console.print(f"encryptor {site.side}'s last lines:\n{tail}", highlight=False)
    return status


def _report(console: Console, sites: dict[str, _Site], replies: list[float], rotations: int) -> int:
    rotated = {
        side: {e["rotation"]: e for e in site.events if e.get("event") == "rotated"}
        for side, site in sites.items()
    }
    table = Table(title="WireGuard's preshared key from qkdnet", title_justify="left")
    for column in ("rotation", "site A key", "site B key", "same", "handshake", "pings answered"):
        table.add_column(column)
    ok = True
    previous = 0.0
    for rotation in range(rotations):
        a, b = rotated["a"].get(rotation), rotated["b"].get(rotation)
        same = a is not None and b is not None and a["psk_sha256"] == b["psk_sha256"]
        at = a["at"] if a is not None else None
        until = at if at is not None else previous
        answered = sum(1 for t in replies if previous < t <= until) if rotation else None
        if rotation:
            ok = ok and bool(answered)
        ok = ok and same
        handshake = a.get("latest_handshake", 0) if a is not None else 0
        table.add_row(
            str(rotation),
            a["psk_sha256"] if a else "-",
            b["psk_sha256"] if b else "-",
            "[green]yes[/]" if same else "[red]no[/]",
            time.strftime("%H:%M:%S", time.localtime(handshake)) if handshake else "-",
            "-" if answered is None else str(answered),
        )
        previous = until
    after = sum(1 for t in replies if t > previous)
    console.print(table)
    console.print(
        f"{len(replies)} pings answered in all ({after} after the last rotation); key "
        "fingerprints are SHA-256 prefixes, never the keys",
        highlight=False,
    )
    failures = [e for s in sites.values() for e in s.events if e.get("event") == "failed"]
    if failures:
        console.print(f"[red]✗[/] {failures}")
    ok = ok and not failures and len(rotated["a"]) == rotations
    console.print(
        "[green]✓[/] every rotation gave both sites the same key, and the tunnel carried "
        "traffic across them"
        if ok
        else "[red]✗[/] a rotation failed, or the tunnel carried nothing between two of them"
    )
    return 0 if ok else 1
