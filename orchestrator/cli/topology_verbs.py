"""The verbs on topology and node files: `validate` and `schema` (topology files) and `node`
(run one node agent from its configuration)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from qkdnet.node.errors import ConfigError

from .arguments import Subcommands, error

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["add_commands"]


def add_commands(commands: Subcommands) -> None:
    node = commands.add_parser("node", help="run a node agent")
    node.add_argument("--config", required=True, type=Path, help="node configuration (YAML)")
    node.set_defaults(run=run_node)

    validate = commands.add_parser(
        "validate", help="check a topology file and summarise it (exit 2 when it is wrong)"
    )
    validate.add_argument("-t", "--topology", required=True, type=Path, help="topology file")
    validate.set_defaults(run=run_validate)

    schema = commands.add_parser("schema", help="print the JSON schema of topology files")
    schema.set_defaults(run=run_schema)


def run_node(args: argparse.Namespace, console: Console) -> int:
    from qkdnet.node.agent import main as node_main

    return node_main(args.config)


def run_validate(args: argparse.Namespace, console: Console) -> int:
    path: Path = args.topology
    from ..plan.topology import load_topology

    try:
        topology = load_topology(path)
    except ConfigError as exc:
        return error("validate", str(exc), 2)
    saes = sum(len(node.saes) for node in topology.nodes.values())
    km = sum(link.length_km for link in topology.links)
    console.print(
        f"{path}: topology {topology.name!r}: {len(topology.nodes)} nodes, "
        f"{len(topology.links)} links ({km:g} km of fibre), {saes} SAEs",
        highlight=False,
        soft_wrap=True,
    )
    return 0


def run_schema(args: argparse.Namespace, console: Console) -> int:
    from ..plan.topology import topology_json_schema

    print(topology_json_schema(), end="")
    return 0
