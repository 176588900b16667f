"""The deployment verbs of the CLI: deploy, destroy, inspect (one deployment or --all),
start/stop/kill/restart, watch and graph; and how every verb finds its deployment
(`load_plan`).

Each function takes parsed options and a console and returns the exit status; errors are raised
(`ConfigError` for user errors, other `QkdnetError`s for failures) and turned into messages by
`main.py`. The runtimes know nothing of the terminal: their events are drawn here.

A deployment is found through the registry (registry.py) by its topology's name, whatever its
state directory; a verb aimed at a deployment the registry does not hold raises `NotDeployed`
(exit status 2). Modules that cost time to import (grpc, aiohttp, aiomqtt, matplotlib) are
imported by the verbs that need them.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from qkdnet.node.errors import ConfigError, QkdnetError

from ..durations import format_age
from ..plan.network_plan import NetworkPlan
from ..plan.registry import NotDeployed, Registration, Registry, block_of_subnet
from ..runtime import runtime_for
from ..runtime.seam import BROKER, DeployError, DeploymentInfo, Runtime, RuntimeEvent
from .console_output import Progress
from .network_view import (
    borders_table,
    links_table,
    nodes_json,
    nodes_table,
    rows_from_snapshot,
    virtual_links_json,
    virtual_links_table,
)

if TYPE_CHECKING:
    from ..client.network_status import NetworkSnapshot
    from ..plan.topology import Topology

__all__ = [
    "NetworkOptions",
    "deploy",
    "destroy",
    "expand_targets",
    "graph",
    "inspect",
    "inspect_all",
    "lifecycle",
    "load_plan",
    "require_deployed",
    "wait_for_key",
    "watch",
]


@dataclass(frozen=True)
class NetworkOptions:
    """Options every deployment verb shares: the deployment is named by its topology file
    (`topology`) or by its name (`name`, for a registered deployment)."""

    topology: Path | None
    state_dir: Path | None = None
    broker: str | None = None
    runtime: str | None = None  # overrides the topology's (and the recorded) runtime
    name: str | None = None
    subnet: str | None = None  # deploy: the address block, e.g. 127.42.0.0/16
    domain: str | None = None  # one domain of a topology with domains


_LISTING = "qkdnet inspect --all lists what is deployed"


def _declared(path: Path) -> tuple[str | None, list[str]]:
    """The `name:` a topology file declares and its domains, read without validating the file
    (None when it cannot be read that way: the full load then says what is wrong)."""
    import yaml

    try:
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None, []
    if not isinstance(data, dict):
        return None, []
    name, domains = data.get("name"), data.get("domains")
    return (
        name if isinstance(name, str) else None,
        [str(d) for d in domains] if isinstance(domains, dict) else [],
    )


def _load_topology(path: Path, *, check_workable: bool = True) -> Topology:
    from ..plan.topology import load_topology  # pydantic: only when a topology is validated

    return load_topology(path, check_workable=check_workable)


def load_plan(opts: NetworkOptions) -> NetworkPlan:
    """Validate the topology file and lay out the deployment (ConfigError when it is wrong).

    A registered deployment is laid out as it was deployed: its plan is read from its record
    in the state directory (plan.json: no validation, no pydantic), and its state directory,
    runtime and address block come from the registry (`--state-dir` or `--runtime` that say
    otherwise are refused). Otherwise the runtime is `opts.runtime`, else the topology's."""
    registry = Registry()
    if opts.topology is not None and _declared(opts.topology)[1]:
        plans = load_plans(opts)
        if len(plans) > 1:
            raise ConfigError(
                f"{opts.topology} has domains ({', '.join(_declared(opts.topology)[1])}), each a "
                "deployment of its own: name one with --domain"
            )
        return plans[0]
    if opts.domain is not None:
        raise ConfigError("--domain: only with -t FILE of a topology with domains")
    if opts.topology is None:
        if opts.name is None:
            raise ConfigError("name the deployment: -t FILE or --name NAME")
        entry = registry.get(opts.name)
        if entry is None:
            raise NotDeployed(f"no deployment named {opts.name!r} on this machine ({_LISTING})")
        source = entry.topology_copy if entry.topology_copy.exists() else entry.topology
    else:
        source = opts.topology
        name = _declared(source)[0] or _load_topology(source, check_workable=False).name
        if opts.name is not None and opts.name != name:
            raise ConfigError(f"--name: {opts.topology} names its network {name!r}")
        entry = registry.get(name)
    if entry is None:
        topology = _load_topology(source)  # about to be deployed: everything is checked
        return NetworkPlan.build(
            topology, opts.state_dir, opts.broker, opts.runtime, subnet=opts.subnet, source=source
        )
    if opts.state_dir is not None and opts.state_dir.absolute() != entry.state_dir:
        raise ConfigError(
            f"--state-dir: {entry.name} is deployed with state dir {entry.state_dir}, not "
            f"{opts.state_dir}; a name is one deployment on a machine (rename the topology to "
            "run another)"
        )
    if opts.runtime is not None and opts.runtime != entry.runtime:
        raise ConfigError(f"--runtime: {entry.name} is deployed on the {entry.runtime} runtime")
    if opts.subnet is not None and block_of_subnet(opts.subnet, entry.runtime, "--subnet") != (
        entry.block
    ):
        raise ConfigError(f"--subnet: {entry.name} is deployed in {entry.subnet}")
    recorded = NetworkPlan.load(entry.state_dir, opts.broker)
    if recorded is not None and recorded.name == entry.name and recorded.subnet == entry.block:
        return recorded
    # What is deployed was checked when it was deployed: the model is not needed for it.
    topology = _load_topology(source, check_workable=False)
    return NetworkPlan.build(
        topology, entry.state_dir, opts.broker, entry.runtime, block=entry.block, source=source
    )


def load_plans(opts: NetworkOptions) -> list[NetworkPlan]:
    """The deployments `opts` names: one, or for a topology with domains every domain's (the
    one `--domain` names). A domain deployed is laid out as it was deployed (its record)."""
    if opts.topology is None or not _declared(opts.topology)[1]:
        return [load_plan(opts)]
    from ..plan.domain_role import deployment_name
    from ..plan.federation import plan_domains

    topology = _load_topology(opts.topology)
    if opts.name is not None and opts.name != topology.name:
        raise ConfigError(f"--name: {opts.topology} names its network {topology.name!r}")
    registry = Registry()
    chosen = [opts.domain] if opts.domain is not None else list(topology.domains)
    recorded: dict[str, NetworkPlan] = {}
    for domain in chosen:
        entry = registry.get(deployment_name(topology.name, domain))
        plan = NetworkPlan.load(entry.state_dir, opts.broker) if entry else None
        if entry is not None and plan is not None and plan.domain is not None:
            if (
                opts.state_dir is not None
                and opts.domain is not None
                and (entry.state_dir != opts.state_dir.absolute())
            ):
                raise ConfigError(
                    f"--state-dir: domain {domain} is deployed with state dir {entry.state_dir}"
                )
            recorded[domain] = plan  # laid out as it was deployed
    if len(recorded) == len(chosen):
        return [recorded[domain] for domain in chosen]
    fresh = plan_domains(
        topology,
        state_dir=opts.state_dir,
        broker_url=opts.broker,
        runtime=opts.runtime,
        only=opts.domain,
    )
    return [recorded.get(domain) or fresh[domain] for domain in chosen if domain in fresh]


def registration(plan: NetworkPlan) -> Registration | None:
    """The registry's entry of this plan's deployment (None when it is not deployed)."""
    entry = Registry().get(plan.name)
    return entry if entry is not None and entry.state_dir == plan.state_dir else None


def _require_registered(plan: NetworkPlan, deploy_hint: str = "") -> None:
    if registration(plan) is None:
        raise NotDeployed(
            f"{plan.name} is not deployed on this machine ({_LISTING})"
            + (f"; deploy it with: {deploy_hint}" if deploy_hint else "")
        )


def _command(verb: str, plan: NetworkPlan, *rest: str) -> str:
    """A command that works when pasted: `qkdnet VERB --name NAME ...`."""
    return shlex.join(["qkdnet", *verb.split(), "--name", plan.name, *rest])


def deploy_command(opts: NetworkOptions) -> str:
    """The command that deploys what `opts` names (for hints)."""
    words = ["qkdnet", "deploy", "-t", str(opts.topology)]
    if opts.state_dir is not None:
        words += ["--state-dir", str(opts.state_dir)]
    return shlex.join(words)


class _Progress:
    """Draws runtime events: lines for what is done, the progress line for what goes on."""

    def __init__(self, console: Console, progress: Progress, total: int) -> None:
        self.console = console
        self.progress = progress
        self.total = total
        self.ready = 0

    def __call__(self, event: RuntimeEvent) -> None:
        if event.kind == "node_ready":
            self.ready += 1
            self.progress.update(f"nodes ready: {self.ready}/{self.total}")
        elif event.kind == "broker_started":
            self.console.print(f"[green]✓[/] MQTT broker on {event.detail}")
        elif event.kind == "pki_ready":
            self.console.print(f"[green]✓[/] PKI in {event.detail}")
        elif event.kind in ("node_stopped", "broker_stopped", "stopped"):
            self.console.print(f"[green]✓[/] stopped {event.subject}")


async def wait_for_key(
    plan: NetworkPlan,
    timeout: float,
    on_progress: Callable[[NetworkSnapshot], None] | None = None,
) -> NetworkSnapshot:
    """Poll the nodes until every link has distilled key at both ends (DeployError on timeout)."""
    from ..client.network_status import NetworkStatus

    deadline = time.monotonic() + timeout
    async with NetworkStatus(plan) as status:
        while True:
            snapshot = await status.snapshot()
            if on_progress is not None:
                on_progress(snapshot)
            if snapshot.every_link_has_key:
                return snapshot
            if time.monotonic() > deadline:
                missing = [link.link_id for link in snapshot.links if not link.has_key]
                raise DeployError(
                    f"no key after {timeout:.0f} s on {len(missing)} link(s): "
                    + ", ".join(missing[:10])
                )
            await asyncio.sleep(0.5)


def deploy(
    opts: NetworkOptions,
    console: Console,
    *,
    wait_key: bool,
    timeout: float,
    as_json: bool,
    peer_cas: list[str] = [],  # noqa: B006 (read only)
) -> int:
    """Deploy the network (every domain of a topology with domains, or the one `--domain`
    names, after giving its borders their peers' CAs: `peer_cas`, `[DOMAIN=]FILE`)."""
    plans = load_plans(opts)
    if plans[0].domain is not None:
        _trust_peers(plans, peer_cas)
    elif peer_cas:
        raise ConfigError("--peer-ca: only for a topology with domains")
    for plan in plans:  # whatever the configurations need is there, before anything starts
        plan.node_configs(plan.layout(plan.provision_pki()))
    shown = []
    for plan in plans:
        if plan.domain is not None:
            console.print(
                f"[bold]domain {plan.domain.domain}[/] (deployment {plan.name})", highlight=False
            )
        shown.append(_deploy_one(plan, console, wait_key=wait_key, timeout=timeout, quiet=as_json))
    if as_json:
        if plans[0].domain is None:
            print(json.dumps(shown[0], indent=2))
        else:
            topology = plans[0].domain.topology
            print(json.dumps({"name": topology, "domains": shown}, indent=2))
    return 0


def _trust_peers(plans: list[NetworkPlan], peer_cas: list[str]) -> None:
    """Give every border of `plans` its peer domain's CA: from the peer's own plan when it is
    laid out here, else from --peer-ca, else the one given at an earlier deploy."""
    from ..plan.federation import install_peer_ca, share_link_secrets

    given: dict[str, Path] = {}
    peers = {b.peer_domain for plan in plans if plan.domain for b in plan.domain.borders}
    here = {plan.domain.domain: plan for plan in plans if plan.domain}
    for text in peer_cas:
        domain, sep, path = text.rpartition("=")
        if not sep:
            missing = sorted(peers - set(here))
            if len(missing) != 1:
                raise ConfigError(
                    f"--peer-ca {text}: say whose CA it is, DOMAIN=FILE (the peer domains: "
                    f"{', '.join(sorted(peers)) or 'none'})"
                )
            domain = missing[0]
        if domain not in peers:
            raise ConfigError(
                f"--peer-ca {text}: no border here peers with domain {domain!r} (the peer "
                f"domains: {', '.join(sorted(peers)) or 'none'})"
            )
        given[domain] = Path(path)
    share_link_secrets({domain: plan for domain, plan in here.items()})
    for plan in plans:
        assert plan.domain is not None
        for border in plan.domain.borders:
            peer = border.peer_domain
            if peer in here:
                source, where = here[peer].pki_dir / "ca.pem", f"domain {peer}'s CA"
            elif peer in given:
                source, where = given[peer], f"--peer-ca {peer}={given[peer]}"
            else:
                continue  # an earlier deploy's, if any (the plan says when there is none)
            try:
                pem = source.read_bytes()
            except OSError as exc:
                raise ConfigError(f"{where}: cannot read it: {exc.strerror}") from None
            install_peer_ca(plan, peer, pem, where)
    for plan in plans:  # refused before anything starts
        assert plan.domain is not None
        for border in plan.domain.borders:
            plan.peer_ca_of(border.node)


def _deploy_one(
    plan: NetworkPlan, console: Console, *, wait_key: bool, timeout: float, quiet: bool
) -> dict[str, Any]:
    """Deploy one network (one domain); its description for --json."""
    started = time.monotonic()
    logs = plan.state_dir / "logs"
    with Progress(console, f"deploying {plan.name} ({plan.network_cidr})") as progress:
        runtime = runtime_for(plan, _Progress(console, progress, len(plan.nodes)))
        try:
            info = runtime.deploy(timeout)
        except DeployError as exc:
            raise DeployError(
                f"deploy of {plan.name} failed while starting it: {exc}. Everything it started "
                f"is stopped; the logs are in {logs}"
            ) from None
        ready_s = time.monotonic() - started
        console.print(f"[green]✓[/] {len(info.nodes)} nodes ready in {ready_s:.1f} s")
        key_s = None
        if wait_key and plan.links:

            def show(snapshot: NetworkSnapshot) -> None:
                done = sum(link.has_key for link in snapshot.links)
                progress.update(f"links with distilled key: {done}/{len(snapshot.links)}")

            try:
                asyncio.run(wait_for_key(plan, timeout, show))
            except DeployError as exc:
                runtime.destroy(keep_state=True)
                raise DeployError(
                    f"deploy of {plan.name} failed while waiting for key: {exc}. Everything it "
                    f"started is stopped; the logs are in {logs} (--no-wait keeps a network "
                    "running before its links have key)"
                ) from None
            key_s = time.monotonic() - started
            console.print(
                f"[green]✓[/] every link ({len(plan.links)}) distilled key "
                f"{key_s:.1f} s after deploy"
            )
    if not quiet:
        console.print(nodes_table(plan, info))
        console.print(
            f"telemetry: mqtts://{plan.broker_address} topics {plan.topic_prefix}/#\n"
            f"  {_command('inspect', plan)}\n  {_command('watch', plan)}\n"
            f"  {_command('destroy', plan)}",
            highlight=False,
            soft_wrap=True,
        )
    return {
        "name": plan.name,
        "runtime": plan.runtime,
        "state_dir": str(plan.state_dir),
        "subnet": plan.network_cidr,
        "broker": plan.broker_address,
        "nodes": nodes_json(plan, info),
        "ready_seconds": ready_s,
        "key_seconds": key_s,
        **({"domain": plan.domain.as_json()} if plan.domain else {}),
    }


def _deployed(opts: NetworkOptions) -> list[NetworkPlan]:
    """The deployments `opts` names that are deployed (NotDeployed when none is); a topology
    with domains may have some of its domains deployed here, the others elsewhere."""
    plans = load_plans(opts)
    if len(plans) == 1:
        _require_registered(plans[0])
        return plans
    deployed = [plan for plan in plans if registration(plan) is not None]
    if not deployed:
        names = ", ".join(plan.name for plan in plans)
        raise NotDeployed(f"no domain of {opts.topology} is deployed here ({names}; {_LISTING})")
    return deployed


def _domain_heading(plan: NetworkPlan, console: Console) -> None:
    if plan.domain is not None:
        console.print(
            f"[bold]domain {plan.domain.domain}[/] (deployment {plan.name}, {plan.network_cidr})",
            highlight=False,
        )


def destroy(opts: NetworkOptions, console: Console, *, keep_state: bool) -> int:
    plans = load_plans(opts)
    present = [p for p in plans if registration(p) is not None or p.state_dir.exists()]
    if not present:
        raise NotDeployed(f"{plans[0].name} is not deployed on this machine ({_LISTING})")
    for plan in present:
        _destroy_one(plan, console, keep_state=keep_state)
    return 0


def _destroy_one(plan: NetworkPlan, console: Console, *, keep_state: bool) -> None:
    with Progress(console, f"destroying {plan.name}"):
        report = runtime_for(plan).destroy(keep_state=keep_state)
    gone = [*report.stopped, *report.killed]
    unit = "container(s)" if plan.runtime == "docker" else "process(es)"
    killed = f" ({len(report.killed)} needed SIGKILL: {', '.join(report.killed)})"
    console.print(
        f"[green]✓[/] {plan.name}: stopped {len(gone)} {unit}"
        + (killed if report.killed else "")
        + (f"; removed {plan.state_dir}" if report.state_removed else "")
        + f"; released {plan.network_cidr}",
        highlight=False,
        soft_wrap=True,
    )


def _unreachable(info: DeploymentInfo, snapshot: NetworkSnapshot | None) -> set[str]:
    """Running nodes that did not answer the status call."""
    if snapshot is None:
        return set()
    return {
        name
        for name, node in info.nodes.items()
        if node.state == "running" and snapshot.nodes.get(name) is None
    }


def inspect(opts: NetworkOptions, console: Console, *, as_json: bool) -> int:
    """Nodes, links and (for a topology with domains) borders of every deployed domain."""
    plans = _deployed(opts)
    shown, status = [], 0
    for plan in plans:
        _domain_heading(plan, console) if not as_json else None
        part, code = _inspect_one(plan, console, as_json=as_json)
        shown.append(part)
        status = max(status, code)
    if as_json:
        domain = plans[0].domain
        whole = {"name": domain.topology, "domains": shown} if domain else shown[0]
        print(json.dumps(whole, indent=2))
    return status


def _inspect_one(
    plan: NetworkPlan, console: Console, *, as_json: bool
) -> tuple[dict[str, Any], int]:
    info = runtime_for(plan).inspect()
    snapshot = asyncio.run(_snapshot(plan, _running(info))) if info.running else None
    unreachable = _unreachable(info, snapshot)
    rows = rows_from_snapshot(plan, snapshot, info) if snapshot else []
    virtual = virtual_links_json(snapshot)
    entry = registration(plan)
    part = {
        "name": plan.name,
        "runtime": info.runtime,
        "state_dir": info.state_dir,
        "subnet": plan.network_cidr,
        "deployed_at": entry.created if entry else None,
        "as_of": time.time(),
        "broker": {
            "address": info.broker_address,
            "state": info.broker.state if info.broker else "external",
            "detail": info.broker.detail if info.broker else "",
            "since": info.broker.since if info.broker else None,
            "pid": info.broker.pid if info.broker else None,
            "topics": f"{plan.topic_prefix}/#",
        },
        "nodes": nodes_json(plan, info, unreachable),
        "links": [row.as_json() for row in rows],
        "virtual_links": virtual,
        "ca": str(plan.pki_dir / "ca.pem"),
        **({"domain": plan.domain.as_json()} if plan.domain else {}),
    }
    if not as_json:
        console.print(nodes_table(plan, info, unreachable))
        if rows:
            console.print(links_table(rows))
        if virtual:
            console.print(virtual_links_table(virtual))
        if plan.domain is not None and plan.domain.borders:
            console.print(borders_table(plan, snapshot))
    if not info.running:
        console.print(
            f"{plan.name} is deployed but none of it runs (state dir {plan.state_dir}); "
            f"start nodes with {_command('start', plan, '--all')}, or remove it with "
            f"{_command('destroy', plan)}",
            style="yellow",
            highlight=False,
            soft_wrap=True,
        )
        return part, 1
    return part, 0


def inspect_all(console: Console, *, as_json: bool) -> int:
    """Every deployment on this machine: name, runtime, state dir, addresses, nodes up, age."""
    rows: list[dict[str, Any]] = []
    now = time.time()
    for entry in Registry().all():
        row: dict[str, Any] = {
            "name": entry.name,
            "runtime": entry.runtime,
            "state_dir": str(entry.state_dir),
            "subnet": entry.subnet,
            "topology": str(entry.topology),
            "deployed_at": entry.created,
            "age_seconds": round(now - entry.created, 1),
            "nodes_up": None,
            "nodes": None,
            "broker": None,
            "error": None,
        }
        try:
            plan = load_plan(NetworkOptions(None, name=entry.name))
            info = runtime_for(plan).inspect()
            row["nodes_up"] = sum(node.state == "running" for node in info.nodes.values())
            row["nodes"] = len(info.nodes)
            row["broker"] = info.broker.describe() if info.broker else "external"
        except QkdnetError as exc:
            row["error"] = str(exc)
        rows.append(row)
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        console.print("no deployment on this machine")
        return 0
    table = Table(title="deployments on this machine", title_justify="left")
    for column in ("name", "runtime", "nodes up", "broker", "addresses", "age", "state dir"):
        table.add_column(column, no_wrap=column in ("name", "addresses", "state dir"))
    for row in rows:
        nodes = "?" if row["nodes"] is None else f"{row['nodes_up']}/{row['nodes']}"
        table.add_row(
            Text(row["name"]),
            row["runtime"],
            nodes,
            Text(row["broker"] or (row["error"] or "?")),
            row["subnet"],
            format_age(row["age_seconds"]),
            Text(row["state_dir"]),
        )
    console.print(table)
    return 0


def _running(info: DeploymentInfo) -> set[str]:
    return {name for name, node in info.nodes.items() if node.state == "running"}


async def _snapshot(plan: NetworkPlan, only: set[str] | None = None) -> NetworkSnapshot:
    """Every running node's status (paused or ended nodes are not asked: they cannot answer)."""
    from ..client.network_status import NetworkStatus

    async with NetworkStatus(plan) as status:
        return await status.snapshot(only=only)


def expand_targets(plan: NetworkPlan, names: list[str]) -> list[str]:
    """The targets with "*" (`--all`) replaced by every node of the deployment."""
    if "*" not in names:
        return names
    rest = [name for name in names if name != "*" and name not in plan.nodes]
    return [*plan.nodes, *rest]


def lifecycle(opts: NetworkOptions, console: Console, action: str, names: list[str]) -> int:
    """start, stop, kill or restart nodes (or the broker, named `BROKER`); of a topology
    with domains, in whichever deployed domain each node is (`--all`, `--broker`: in each)."""
    plans = _deployed(opts)
    work: list[tuple[Runtime, str, str]] = []
    for plan in plans:
        runtime: Runtime = runtime_for(plan)
        mine = [n for n in expand_targets(plan, names) if n in plan.nodes or n == BROKER]
        if len(plans) == 1:
            mine = expand_targets(plan, names)
        for name in mine:
            if name != BROKER:
                runtime.check_node(name)
            label = "the broker" if name == BROKER else name
            if plan.domain is not None and len(plans) > 1:
                label += f" of domain {plan.domain.domain}"
            work.append((runtime, name, label))
    unknown = set(names) - {name for _, name, _ in work} - {"*"}
    if unknown:
        known = ", ".join(n for plan in plans for n in plan.nodes)
        raise ConfigError(f"no node {sorted(unknown)[0]!r} in a deployed domain ({known})")
    for runtime, name, label in work:
        with Progress(console, f"{action} {label}"):
            getattr(runtime, action)(name)
        console.print(f"[green]✓[/] {action} {label}")
    return 0


def watch(
    opts: NetworkOptions, console: Console, *, duration: float | None, as_json: bool = False
) -> int:
    """A live table fed by MQTT until Ctrl-C (or `duration` seconds); to a pipe (or with
    `--json`), one line per update."""
    from .network_watch import watch_deployment

    plan = load_plan(opts)
    _require_registered(plan)
    lines = as_json or not console.is_terminal
    watch_deployment(
        plan, runtime_for(plan), console, duration=duration, lines=lines, as_json=as_json
    )
    return 0


def graph(opts: NetworkOptions, console: Console, *, output: Path | None) -> int:
    """Draw the topology (with live secret key rates where it is deployed); a topology with
    domains is drawn whole, each domain framed, unless --domain names one."""
    from .graph import render_graph

    plans = load_plans(opts)
    rates: dict[str, float] = {}
    for plan in plans:
        info = runtime_for(plan).inspect() if registration(plan) is not None else None
        if info is not None and info.running:
            snapshot = asyncio.run(_snapshot(plan, _running(info)))
            rates.update(
                (row.link, row.secret_rate_bps)
                for row in rows_from_snapshot(plan, snapshot)
                if row.secret_rate_bps is not None
            )
    whole = plans[0].domain is not None and opts.domain is None and opts.topology is not None
    topology = _load_topology(opts.topology) if whole and opts.topology else plans[0].topology
    path = render_graph(topology, output or Path(f"{topology.name}.png"), rates or None)
    console.print(f"[green]✓[/] wrote {path}" + (" with live key rates" if rates else ""))
    return 0


def export_ca(opts: NetworkOptions, console: Console, *, output: Path | None) -> int:
    """Write the CA certificate of a deployment (of one domain), creating its PKI if need be."""
    plans = load_plans(opts)
    if len(plans) > 1:
        raise ConfigError(
            f"{opts.topology} has domains, each with its own CA: name one with --domain"
        )
    plan = plans[0]
    pem = plan.provision_pki().ca.read_bytes()
    if output is None:
        sys.stdout.write(pem.decode())
        return 0
    try:
        output.write_bytes(pem)  # a certificate: public
    except OSError as exc:
        raise ConfigError(f"--output {output}: {exc.strerror}") from None
    console.print(f"[green]✓[/] wrote the CA certificate of {plan.name} to {output}")
    return 0


def require_deployed(plan: NetworkPlan, saes: list[str], deploy_hint: str = "") -> None:
    """NotDeployed (a ConfigError) when the registry does not hold the deployment
    (`deploy_hint`: the command that would deploy it) or nothing of it runs; QkdnetError when
    a node serving one of `saes` is not running."""
    _require_registered(plan, deploy_hint)
    info = runtime_for(plan).inspect()
    if not info.running:
        raise NotDeployed(
            f"{plan.name} is deployed but none of it runs; start it with "
            f"{_command('start', plan, '--all')}"
        )
    for sae in saes:
        node = plan.node_of_sae(sae).node_id
        state = info.nodes[node]
        if state.state != "running":
            raise QkdnetError(f"node {node}, which serves {sae}, is {state.describe()}")
