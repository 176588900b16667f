"""The runtime seam: one typed interface for starting and finding a deployment's nodes.

A runtime knows how to run nodes (and the embedded MQTT broker) somewhere: as local processes
(`process_runtime.ProcessRuntime`) or as containers (`docker_runtime.DockerRuntime`). It never
prints: progress goes out as `RuntimeEvent`s to a callback the caller chooses (the CLI draws
them, tests collect them).
Every method works from the state the runtime can observe, so a new orchestrator process can
inspect or destroy what a crashed one started.
"""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from qkdnet.node.errors import ConfigError, QkdnetError
from qkdnet.node.file_modes import private_dir

from ..plan.network_plan import NetworkPlan
from ..plan.registry import Registry
from .faults import FaultReport, FaultUnsupported, Impairment, link_pair

__all__ = [
    "BROKER",
    "ComponentState",
    "DeployError",
    "DeploymentInfo",
    "DestroyReport",
    "Runtime",
    "RuntimeEvent",
    "State",
    "UnknownComponent",
    "ended",
]

BROKER = "@broker"  # the embedded broker, for start/stop/kill/restart ('@' is not in node IDs)

State = Literal["running", "paused", "stopped", "crashed"]


class DeployError(QkdnetError):
    """A deployment could not be started (a node exited, a port is taken, a timeout)."""


class UnknownComponent(ConfigError):
    """No node (or broker) of that name in the deployment."""


@dataclass(frozen=True)
class RuntimeEvent:
    """Something a runtime did: `kind` such as "broker_started", "node_ready", "node_stopped"."""

    kind: str
    subject: str
    detail: str = ""


EventSink = Callable[[RuntimeEvent], None]


@dataclass(frozen=True)
class ComponentState:
    """A node or the broker as the runtime sees it now.

    `state`: running, paused (frozen: SIGSTOP or docker pause), stopped (exited cleanly, or
    never started) or crashed (`detail` says how: "killed by SIGKILL", "exit status 1").
    `since`: when it started (running, paused) or ended (stopped, crashed), in seconds since
    the epoch, when known.
    """

    name: str
    state: State
    address: str
    pid: int | None = None
    detail: str = ""
    since: float | None = None

    @property
    def live(self) -> bool:
        """Whether it is running or paused (a process or container exists)."""
        return self.state in ("running", "paused")

    def describe(self) -> str:
        """'crashed (killed by SIGKILL)' or 'running'."""
        return f"{self.state} ({self.detail})" if self.detail else self.state


def ended(*, code: int | None = None, signal_number: int | None = None) -> tuple[State, str]:
    """How a node or the broker ended, from its exit status or the signal that killed it.

    Exit status 0, or death by SIGTERM or SIGINT (what stop sends), is "stopped"; anything
    else is "crashed", with what happened. Container runtimes report death by signal N as exit
    status 128 + N."""
    if signal_number is None and code is not None and code > 128:
        signal_number = code - 128
    if signal_number is not None:
        try:
            name = signal.Signals(signal_number).name
        except ValueError:
            name = f"signal {signal_number}"
        if signal_number in (signal.SIGTERM, signal.SIGINT):
            return "stopped", name
        return "crashed", f"killed by {name}"
    if not code:
        return "stopped", ""
    return "crashed", f"exit status {code}"


@dataclass(frozen=True)
class DeploymentInfo:
    """What is deployed: every node and the broker (`None` when an external one is used)."""

    name: str
    runtime: str
    state_dir: str
    broker: ComponentState | None
    broker_address: str
    nodes: dict[str, ComponentState] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        """Whether anything of the deployment is still running."""
        parts = [*self.nodes.values(), *([self.broker] if self.broker else [])]
        return any(part.live for part in parts)


@dataclass(frozen=True)
class DestroyReport:
    """What destroy did."""

    stopped: list[str]
    killed: list[str]
    state_removed: bool


class Runtime(ABC):
    """Runs one deployment described by a `NetworkPlan`."""

    name: ClassVar[str]

    def __init__(self, plan: NetworkPlan, on_event: EventSink | None = None) -> None:
        self.plan = plan
        self._on_event = on_event

    def emit(self, kind: str, subject: str, detail: str = "") -> None:
        if self._on_event is not None:
            self._on_event(RuntimeEvent(kind, subject, detail))

    def _deployment_info(
        self, nodes: dict[str, ComponentState], broker: ComponentState | None
    ) -> DeploymentInfo:
        return DeploymentInfo(
            name=self.plan.name,
            runtime=self.name,
            state_dir=str(self.plan.state_dir),
            broker=broker,
            broker_address=self.plan.broker_address,
            nodes=nodes,
        )

    def deploy(self, timeout: float = 120.0) -> DeploymentInfo:
        """Register the deployment (its name and address block, registry.py), create the PKI
        and configurations, start the broker and every node, wait for them.

        Raises DeployError (after stopping whatever it started and releasing a registration it
        made) when that fails; the state directory is kept, with the logs.
        """
        registry = Registry()
        with registry.deployment_lock(self.plan.name):
            return self._deploy_registered(registry, timeout)

    def _deploy_registered(self, registry: Registry, timeout: float) -> DeploymentInfo:
        plan = self.plan
        if self.inspect().running:
            raise ConfigError(
                f"{plan.name} is already deployed (state in {plan.state_dir}); "
                f"run qkdnet destroy --name {plan.name} first"
            )
        new = registry.get(plan.name) is None
        registry.claim(
            plan.name, plan.state_dir, self.name, plan.source or plan.state_dir, plan.subnet
        )
        try:
            private_dir(plan.state_dir)
            plan.save()
            return self._deploy(timeout)
        except BaseException:
            if new:
                registry.release(plan.name, plan.state_dir)
            raise

    @abstractmethod
    def _deploy(self, timeout: float) -> DeploymentInfo:
        """What `deploy` does once the deployment is registered."""

    def destroy(self, keep_state: bool = False) -> DestroyReport:
        """Stop everything of the deployment; remove its state unless `keep_state`; release
        its registration (name and address block)."""
        registry = Registry()
        with registry.deployment_lock(self.plan.name):
            report = self._destroy(keep_state)
            registry.release(self.plan.name, self.plan.state_dir)
        return report

    @abstractmethod
    def _destroy(self, keep_state: bool) -> DestroyReport:
        """What `destroy` does before the registration is released."""

    @abstractmethod
    def inspect(self) -> DeploymentInfo:
        """The deployment as it is now."""

    @abstractmethod
    def start(self, name: str, timeout: float = 60.0) -> None:
        """Start a stopped node (or `BROKER`) and wait until it is ready."""

    @abstractmethod
    def stop(self, name: str, timeout: float = 10.0) -> None:
        """Stop a node (or `BROKER`) gracefully (SIGTERM, then SIGKILL after `timeout`)."""

    @abstractmethod
    def kill(self, name: str) -> None:
        """Kill a node (or `BROKER`) at once, as a crash would."""

    def restart(self, name: str, timeout: float = 60.0) -> None:
        """Stop, then start a node (or `BROKER`)."""
        self.stop(name)
        self.start(name, timeout)

    # -- faults (see faults.py); a runtime that cannot inject one says why ------------------

    @abstractmethod
    def pause(self, name: str) -> None:
        """Freeze a node (or `BROKER`): it keeps its state and connections but does nothing."""

    @abstractmethod
    def unpause(self, name: str) -> None:
        """Let a paused node (or `BROKER`) go on."""

    def cut_link(self, a: str, b: str) -> None:
        """Drop every packet between nodes `a` and `b` (a link of the topology) until restored."""
        raise FaultUnsupported(self._no_network_faults())

    def restore_link(self, a: str, b: str) -> None:
        """Undo `cut_link(a, b)`."""
        raise FaultUnsupported(self._no_network_faults())

    def set_impairment(self, node: str, impairment: Impairment) -> None:
        """Replace every impairment of `node`'s interface by `impairment` (none = reset)."""
        raise FaultUnsupported(self._no_network_faults())

    def faults(self) -> FaultReport:
        """The faults in force now."""
        paused = [n for n, c in self.inspect().nodes.items() if c.state == "paused"]
        return FaultReport(paused=paused, cuts=[], impairments={})

    def _no_network_faults(self) -> str:
        return (
            f"the {self.name} runtime runs every node in this host's network namespace, so it "
            "cannot cut links or impair interfaces; deploy with --runtime docker"
        )

    def check_node(self, name: str) -> None:
        """UnknownComponent (a user error) when the deployment has no node `name`."""
        if name not in self.plan.nodes:
            known = ", ".join(self.plan.nodes)
            raise UnknownComponent(f"no node {name!r} in {self.plan.name} (nodes: {known})")

    def check_link(self, a: str, b: str) -> tuple[str, str]:
        """The canonical pair of a link of the topology (UnknownComponent when there is none)."""
        for node in (a, b):
            if node not in self.plan.nodes:
                known = ", ".join(self.plan.nodes)
                raise UnknownComponent(f"no node {node!r} in {self.plan.name} (nodes: {known})")
        pair = link_pair(a, b)
        if pair not in {link_pair(*link.endpoints) for link in self.plan.links}:
            peers = sorted(
                next(iter(set(link.endpoints) - {a}))
                for link in self.plan.links
                if a in link.endpoints
            )
            raise UnknownComponent(
                f"no link between {a} and {b} in {self.plan.name} "
                f"({a} has links to {', '.join(peers) or 'nothing'})"
            )
        return pair
