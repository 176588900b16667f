"""`qkdnet key get`: keys through a deployed network's ETSI GS QKD 014 API, as applications
get them: enc_keys at the master's node, dec_keys at each slave's, and a check that the halves
match (a fingerprint of each key is shown, never the key unless --json asks for it)."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from qkdnet.node.errors import ConfigError

from ..plan.network_plan import NetworkPlan
from .console_output import Progress
from .network_commands import NetworkOptions, deploy_command, load_plans, require_deployed

if TYPE_CHECKING:
    from ..client.key_client import KeyContainer


__all__ = ["key_get"]


@dataclass(frozen=True)
class _KeyRound:
    issued: KeyContainer
    fetched: dict[str, dict[str, bytes]]  # slave -> key ID -> key
    enc_keys_ms: float


def _key_round(
    plan_of: dict[str, NetworkPlan],
    master: str,
    slaves: list[str],
    number: int,
    size: int,
    multipath: bool,
    hybrid: bool = False,
) -> _KeyRound:
    from ..client.key_client import BlockingKeyApiClient

    with BlockingKeyApiClient.for_sae(plan_of[master], master) as client:
        client.status(slaves[0])  # checks the pair and opens the TLS connection
        started = time.perf_counter()
        issued = client.enc_keys(
            slaves[0],
            number,
            size,
            additional_slaves=slaves[1:],
            extension_mandatory=[
                *([{"qkdnet_multipath": True}] if multipath else []),
                *([{"qkdnet_hybrid": True}] if hybrid else []),
            ]
            or None,
        )
        enc_keys_ms = (time.perf_counter() - started) * 1e3
    fetched: dict[str, dict[str, bytes]] = {}
    ids = [key.key_id for key in issued.keys]
    for slave in slaves:
        with BlockingKeyApiClient.for_sae(plan_of[slave], slave) as client:
            answer = client.dec_keys(master, ids)
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
    hybrid: bool = False,
) -> int:
    """enc_keys as `master`, dec_keys as every slave; 0 when every key matches everywhere."""
    from ..client.key_client import fingerprint

    if number < 1:
        raise ConfigError(f"--number: must be at least 1, not {number}")
    if size < 8 or size % 8:
        raise ConfigError(f"--size: must be a positive multiple of 8 bits, not {size}")
    if master in slaves:
        raise ConfigError(f"--to: {master} is the master (--from) itself")
    if len(set(slaves)) != len(slaves):
        raise ConfigError("--to: an SAE is named twice")
    if hybrid and len(slaves) > 1:
        raise ConfigError("--hybrid: hybrid keys are for one slave SAE (one --to)")
    plans = load_plans(opts)
    plan_of: dict[str, NetworkPlan] = {}
    for option, sae in [("--from", master), *(("--to", slave) for slave in slaves)]:
        serving = [plan for plan in plans if any(sae in n.saes for n in plan.nodes.values())]
        if not serving:  # the error names the SAEs there are
            try:
                plans[0].node_of_sae(sae)
            except ConfigError as exc:
                known = [s for p in plans for n in p.nodes.values() for s in n.saes]
                raise ConfigError(
                    f"{option}: {exc}"
                    if len(plans) == 1
                    else f"{option}: no SAE {sae!r} in {opts.topology} (SAEs: {', '.join(known)})"
                ) from None
        plan_of[sae] = serving[0]
    hint = deploy_command(opts) if opts.topology is not None else ""
    for plan in {id(p): p for p in plan_of.values()}.values():
        require_deployed(plan, [s for s, p in plan_of.items() if p is plan], hint)
    plan = plan_of[master]
    with Progress(console, f"enc_keys as {master}, dec_keys as {', '.join(slaves)}"):
        result = _key_round(plan_of, master, slaves, number, size, multipath, hybrid)
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
                    "hybrid": extension.get("qkdnet_hybrid"),
                },
                indent=2,
            )
        )
    else:
        master_node = plan.node_of_sae(master).node_id
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
        combined = extension.get("qkdnet_hybrid")
        if isinstance(combined, dict):
            console.print(
                f"hybrid: each key combines the QKD key with an {combined.get('kem')} secret "
                f"between the two KMEs ({combined.get('kdf')}, {combined.get('combiner')})",
                highlight=False,
            )
    if len(result.issued.keys) != number:
        console.print(f"[red]✗[/] asked for {number} key(s), got {len(result.issued.keys)}")
    elif not ok:
        console.print("[red]✗[/] the slaves' keys differ from the master's")
    return 0 if ok else 1
