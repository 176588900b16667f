"""The demos: `link-demo` (one link between two processes), `relay-demo` (keys relayed through
trusted nodes on demand) and `demo` (a bundled network distilling key). Their parsers and
dispatch; the work is in `link_demo.py`, `relay_demo.py`, `network_demo.py` and
`federation_demo.py`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from qkdnet.node.errors import ConfigError

from .arguments import Subcommands, error

if TYPE_CHECKING:
    from pydantic import ValidationError
    from rich.console import Console

__all__ = ["add_commands"]

_OPTION_OF_FIELD = {
    "length_km": "--length-km",
    "eavesdrop_fraction": "--eavesdrop",
    "speedup": "--speedup",
    "pulse_rate_hz": "--pulse-rate",
    "frame_bits": "--frame-bits",
    "mu": "--mu",
}


def add_commands(commands: Subcommands) -> None:
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
        "distilling key live, compare both ends of every link and tear everything down. An "
        "example with domains (euroqci) deploys each domain on its own, with what its "
        "external-KME links draw on, and relays keys across every border meanwhile. The "
        "wireguard example runs in containers: two WireGuard encryptors rotate their "
        "preshared key from an ETSI 004 key stream every 5 s while a ping crosses the tunnel.",
    )
    network_demo.add_argument(
        "--example",
        default="secoqc",
        help="bundled example to deploy (default secoqc; euroqci: three national networks; "
        "wireguard: two WireGuard encryptors whose preshared key comes from qkdnet, in "
        "containers)",
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
    relay_demo.set_defaults(run=run_relay_demo)
    network_demo.set_defaults(run=run_network_demo)
    demo.set_defaults(run=run_link_demo)


def _field_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        name = str(item["loc"][0]) if item["loc"] else ""
        option = _OPTION_OF_FIELD.get(name, name)
        lines.append(f"{option}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


def run_link_demo(args: argparse.Namespace, console: Console) -> int:
    from pydantic import ValidationError

    from qkdnet.node.config import ChannelConfig, ProcessingConfig

    from .link_demo import LinkDemoOptions, print_summary
    from .link_demo import run_link_demo as run

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
        return error("link-demo", _field_errors(exc), 2)
    if args.duration <= 0:
        return error("link-demo", "--duration: must be positive", 2)
    opts = LinkDemoOptions(
        channel=channel,
        processing=processing,
        duration=args.duration,
        json=args.json,
        state_dir=args.state_dir,
    )
    summary = run(opts, console)
    print_summary(summary, args.json, console)
    return 0 if summary["keys_match"] else 1


def run_relay_demo(args: argparse.Namespace, console: Console) -> int:
    from .relay_demo import RelayDemoOptions
    from .relay_demo import run_relay_demo as run

    opts = RelayDemoOptions(
        topology=args.topology,
        state_dir=args.state_dir,
        keys=args.keys,
        master=args.master,
        slave=args.slave,
    )
    return run(opts, console)


def run_network_demo(args: argparse.Namespace, console: Console) -> int:
    from .network_demo import bundled_examples, run_demo

    examples = bundled_examples()
    if args.example not in examples:
        raise ConfigError(f"--example: no example {args.example!r} (have: {', '.join(examples)})")
    if args.duration <= 0:
        raise ConfigError("--duration: must be positive")
    return run_demo(args.example, args.duration, args.state_dir, console)
