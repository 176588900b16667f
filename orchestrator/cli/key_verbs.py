"""The `qkdnet key` verbs: keys from a deployed network through its ETSI GS QKD 014 API
(`key get`) and its ETSI GS QKD 004 API (`key stream`). Their parser and dispatch; the work is
in `key_commands.py` and `stream_commands.py`.
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
        help="keys from a deployed network through its ETSI GS QKD 014 and 004 APIs",
        description="Act as applications (SAEs) of a deployed network: get keys through the "
        "ETSI GS QKD 014 key delivery API of their nodes, or a key stream through their ETSI "
        "GS QKD 004 API.",
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
        "--hybrid",
        action="store_true",
        help="ask for hybrid keys: QKD combined with an ML-KEM-768 secret between the two "
        'KMEs (extension_mandatory [{"qkdnet_hybrid": true}]; one --to only)',
    )
    key_get.add_argument(
        "--json", action="store_true", help="print the keys (base64) and matches as JSON"
    )
    key_get.set_defaults(run=run)
    key_stream = key_commands.add_parser(
        "stream",
        help="an ETSI 004 key stream between two SAEs: both ends read the same chunks",
        description="OPEN_CONNECT as --from at its node (status 1 and a new KSID), "
        "OPEN_CONNECT with that KSID as --to at its node (status 0), GET_KEY of chunks "
        "0 .. --chunks - 1 at both ends (paced to --rate), a check that they match, and CLOSE. "
        "Exit status 0 when every chunk matches, 1 on a mismatch or a status other than "
        "success (said with its number and meaning; with 7, the rate the route can carry), 2 "
        "on a user error.",
    )
    add_deployment_options(key_stream)
    key_stream.add_argument(
        "--from", dest="source", required=True, metavar="SAE", help="the SAE opening the stream"
    )
    key_stream.add_argument(
        "--to", dest="destination", required=True, metavar="SAE", help="the peer SAE"
    )
    key_stream.add_argument("--chunks", type=int, default=8, help="chunks to read (default 8)")
    key_stream.add_argument(
        "--chunk-size", type=int, default=32, help="Key_chunk_size in bytes (default 32)"
    )
    key_stream.add_argument(
        "--rate", type=int, default=8192, help="Max_bps: the stream's rate in bit/s (default 8192)"
    )
    key_stream.add_argument(
        "--timeout", type=int, default=5000, help="Timeout of each call in ms (default 5000)"
    )
    key_stream.add_argument(
        "--json", action="store_true", help="print the chunks (base64) and matches as JSON"
    )
    key_stream.set_defaults(run=run_stream)


def run_stream(args: argparse.Namespace, console: Console) -> int:
    from .stream_commands import key_stream

    return key_stream(
        network_options(args),
        console,
        source=args.source,
        destination=args.destination,
        chunks=args.chunks,
        chunk_size=args.chunk_size,
        rate=args.rate,
        timeout_ms=args.timeout,
        as_json=args.json,
    )


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
        hybrid=args.hybrid,
        as_json=args.json,
    )
