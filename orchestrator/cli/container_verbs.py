"""The container verbs: `qkdnet image` (build and list the images, without a registry) and
`qkdnet export compose` (a topology as a Compose file that runs without qkdnet)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .arguments import Subcommands

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["add_commands"]


def add_commands(commands: Subcommands) -> None:
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
    export.set_defaults(run=run_export)

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
    image.set_defaults(run=run_image)


def run_image(args: argparse.Namespace, console: Console) -> int:
    from .image_view import run_image_build, run_image_list

    if args.image_command == "build":
        return run_image_build(console, base=args.base, force=args.force, verbose=args.verbose)
    return run_image_list(console, as_json=args.json)


def run_export(args: argparse.Namespace, console: Console) -> int:
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
