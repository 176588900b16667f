"""What the verb groups of the command line share: deployment options, targets, errors.

Kept free of heavy imports: every verb group builds its parser from here on every run of
`qkdnet`, whatever the verb.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qkdnet.node.errors import ConfigError

if TYPE_CHECKING:
    from .network_commands import NetworkOptions

__all__ = [
    "Subcommands",
    "VersionAction",
    "add_deployment_options",
    "add_targets",
    "error",
    "network_options",
    "network_verb",
    "targets",
]

Subcommands = Any  # argparse's _SubParsersAction, which argparse does not export


class VersionAction(argparse.Action):
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


def add_deployment_options(
    verb: argparse.ArgumentParser, *, by_name: bool = True, required: bool = True
) -> None:
    """-t FILE or -n NAME (which deployment), and --state-dir."""
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
        "network is found by its name wherever its state is; of a topology with domains, "
        "one directory per domain in it, or with --domain the domain's own)",
    )
    verb.add_argument(
        "--domain",
        default=None,
        metavar="DOMAIN",
        help="of a topology with domains, only this domain (a deployment of its own, named "
        "<name>-<domain>); default: every domain",
    )


def network_verb(
    commands: Subcommands, name: str, help: str, *, by_name: bool = True, required: bool = True
) -> argparse.ArgumentParser:
    """A verb on one deployment: its options and --runtime."""
    verb: argparse.ArgumentParser = commands.add_parser(name, help=help, description=help)
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


def add_targets(verb: argparse.ArgumentParser) -> None:
    """NODE..., --all and --broker: what a lifecycle or pause verb acts on."""
    verb.add_argument("nodes", nargs="*", metavar="NODE", help="node IDs")
    verb.add_argument("--all", action="store_true", help="every node of the deployment")
    verb.add_argument("--broker", action="store_true", help="the embedded MQTT broker too")


def targets(args: argparse.Namespace) -> list[str]:
    """The names `add_targets` parsed (ConfigError when there are none); `--all` is resolved
    once the deployment is known."""
    from ..runtime.seam import BROKER

    names = list(args.nodes) + (["*"] if getattr(args, "all", False) else [])
    names += [BROKER] if args.broker else []
    if not names:
        raise ConfigError("name at least one node (or --all, or --broker)")
    return names


def network_options(args: argparse.Namespace) -> NetworkOptions:
    """The NetworkOptions of a verb on a deployment."""
    from .network_commands import NetworkOptions

    broker = getattr(args, "broker", None)
    return NetworkOptions(
        args.topology,
        args.state_dir,
        broker if isinstance(broker, str) else None,
        getattr(args, "runtime", None),
        name=getattr(args, "name", None),
        subnet=getattr(args, "subnet", None),
        domain=getattr(args, "domain", None),
    )


def error(command: str, message: str, status: int, as_json: bool = False) -> int:
    """Print `qkdnet COMMAND: error: MESSAGE` on stderr, unwrapped (and with `as_json` a JSON
    error object on stdout); return the exit status."""
    if as_json:
        body = {"command": command, "message": message, "exit_status": status}
        print(json.dumps({"error": body}, indent=2), flush=True)
    print(f"qkdnet {command}: error: {message}", file=sys.stderr)
    return status
