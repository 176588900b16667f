"""The `qkdnet key` verbs: keys from a deployed network through its ETSI GS QKD 014 API.
Their parser and dispatch; the work is in `key_commands.py`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .arguments import Subcommands, add_deployment_options, network_options

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["add_commands"]


def add_commands(commands: Subcommands) -> None:
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
    key.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    from .key_commands import key_get

    return key_get(
        network_options(args),
        console,
        master=args.master,
        slaves=list(args.slaves),
        number=args.number,
        size=args.size,
        multipath=args.multipath,
        as_json=args.json,
    )
