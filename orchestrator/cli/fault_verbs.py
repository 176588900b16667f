"""The `qkdnet fault` verbs: pause, unpause, stop, kill, restart, cut, restore, link, show,
reset, run and netem. Their parser and dispatch; the work is in `fault_commands.py`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from qkdnet.node.errors import ConfigError

from .arguments import Subcommands, add_deployment_options, add_targets, network_options, targets
from .deployment_verbs import LIFECYCLE_VERBS

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["add_commands"]


def add_commands(commands: Subcommands) -> None:
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
        **{a: t for a, t in LIFECYCLE_VERBS.items() if a != "start"},
    }
    for action, text in node_faults.items():
        verb = fault_commands.add_parser(action, help=text, description=text)
        add_deployment_options(verb)
        add_targets(verb)
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
    fault.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    from . import fault_commands as verbs
    from .network_commands import lifecycle

    opts = network_options(args)
    action = args.fault_command
    if action in ("pause", "unpause"):
        return verbs.freeze(opts, console, action, targets(args))
    if action in ("stop", "kill", "restart"):
        return lifecycle(opts, console, action, targets(args))
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
