"""The `qkdnet` command line.

Exit status: 0 success, 2 user error (bad option, bad file), 1 failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qkdnet.node.errors import ConfigError, QkdnetError

if TYPE_CHECKING:
    from pydantic import ValidationError
    from rich.console import Console

__all__ = ["main"]

_OPTION_OF_FIELD = {
    "length_km": "--length-km",
    "eavesdrop_fraction": "--eavesdrop",
    "speedup": "--speedup",
    "pulse_rate_hz": "--pulse-rate",
    "frame_bits": "--frame-bits",
    "mu": "--mu",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qkdnet",
        description="Emulate a quantum key distribution network.",
        epilog="Exit status: 0 success, 1 failure, 2 user error (bad option, bad file, "
        "nothing deployed under that name).",
    )
    parser.add_argument("--version", action=_VersionAction, help="print qkdnet's version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    node = commands.add_parser("node", help="run a node agent")
    node.add_argument("--config", required=True, type=Path, help="node configuration (YAML)")

    validate = commands.add_parser(
        "validate", help="check a topology file and summarise it (exit 2 when it is wrong)"
    )
    validate.add_argument("-t", "--topology", required=True, type=Path, help="topology file")

    commands.add_parser("schema", help="print the JSON schema of topology files")

    def add_deployment_options(
        verb: argparse.ArgumentParser, *, by_name: bool = True, required: bool = True
    ) -> None:
        which = verb.add_mutually_exclusive_group(required=required)
        which.add_argument("-t", "--topology", type=Path, default=None, help="topology file")
        if by_name:
            which.add_argument(
                "-n",
                "--name",
                default=None,
                help="a deployed network by its name (qkdnet inspect --all lists them)",
            )
        verb.add_argument(
            "--state-dir",
            type=Path,
            default=None,
            help="deployment state (default ~/.local/state/qkdnet/<name>; a deployed "
            "network is found by its name wherever its state is)",
        )

    def network_verb(
        name: str, help: str, *, by_name: bool = True, required: bool = True
    ) -> argparse.ArgumentParser:
        verb = commands.add_parser(name, help=help, description=help)
        add_deployment_options(verb, by_name=by_name, required=required)
        verb.add_argument(
            "--runtime",
            choices=["process", "docker"],
            default=None,
            help="where nodes run: process (local processes) or docker (a container per node; "
            "images from qkdnet image build); default: what the deployment was started with, "
            "else the topology's runtime",
        )
        return verb

    deploy = network_verb(
        "deploy", "start every node of a topology and its MQTT broker", by_name=False
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
    destroy = network_verb("destroy", "stop every process of a deployment and remove its state")
    destroy.add_argument("--keep-state", action="store_true", help="keep PKI, key stores and logs")
    inspect = network_verb(
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
    lifecycle_verbs = {
        "start": "start stopped nodes",
        "stop": "stop nodes gracefully",
        "kill": "kill nodes at once (SIGKILL), as a crash would",
        "restart": "stop and start nodes",
    }
    for action, text in lifecycle_verbs.items():
        _add_targets(network_verb(action, text))
    watch = network_verb(
        "watch",
        "a live table of the links, node states and relay events, fed by MQTT telemetry; "
        "to a pipe or file, one line per update",
    )
    watch.add_argument("--duration", type=float, default=None, help="stop after these seconds")
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    graph = network_verb("graph", "draw the topology with link lengths and live key rates")
    graph.add_argument(
        "-o", "--output", type=Path, default=None, help="image file: .png, .svg or .pdf"
    )

    fault = commands.add_parser(
        "fault",
        help="inject faults into a deployed network: pause, kill, cut links, shape traffic, "
        "change quantum channels, play scenarios",
        description="Inject faults into a deployed network, live, on both runtimes. Cuts, "
        "shaping and channel changes are recorded in the state directory (faults.json) and "
        "re-applied to a node that restarts; fault show lists everything in force, fault reset "
        "undoes it.",
    )
    fault_commands = fault.add_subparsers(dest="fault_command", required=True, metavar="COMMAND")
    node_faults = {
        "pause": "freeze nodes: they keep state and connections but do nothing",
        "unpause": "let paused nodes go on",
        **{a: t for a, t in lifecycle_verbs.items() if a != "start"},
    }
    for action, text in node_faults.items():
        verb = fault_commands.add_parser(action, help=text, description=text)
        add_deployment_options(verb)
        _add_targets(verb)
    fault_cut = fault_commands.add_parser(
        "cut",
        help="cut the link between two nodes",
        description="Cut the link between two neighbouring nodes until qkdnet fault restore: "
        "nothing passes between them, both ways. On docker the kernel drops every packet "
        "between the two containers; on the process runtime the two nodes stop the link (its "
        "state shows cut) and refuse each other's link, relay and routing calls. Routing "
        "withdraws the link and relays go around it.",
    )
    add_deployment_options(fault_cut)
    fault_cut.add_argument("ends", nargs=2, metavar="NODE", help="the link's two nodes")
    fault_restore = fault_commands.add_parser("restore", help="restore a cut link")
    add_deployment_options(fault_restore)
    fault_restore.add_argument("ends", nargs="*", metavar="NODE", help="the link's two nodes")
    fault_restore.add_argument("--all", action="store_true", help="every cut link")
    fault_link = fault_commands.add_parser(
        "link",
        help="change a link's quantum channel live: eavesdropper, extra loss, misalignment",
        description="Change the quantum channel of the link between two nodes, at both ends, "
        "from their next frames on: the QBER and key rate of the link follow, and so do its "
        "model figures (inspect, watch). Each option given replaces that part of the change "
        "in force; --reset returns to the configured channel.",
    )
    add_deployment_options(fault_link)
    fault_link.add_argument("ends", nargs=2, metavar="NODE", help="the link's two nodes")
    fault_link.add_argument(
        "--eavesdrop",
        type=float,
        default=None,
        metavar="P",
        help="intercept-resend eavesdropper on a fraction P of the pulses (replaces the "
        "configured fraction); the QBER rises by P x (1/4 - QBER/2)",
    )
    fault_link.add_argument(
        "--extra-loss-db", type=float, default=None, metavar="DB", help="loss added to the fibre's"
    )
    fault_link.add_argument(
        "--misalignment",
        type=float,
        default=None,
        metavar="E",
        help="optical error probability e_det (a photon hits the wrong detector), replacing "
        "the configured one (3.3%% by default)",
    )
    fault_link.add_argument(
        "--reset", action="store_true", help="start from the configured channel"
    )
    fault_show = fault_commands.add_parser(
        "show",
        help="every fault in force: paused nodes and broker, cut links, shaping, link changes",
    )
    add_deployment_options(fault_show)
    fault_show.add_argument("--json", action="store_true", help="print JSON")
    fault_reset = fault_commands.add_parser(
        "reset",
        help="undo every fault in force (unpause, restore, unshape, reset link channels)",
    )
    add_deployment_options(fault_reset)
    fault_reset.add_argument("--json", action="store_true", help="print what was reset as JSON")
    fault_run = fault_commands.add_parser(
        "run",
        help="play a scenario file: a timed list of faults",
        description="Play a scenario against the deployment. The file is YAML, steps: a "
        "list of {at: SECONDS, action: ACTION, args: {...}} in time order; ACTION is pause, "
        "unpause, stop, start, kill or restart (args nodes: [NODE...], broker: true), cut or "
        "restore (link: [A, B]), shape (node, peer, delay, jitter, loss, rate), unshape (node, "
        "peer), link (link: [A, B] and eavesdrop, extra_loss_db, misalignment, or reset: "
        "true), or reset (no args). Every step is checked before the first one runs (a bad "
        "one: exit status 2, naming it); the run ends after its last step, leaving its faults "
        "in force. Ctrl-C, or a step that fails, resets what the run applied.",
    )
    add_deployment_options(fault_run)
    fault_run.add_argument("scenario", type=Path, metavar="SCENARIO", help="scenario file")
    netem = fault_commands.add_parser(
        "netem",
        aliases=["shape"],
        help="delay, jitter, loss and a rate limit on what a node sends",
        description="Shape what a node sends: delay, jitter, loss and a rate limit. Node-wide "
        "it is kernel netem on docker when the kernel has sch_netem, otherwise (and always on "
        "the process runtime, and toward one --peer) the node's own shaping of its classical "
        "channels, where a loss costs a TCP retransmission timeout rather than a message. "
        "set replaces what was set.",
    )
    netem_commands = netem.add_subparsers(dest="netem_command", required=True, metavar="COMMAND")
    netem_set = netem_commands.add_parser(
        "set", help="replace a node's shaping (what is not given is none)"
    )
    add_deployment_options(netem_set)
    netem_set.add_argument("node", metavar="NODE", help="node ID")
    netem_set.add_argument(
        "--peer", default=None, metavar="NODE", help="only what it sends to this node"
    )
    netem_set.add_argument("--delay", default=None, help="delay, e.g. 50ms or 0.2s")
    netem_set.add_argument("--jitter", default=None, help="jitter around the delay, e.g. 10ms")
    netem_set.add_argument("--loss", default=None, help="random loss, e.g. 1%%")
    netem_set.add_argument("--rate", default=None, help="rate limit, e.g. 500kbit or 1mbit")
    netem_show = netem_commands.add_parser("show", help="the shaping of nodes")
    add_deployment_options(netem_show)
    netem_show.add_argument("nodes", nargs="*", metavar="NODE", help="node IDs (default all)")
    netem_show.add_argument("--json", action="store_true", help="print JSON")
    netem_reset = netem_commands.add_parser("reset", help="remove the shaping of nodes")
    add_deployment_options(netem_reset)
    netem_reset.add_argument("nodes", nargs="*", metavar="NODE", help="node IDs")
    netem_reset.add_argument(
        "--peer", default=None, metavar="NODE", help="the shaping toward this node only"
    )
    netem_reset.add_argument("--all", action="store_true", help="every shaped node")

    export = commands.add_parser(
        "export",
        help="write a topology out for other tools: a Compose file (compose, Swarm)",
        description="Write a topology out so that it runs without qkdnet.",
    )
    export_commands = export.add_subparsers(dest="export_command", required=True, metavar="FORMAT")
    export_compose = export_commands.add_parser(
        "compose",
        help="a Compose file that docker compose up and docker stack deploy run as it is",
        description="Write DIR/compose.yaml with one service per node and one for the broker, "
        "the PKI and node configurations as secrets (files under DIR, kept on re-export), "
        "a named volume per node for its key stores, and DIR/endpoints.json with each SAE's "
        "key API URL and credentials. Run it with `docker compose up -d` in DIR, or on a "
        "swarm with `docker stack deploy -c DIR/compose.yaml NAME`; the images must be on "
        "every host (qkdnet image build, or docker save | docker load).",
    )
    export_compose.add_argument("-t", "--topology", required=True, type=Path, help="topology file")
    export_compose.add_argument(
        "-o", "--output", type=Path, default=None, help="directory to write (default ./<name>)"
    )
    export_compose.add_argument(
        "--key-api-port",
        type=int,
        default=18440,
        help="host port of the first KME's ETSI 014 API; the next KMEs get the next ports (18440)",
    )
    export_compose.add_argument(
        "--mqtt-port",
        type=int,
        default=None,
        help="publish the broker (MQTT over TLS; only the deployment's node and controller "
        "certificates get in) on this port of every host interface; default: not published, "
        "the broker is reachable on the deployment's network only",
    )
    export_compose.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME",
        help="another host name or IP address applications use to reach the KMEs; repeatable",
    )

    key = commands.add_parser(
        "key",
        help="keys from a deployed network through its ETSI GS QKD 014 API",
        description="Act as applications (SAEs) of a deployed network: get keys through the "
        "ETSI GS QKD 014 key delivery API of their nodes.",
    )
    key_commands = key.add_subparsers(dest="key_command", required=True, metavar="COMMAND")
    key_get = key_commands.add_parser(
        "get",
        help="enc_keys as one SAE, dec_keys as the others, and check that the keys match",
        description="enc_keys at the master's node as --from (with its client certificate), "
        "then dec_keys at each slave's node as each --to, and check that both halves match. "
        "Exit status 0 when every key matches at every slave, 1 on a mismatch or an API "
        "failure, 2 on a user error.",
    )
    add_deployment_options(key_get)
    key_get.add_argument("--from", dest="master", required=True, metavar="SAE", help="master SAE")
    key_get.add_argument(
        "--to",
        dest="slaves",
        action="append",
        required=True,
        metavar="SAE",
        help="slave SAE; repeat for more (they go into additional_slave_SAE_IDs)",
    )
    key_get.add_argument("--number", type=int, default=1, help="keys to get (default 1)")
    key_get.add_argument("--size", type=int, default=256, help="key size in bits (default 256)")
    key_get.add_argument(
        "--multipath",
        action="store_true",
        help='ask for multi-path relay (extension_mandatory [{"qkdnet_multipath": true}])',
    )
    key_get.add_argument(
        "--json", action="store_true", help="print the keys (base64) and matches as JSON"
    )

    image = commands.add_parser(
        "image",
        help="container images of the node and the broker, built without a registry",
        description="Build and list the container images of qkdnet (qkdnet-node:VERSION, "
        "qkdnet-broker:VERSION). Nothing is pulled: the base image is made here with "
        "debootstrap (deploy/make-base-image.sh) and the node's dependencies come from a "
        "wheelhouse built on this machine. Needs a checkout of qkdnet and a Docker engine.",
    )
    image_commands = image.add_subparsers(dest="image_command", required=True, metavar="COMMAND")
    image_build = image_commands.add_parser(
        "build",
        help="build what is missing or stale of the base, node and broker images",
        description="Make the base image when it is missing (the default, qkdnet-base:bookworm, "
        "with debootstrap as root), the wheelhouse of the pinned runtime dependencies, and the "
        "node and broker images. What is already built from the same inputs is reused and "
        "reported up to date. Exit status 0 built or up to date, 2 no Docker engine or a bad "
        "option, 1 a build step failed.",
    )
    image_build.add_argument(
        "--base",
        default=None,
        metavar="IMAGE",
        help="base image (default qkdnet-base:bookworm, made here; python:3.11-slim works with "
        "a registry)",
    )
    image_build.add_argument(
        "--force",
        action="store_true",
        help="rebuild the wheelhouse and the images without cache (not the base image)",
    )
    image_build.add_argument(
        "-v", "--verbose", action="store_true", help="print every line of the build logs"
    )
    image_list = image_commands.add_parser("list", help="the qkdnet images on the Docker engine")
    image_list.add_argument("--json", action="store_true", help="print JSON")

    relay_demo = commands.add_parser(
        "relay-demo",
        help="deploy a chain, relay keys hop by hop on demand, show per-hop timings, tear down",
        description="Deploy a topology (default: the bundled chain5), wait for key on every "
        "link, then relay keys one at a time from one SAE to another through the trusted "
        "nodes, checking each at the slave; show the route with per-hop timings live, "
        "summarise and tear everything down.",
    )
    relay_demo.add_argument(
        "-t", "--topology", type=Path, default=None, help="topology file (default chain5)"
    )
    relay_demo.add_argument("--keys", type=int, default=20, help="keys to relay (default 20)")
    relay_demo.add_argument(
        "--from",
        dest="master",
        default=None,
        metavar="SAE",
        help="master SAE (default: the first SAE of the first node with SAEs)",
    )
    relay_demo.add_argument(
        "--to",
        dest="slave",
        default=None,
        metavar="SAE",
        help="slave SAE (default: the first SAE of the last node with SAEs)",
    )
    relay_demo.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="deployment state (default ~/.local/state/qkdnet/<name>)",
    )

    network_demo = commands.add_parser(
        "demo",
        help="deploy a bundled example, show every link distilling key, tear down",
        description="Deploy a bundled example network on local processes, show its links "
        "distilling key live, compare both ends of every link and tear everything down.",
    )
    network_demo.add_argument(
        "--example", default="secoqc", help="bundled example to deploy (default secoqc)"
    )
    network_demo.add_argument(
        "--duration", type=float, default=45.0, help="seconds to run (default 45)"
    )
    network_demo.add_argument("--state-dir", type=Path, default=None, help=argparse.SUPPRESS)

    demo = commands.add_parser(
        "link-demo",
        help="two nodes distilling key over one link, shown live",
        description="Start two node processes on loopback, run one QKD link between them and "
        "show QBER and key rates next to the model's prediction.",
    )
    demo.add_argument("--length-km", type=float, default=25.0, help="fibre length (default 25)")
    demo.add_argument(
        "--speedup", type=float, default=1.0, help="emulated seconds per wall second (default 1)"
    )
    demo.add_argument(
        "--eavesdrop",
        type=float,
        default=0.0,
        metavar="P",
        help="intercept-resend eavesdropper on this fraction of pulses (0..1)",
    )
    demo.add_argument(
        "--duration", type=float, default=30.0, help="wall seconds to run (default 30)"
    )
    demo.add_argument("--json", action="store_true", help="print one final JSON object")
    demo.add_argument("--no-decoy", action="store_true", help="signal pulses only (GLLP bound)")
    demo.add_argument("--pulse-rate", type=float, default=1e9, help="source rate in Hz")
    demo.add_argument("--frame-bits", type=int, default=None, help="sifted signal bits per frame")
    demo.add_argument("--mu", type=float, default=None, help="signal mean photon number")
    demo.add_argument("--seed", type=int, default=None, help="seed the emulation (reproducible)")
    demo.add_argument(
        "--state-dir", type=Path, default=None, help="keep PKI, configs, stores and logs here"
    )
    return parser


class _VersionAction(argparse.Action):
    """--version: the installed distribution's version, looked up only when asked."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("qkdnet")
        except PackageNotFoundError:
            text = "unknown (not installed)"
        print(f"qkdnet {text} (Python {sys.version.split()[0]})")
        parser.exit(0)


def _add_targets(verb: argparse.ArgumentParser) -> None:
    """NODE..., --all and --broker: what a lifecycle or pause verb acts on."""
    verb.add_argument("nodes", nargs="*", metavar="NODE", help="node IDs")
    verb.add_argument("--all", action="store_true", help="every node of the deployment")
    verb.add_argument("--broker", action="store_true", help="the embedded MQTT broker too")


def _targets(args: argparse.Namespace) -> list[str]:
    """The names `_add_targets` parsed (ConfigError when there are none); `--all` is
    resolved by `_all_nodes` once the deployment is known."""
    from ..runtime.seam import BROKER

    names = list(args.nodes) + (["*"] if getattr(args, "all", False) else [])
    names += [BROKER] if args.broker else []
    if not names:
        raise ConfigError("name at least one node (or --all, or --broker)")
    return names


def _options(args: argparse.Namespace) -> Any:
    """The NetworkOptions of a deployment verb."""
    from .network_commands import NetworkOptions

    return NetworkOptions(
        args.topology,
        args.state_dir,
        getattr(args, "broker", None) if isinstance(getattr(args, "broker", None), str) else None,
        getattr(args, "runtime", None),
        name=getattr(args, "name", None),
        subnet=getattr(args, "subnet", None),
    )


def _field_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        name = str(item["loc"][0]) if item["loc"] else ""
        option = _OPTION_OF_FIELD.get(name, name)
        lines.append(f"{option}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


def _validate(path: Path, console: Console) -> int:
    from ..plan.topology import load_topology

    try:
        topology = load_topology(path)
    except ConfigError as exc:
        return _error("validate", str(exc), 2)
    saes = sum(len(node.saes) for node in topology.nodes.values())
    km = sum(link.length_km for link in topology.links)
    console.print(
        f"{path}: topology {topology.name!r}: {len(topology.nodes)} nodes, "
        f"{len(topology.links)} links ({km:g} km of fibre), {saes} SAEs",
        highlight=False,
        soft_wrap=True,
    )
    return 0


def _error(command: str, message: str, status: int, as_json: bool = False) -> int:
    """Print `qkdnet COMMAND: error: MESSAGE` on stderr, unwrapped (and with `as_json` a JSON
    error object on stdout); return the exit status."""
    if as_json:
        error = {"command": command, "message": message, "exit_status": status}
        print(json.dumps({"error": error}, indent=2), flush=True)
    print(f"qkdnet {command}: error: {message}", file=sys.stderr)
    return status


def _link_demo(args: argparse.Namespace, console: Console) -> int:
    from pydantic import ValidationError

    from qkdnet.node.config import ChannelConfig, ProcessingConfig

    from .link_demo import LinkDemoOptions, print_summary, run_link_demo

    try:
        channel_fields: dict[str, object] = {
            "length_km": args.length_km,
            "eavesdrop_fraction": args.eavesdrop,
            "decoy": not args.no_decoy,
            "pulse_rate_hz": args.pulse_rate,
        }
        if args.mu is not None:
            channel_fields["mu"] = args.mu
        channel = ChannelConfig.model_validate(channel_fields)
        processing_fields: dict[str, object] = {"speedup": args.speedup, "seed": args.seed}
        if args.frame_bits is not None:
            processing_fields["frame_bits"] = args.frame_bits
        processing = ProcessingConfig.model_validate(processing_fields)
    except ValidationError as exc:
        return _error("link-demo", _field_errors(exc), 2)
    if args.duration <= 0:
        return _error("link-demo", "--duration: must be positive", 2)
    opts = LinkDemoOptions(
        channel=channel,
        processing=processing,
        duration=args.duration,
        json=args.json,
        state_dir=args.state_dir,
    )
    summary = run_link_demo(opts, console)
    print_summary(summary, args.json, console)
    return 0 if summary["keys_match"] else 1


def _network(args: argparse.Namespace, console: Console) -> int:
    from . import network_commands as verbs

    if args.command == "inspect" and args.all:
        if args.topology is not None or args.name is not None:
            raise ConfigError("--all: lists every deployment; give no -t or --name with it")
        return verbs.inspect_all(console, as_json=args.json)
    if args.topology is None and args.name is None:
        raise ConfigError("name the deployment: -t FILE or --name NAME (or --all)")
    opts = _options(args)
    if args.command == "deploy":
        if args.broker is not None and not args.broker.startswith("mqtt://"):
            raise ConfigError("--broker: expected mqtt://host:port")
        return verbs.deploy(
            opts, console, wait_key=not args.no_wait, timeout=args.timeout, as_json=args.json
        )
    if args.command == "destroy":
        return verbs.destroy(opts, console, keep_state=args.keep_state)
    if args.command == "inspect":
        return verbs.inspect(opts, console, as_json=args.json)
    if args.command == "watch":
        return verbs.watch(opts, console, duration=args.duration, as_json=args.json)
    if args.command == "graph":
        return verbs.graph(opts, console, output=args.output)
    return verbs.lifecycle(opts, console, args.command, _targets(args))


def _demo(args: argparse.Namespace, console: Console) -> int:
    from .network_demo import bundled_examples, run_demo

    examples = bundled_examples()
    if args.example not in examples:
        raise ConfigError(f"--example: no example {args.example!r} (have: {', '.join(examples)})")
    if args.duration <= 0:
        raise ConfigError("--duration: must be positive")
    return run_demo(args.example, args.duration, args.state_dir, console)


def _key(args: argparse.Namespace, console: Console) -> int:
    from . import network_commands as verbs

    opts = _options(args)
    return verbs.key_get(
        opts,
        console,
        master=args.master,
        slaves=list(args.slaves),
        number=args.number,
        size=args.size,
        multipath=args.multipath,
        as_json=args.json,
    )


def _fault(args: argparse.Namespace, console: Console) -> int:
    from . import fault_commands as verbs
    from .network_commands import lifecycle

    opts = _options(args)
    action = args.fault_command
    if action in ("pause", "unpause"):
        return verbs.freeze(opts, console, action, _targets(args))
    if action in ("stop", "kill", "restart"):
        return lifecycle(opts, console, action, _targets(args))
    if action == "cut":
        return verbs.cut(opts, console, *args.ends)
    if action == "restore":
        if len(args.ends) not in (0, 2):
            raise ConfigError("name the link's two nodes")
        return verbs.restore(opts, console, list(args.ends), args.all)
    if action == "link":
        return verbs.link(
            opts,
            console,
            *args.ends,
            eavesdrop=args.eavesdrop,
            extra_loss_db=args.extra_loss_db,
            misalignment=args.misalignment,
            reset=args.reset,
        )
    if action == "show":
        return verbs.show(opts, console, args.json)
    if action == "reset":
        return verbs.reset(opts, console, args.json)
    if action == "run":
        return verbs.run(opts, console, args.scenario)
    if args.netem_command == "set":
        return verbs.netem_set(
            opts,
            console,
            args.node,
            peer=args.peer,
            delay=args.delay,
            jitter=args.jitter,
            loss=args.loss,
            rate=args.rate,
        )
    if args.netem_command == "show":
        return verbs.netem_show(opts, console, list(args.nodes), args.json)
    return verbs.netem_reset(opts, console, list(args.nodes), args.all, args.peer)


def _export(args: argparse.Namespace, console: Console) -> int:
    from ..plan.network_plan import NetworkPlan
    from ..plan.topology import load_topology
    from ..runtime.compose_export import export_compose
    from ..runtime.images import image_tags, installed_version

    topology = load_topology(args.topology)
    plan = NetworkPlan.build(topology, runtime="docker")
    tags = image_tags(installed_version())
    result = export_compose(
        plan,
        args.output or Path(topology.name),
        node_image=tags["node"],
        broker_image=tags["broker"],
        key_api_port=args.key_api_port,
        mqtt_port=args.mqtt_port,
        hosts=tuple(args.san),
    )
    console.print(f"[green]✓[/] wrote {result.compose_file}", highlight=False)
    for sae, endpoint in result.endpoints.items():
        console.print(f"  {sae}: {endpoint.url} (KME {endpoint.node})", highlight=False)
    telemetry = (
        f"mqtts://localhost:{result.mqtt_port} with the controller's certificate (pki/orchestrator)"
        if result.mqtt_port is not None
        else "not published (--mqtt-port publishes it)"
    )
    console.print(
        f"  telemetry: {telemetry}\n"
        f"run it: cd {result.directory} && docker compose up -d  (docker-compose 1.x: "
        f"docker-compose up -d)\non a swarm: docker stack deploy -c {result.compose_file} "
        f"{topology.name}\nimages needed on every host: {tags['node']}, {tags['broker']}",
        highlight=False,
        soft_wrap=True,
    )
    return 0


def _relay_demo(args: argparse.Namespace, console: Console) -> int:
    from .relay_demo import RelayDemoOptions, run_relay_demo

    opts = RelayDemoOptions(
        topology=args.topology,
        state_dir=args.state_dir,
        keys=args.keys,
        master=args.master,
        slave=args.slave,
    )
    return run_relay_demo(opts, console)


def _image(args: argparse.Namespace, console: Console) -> int:
    from ..runtime.images import run_image_build, run_image_list

    if args.image_command == "build":
        return run_image_build(console, base=args.base, force=args.force, verbose=args.verbose)
    return run_image_list(console, as_json=args.json)


_NETWORK_VERBS = {
    "deploy",
    "destroy",
    "inspect",
    "start",
    "stop",
    "kill",
    "restart",
    "watch",
    "graph",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `qkdnet` console script.

    Output to a closed pipe (`qkdnet inspect --json | head`) ends the command quietly with
    exit status 141, as SIGPIPE would a C program."""
    try:
        status = _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # Whatever is still buffered cannot go anywhere: point stdout at /dev/null so that
        # the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return status


def _main(argv: list[str] | None) -> int:
    # pydantic looks for plugins through every installed distribution's entry points the
    # first time a model is built (a quarter of a second); qkdnet uses none.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    from .console_output import make_console

    args = _parser().parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    console = make_console(stderr=as_json)
    command = args.command
    if command == "key":
        command = f"key {args.key_command}"
    if command == "image":
        command = f"image {args.image_command}"
    if command == "export":
        command = f"export {args.export_command}"
    if command == "fault":
        command = f"fault {args.fault_command}"
        if args.fault_command == "netem":
            command = f"fault netem {args.netem_command}"
    try:
        if args.command in _NETWORK_VERBS:
            return _network(args, console)
        if args.command == "key":
            return _key(args, console)
        if args.command == "export":
            return _export(args, console)
        if args.command == "fault":
            return _fault(args, console)
        if args.command == "relay-demo":
            return _relay_demo(args, console)
        if args.command == "image":
            return _image(args, console)
        if args.command == "demo":
            return _demo(args, console)
        if args.command == "node":
            from qkdnet.node.agent import main as node_main

            return node_main(args.config)
        if args.command == "link-demo":
            return _link_demo(args, console)
        if args.command == "validate":
            return _validate(args.topology, console)
        if args.command == "schema":
            from ..plan.topology import topology_json_schema

            print(topology_json_schema(), end="")
            return 0
    except ConfigError as exc:
        return _error(command, str(exc), 2, as_json)
    except QkdnetError as exc:
        return _error(command, str(exc), 1, as_json)
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
