"""The runtime seam: one typed interface for starting and finding a deployment's nodes.

A runtime knows how to run nodes (and the embedded MQTT broker) somewhere: as local processes
(`process_runtime.ProcessRuntime`) or as containers (`docker_runtime.DockerRuntime`). It never
prints: progress goes out as `RuntimeEvent`s to a callback the caller chooses (the CLI draws
them, tests collect them).
Every method works from the state the runtime can observe, so a new orchestrator process can
inspect or destroy what a crashed one started.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from qkdnet.node.errors import QkdnetError

from .network_plan import NetworkPlan

__all__ = [
    "BROKER",
    "ComponentState",
    "DeployError",
    "DeploymentInfo",
    "DestroyReport",
    "Runtime",
    "RuntimeEvent",
    "UnknownComponent",
    "runtime_for",
]

BROKER = "@broker"  # the embedded broker, for start/stop/kill/restart ('@' is not in node IDs)

State = Literal["running", "stopped"]


class DeployError(QkdnetError):
    """A deployment could not be started (a node exited, a port is taken, a timeout)."""


class UnknownComponent(QkdnetError):
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
    """A node or the broker as the runtime sees it now."""

    name: str
    state: State
    address: str
    pid: int | None = None


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
        return any(part.state == "running" for part in parts)


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

    @abstractmethod
    def deploy(self, timeout: float = 120.0) -> DeploymentInfo:
        """Create the PKI and configurations, start the broker and every node, wait for them.

        Raises DeployError (after stopping whatever it started) when that fails.
        """

    @abstractmethod
    def destroy(self, keep_state: bool = False) -> DestroyReport:
        """Stop everything of the deployment; remove its state unless `keep_state`."""

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


def runtime_for(plan: NetworkPlan, on_event: EventSink | None = None) -> Runtime:
    """The runtime the plan was laid out for (`--runtime`, runtime.json or the topology's)."""
    from .process_runtime import ProcessRuntime

    if plan.runtime == "docker":
        from .docker_runtime import DockerRuntime  # imports the Docker SDK

        return DockerRuntime(plan, on_event)
    runtimes: dict[str, type[Runtime]] = {ProcessRuntime.name: ProcessRuntime}
    return runtimes[plan.runtime](plan, on_event)
