"""The `qkdnet` command line: the parser, built from the verb groups, and the exit status.

Each verb group (`*_verbs.py`) adds its commands and the function that runs them; that
function imports what the verb needs when it runs, so that every verb starts quickly.

Exit status: 0 success, 2 user error (bad option, bad file), 1 failure.
"""

from __future__ import annotations

import argparse
import os
import sys

from qkdnet.node.errors import ConfigError, QkdnetError

from . import (
    container_verbs,
    demo_verbs,
    deployment_verbs,
    fault_verbs,
    key_verbs,
    topology_verbs,
)
from .arguments import VersionAction, error

__all__ = ["main"]

_GROUPS = (topology_verbs, deployment_verbs, fault_verbs, container_verbs, key_verbs, demo_verbs)
# The argparse destinations that name a verb, outermost first: `qkdnet fault netem set`.
_VERB_DESTS = ("command", "key_command", "image_command", "export_command", "fault_command")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qkdnet",
        description="Emulate a quantum key distribution network.",
        epilog="Exit status: 0 success, 1 failure, 2 user error (bad option, bad file, "
        "nothing deployed under that name).",
    )
    parser.add_argument("--version", action=VersionAction, help="print qkdnet's version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _GROUPS:
        group.add_commands(commands)
    return parser


def _verb(args: argparse.Namespace) -> str:
    """The verb as the user typed it, for error messages: `fault netem set`."""
    words = [getattr(args, dest) for dest in _VERB_DESTS if getattr(args, dest, None)]
    if getattr(args, "fault_command", None) == "netem":
        words.append(args.netem_command)
    return " ".join(words)


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

    args = build_parser().parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    console = make_console(stderr=as_json)
    try:
        status: int = args.run(args, console)
        return status
    except ConfigError as exc:
        return error(_verb(args), str(exc), 2, as_json)
    except QkdnetError as exc:
        return error(_verb(args), str(exc), 1, as_json)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
