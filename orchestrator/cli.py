"""The `qkdnet` command line.

Exit status: 0 success, 2 user error (bad option, bad file), 1 failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console

from qkdnet.node.config import ChannelConfig, ProcessingConfig
from qkdnet.node.errors import ConfigError, QkdnetError

from .topology import load_topology, topology_json_schema

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
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    node = commands.add_parser("node", help="run a node agent")
    node.add_argument("--config", required=True, type=Path, help="node configuration (YAML)")

    validate = commands.add_parser(
        "validate", help="check a topology file and summarise it (exit 2 when it is wrong)"
    )
    validate.add_argument("-t", "--topology", required=True, type=Path, help="topology file")

    commands.add_parser("schema", help="print the JSON schema of topology files")

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


def _field_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        name = str(item["loc"][0]) if item["loc"] else ""
        option = _OPTION_OF_FIELD.get(name, name)
        lines.append(f"{option}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


def _validate(path: Path, console: Console) -> int:
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


def _error(command: str, message: str, status: int) -> int:
    """Print `qkdnet COMMAND: error: MESSAGE` on stderr, unwrapped; return the exit status."""
    print(f"qkdnet {command}: error: {message}", file=sys.stderr)
    return status


def _link_demo(args: argparse.Namespace, console: Console) -> int:
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `qkdnet` console script."""
    args = _parser().parse_args(argv)
    console = Console(stderr=bool(getattr(args, "json", False)))
    try:
        if args.command == "node":
            from qkdnet.node.agent import main as node_main

            return node_main(args.config)
        if args.command == "link-demo":
            return _link_demo(args, console)
        if args.command == "validate":
            return _validate(args.topology, console)
        if args.command == "schema":
            print(topology_json_schema(), end="")
            return 0
    except QkdnetError as exc:
        return _error(args.command, str(exc), 1)
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
