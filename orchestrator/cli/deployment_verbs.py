"""The deployment verbs: deploy, ca, destroy, inspect, start, stop, kill, restart, watch, graph.

Their parser and dispatch; the work is in `network_commands.py`, imported when a verb runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from qkdnet.node.errors import ConfigError

from .arguments import Subcommands, add_targets, network_options, network_verb, targets

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["LIFECYCLE_VERBS", "add_commands"]

LIFECYCLE_VERBS = {
    "start": "start stopped nodes",
    "stop": "stop nodes gracefully",
    "kill": "kill nodes at once (SIGKILL), as a crash would",
    "restart": "stop and start nodes",
}


def add_commands(commands: Subcommands) -> None:
    deploy = network_verb(
        commands, "deploy", "start every node of a topology and its MQTT broker", by_name=False
    )
    deploy.add_argument("--broker", default=None, help="external MQTT broker, mqtt://host:port")
    deploy.add_argument(
        "--subnet",
        default=None,
        metavar="CIDR",
        help="the deployment's address block: 127.X.0.0/16 (process) or 10.X.0.0/16 (docker); "
        "default: the topology's subnet, else the lowest block no other deployment holds",
    )
    deploy.add_argument(
        "--no-wait", action="store_true", help="return once nodes are up, before key is distilled"
    )
    deploy.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (120)")
    deploy.add_argument("--json", action="store_true", help="print the deployment as JSON")
    deploy.add_argument(
        "--peer-ca",
        action="append",
        default=[],
        metavar="[DOMAIN=]FILE",
        help="with --domain: the CA certificate of a peer domain (its trust bundle, as `qkdnet "
        "ca` writes it), for the borders joined to that domain; repeatable",
    )
    ca = network_verb(
        commands,
        "ca",
        "write a deployment's (a domain's) CA certificate, creating its PKI if need be: the "
        "trust bundle a peer domain deployed apart needs (deploy --peer-ca)",
        by_name=False,
    )
    ca.add_argument(
        "-o", "--output", type=Path, default=None, help="write it to FILE (default: stdout)"
    )
    destroy = network_verb(
        commands, "destroy", "stop every process of a deployment and remove its state"
    )
    destroy.add_argument("--keep-state", action="store_true", help="keep PKI, key stores and logs")
    inspect = network_verb(
        commands,
        "inspect",
        "nodes with addresses and state, links with live figures; --all: every deployment",
        required=False,
    )
    inspect.add_argument(
        "-a",
        "--all",
        action="store_true",
        help="every deployment on this machine: name, runtime, nodes up, addresses, age",
    )
    inspect.add_argument("--json", action="store_true", help="print JSON")
    for action, text in LIFECYCLE_VERBS.items():
        add_targets(network_verb(commands, action, text))
    watch = network_verb(
        commands,
        "watch",
        "a live table of the links, node states and relay events, fed by MQTT telemetry; "
        "to a pipe or file, one line per update",
    )
    watch.add_argument("--duration", type=float, default=None, help="stop after these seconds")
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    graph = network_verb(
        commands, "graph", "draw the topology with link lengths and live key rates"
    )
    graph.add_argument(
        "-o", "--output", type=Path, default=None, help="image file: .png, .svg or .pdf"
    )
    for name in ("deploy", "ca", "destroy", "inspect", *LIFECYCLE_VERBS, "watch", "graph"):
        commands.choices[name].set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    from . import network_commands as verbs

    if args.command == "inspect" and args.all:
        if args.topology is not None or args.name is not None:
            raise ConfigError("--all: lists every deployment; give no -t or --name with it")
        return verbs.inspect_all(console, as_json=args.json)
    if args.topology is None and args.name is None:
        raise ConfigError("name the deployment: -t FILE or --name NAME (or --all)")
    opts = network_options(args)
    if args.command == "deploy":
        if args.broker is not None and not args.broker.startswith("mqtt://"):
            raise ConfigError("--broker: expected mqtt://host:port")
        return verbs.deploy(
            opts,
            console,
            wait_key=not args.no_wait,
            timeout=args.timeout,
            as_json=args.json,
            peer_cas=args.peer_ca,
        )
    if args.command == "ca":
        return verbs.export_ca(opts, console, output=args.output)
    if args.command == "destroy":
        return verbs.destroy(opts, console, keep_state=args.keep_state)
    if args.command == "inspect":
        return verbs.inspect(opts, console, as_json=args.json)
    if args.command == "watch":
        return verbs.watch(opts, console, duration=args.duration, as_json=args.json)
    if args.command == "graph":
        return verbs.graph(opts, console, output=args.output)
    return verbs.lifecycle(opts, console, args.command, targets(args))
