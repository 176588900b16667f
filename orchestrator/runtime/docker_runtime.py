"""The docker runtime: every node in its own container, the broker (Mosquitto) in another.

One user-defined bridge network per deployment, `qkdnet-<name>`, with the fixed subnet
`10.X.0.0/16` the plan derives from the topology name (network_plan.py): the broker container has
the static IP `10.X.0.1`, node `k` `10.X.(1 + k // 250).(1 + k % 250)`, so node certificates name
their IPs and addresses survive restarts. On Linux the host routes to a bridge network, so the
orchestrator (NetworkStatus, wait_for_key, ETSI 014 clients) talks to the containers directly.

Each node container (the `qkdnet-node` image, default command
`qkdnet node --config /etc/qkdnet/node.yaml`) mounts:

- `<state dir>/nodes/<id>/` read-only on /etc/qkdnet: node.yaml with container paths, and copies of
  the node's certificate, key, the CA and its links' secrets, readable by the node's uid (10001);
- the named volume `qkdnet-<name>-<id>` on /var/lib/qkdnet: its key stores, which survive
  stop/kill/restart and `destroy --keep-state`.

Docker labels are the only source of truth: every container, the network and every volume carry
`org.qkdnet.deployment=<name>`, `org.qkdnet.state-dir=<state dir>` and `org.qkdnet.role`
(node, broker, network, store), nodes and stores also `org.qkdnet.node=<id>`. `inspect` and
`destroy` list by those labels, so they work after the orchestrator crashed and touch nothing
else. `runtime.json` in the state directory records that the deployment runs on docker, so that
the other verbs pick this runtime without `--runtime`.

Readiness is the nodes' gRPC health service (over mutual TLS, with the orchestrator's
certificate) answering SERVING.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import shutil
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from docker.errors import APIError, ImageNotFound, NotFound
from docker.types import IPAMConfig, IPAMPool, LogConfig

from qkdnet.node.errors import ConfigError
from qkdnet.node.file_modes import private_dir, write_private

from ..plan.container_layout import NODE_UID
from ..plan.network_plan import NetworkPlan, NodePlan
from .docker_faults import ContainerFaults
from .faults import (
    FAULTS_FILE,
)
from .images import (
    NODE_CONFIG_DIR,
    NODE_STATE_DIR,
    docker_client,
    image_tags,
    installed_version,
)
from .readiness import health_serving, wait_ready
from .seam import (
    BROKER,
    ComponentState,
    DeployError,
    DeploymentInfo,
    DestroyReport,
    EventSink,
    State,
    UnknownComponent,
    ended,
)
from .venv_volume import VENV_DIR, venv_volume_for

__all__ = [
    "LABEL_DEPLOYMENT",
    "LABEL_NODE",
    "LABEL_ROLE",
    "LABEL_STATE_DIR",
    "DockerRuntime",
    "remove_state_dir",
]

LABEL_DEPLOYMENT = "org.qkdnet.deployment"
LABEL_STATE_DIR = "org.qkdnet.state-dir"
LABEL_NODE = "org.qkdnet.node"
LABEL_ROLE = "org.qkdnet.role"  # node, broker, network, store

_POLL = 0.2
_LOG_TAIL = 15


def _docker_time(text: Any) -> float | None:
    """Seconds since the epoch of a Docker timestamp (2026-12-07T15:44:26.123456789Z); None
    for its "never" (year 1) or what does not parse."""
    if not isinstance(text, str) or text.startswith("0001-"):
        return None
    head, _, fraction = text.rstrip("Z").partition(".")
    try:
        moment = datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.UTC)
    except ValueError:
        return None
    return moment.timestamp() + float(f"0.{fraction[:6] or 0}")


def remove_state_dir(path: Path) -> None:
    """Remove a state directory, including node directories made read-only for containers."""
    if not path.exists():
        return
    for entry in [path, *path.rglob("*")]:
        if entry.is_dir() and not entry.is_symlink():
            with contextlib.suppress(OSError):
                os.chmod(entry, 0o700)
    shutil.rmtree(path)


class DockerRuntime(ContainerFaults):
    """Nodes and the broker as containers on the deployment's own bridge network."""

    name = "docker"

    def __init__(
        self, plan: NetworkPlan, on_event: EventSink | None = None, client: Any = None
    ) -> None:
        super().__init__(plan, on_event)
        self._client = client
        tags = image_tags(installed_version())
        self.node_image = tags["node"]
        self.broker_image = tags["broker"]

    # -- names and labels ----------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = docker_client()
        return self._client

    @property
    def network_name(self) -> str:
        return f"qkdnet-{self.plan.name}"

    def container_name(self, name: str) -> str:
        """The container of a node, or of the broker (`BROKER`)."""
        # Node IDs start with a letter or digit, so "--broker" is never a node's.
        return f"qkdnet-{self.plan.name}--broker" if name == BROKER else self.volume_name(name)

    def volume_name(self, node_id: str) -> str:
        return f"qkdnet-{self.plan.name}-{node_id}"

    def labels(self, role: str, node_id: str | None = None) -> dict[str, str]:
        labels = {
            LABEL_DEPLOYMENT: self.plan.name,
            LABEL_STATE_DIR: str(self.plan.state_dir),
            LABEL_ROLE: role,
        }
        if node_id is not None:
            labels[LABEL_NODE] = node_id
        return labels

    def _filters(self) -> dict[str, Any]:
        return {
            "label": [
                f"{LABEL_DEPLOYMENT}={self.plan.name}",
                f"{LABEL_STATE_DIR}={self.plan.state_dir}",
            ]
        }

    def _containers(self) -> dict[str, Any]:
        """This deployment's containers by node ID (the broker's under `BROKER`)."""
        found: dict[str, Any] = {}
        for container in self.client.containers.list(
            all=True, ignore_removed=True, filters=self._filters()
        ):
            labels = container.labels
            if labels.get(LABEL_ROLE) == "broker":
                found[BROKER] = container
            elif labels.get(LABEL_NODE):
                found[labels[LABEL_NODE]] = container
        return found

    def containers(self) -> dict[str, Any]:
        """This deployment's containers (Docker SDK objects) by node ID, the broker's under
        `BROKER`."""
        return self._containers()

    def _container(self, name: str) -> Any | None:
        return self._containers().get(name)

    def _running(self, name: str) -> Any | None:
        """The running (or paused) container of a known node (or the broker); None when it is
        not running."""
        self._check_broker(name)
        if name != BROKER:
            self._node(name)
        container = self._container(name)
        live = container is not None and container.status in ("running", "paused")
        return container if live else None

    def _node(self, name: str) -> NodePlan:
        node = self.plan.nodes.get(name)
        if node is None:
            known = ", ".join(self.plan.nodes)
            raise UnknownComponent(f"no node {name!r} in {self.plan.name} (nodes: {known})")
        return node

    def _check_broker(self, name: str) -> None:
        if name == BROKER and self.plan.external_broker is not None:
            raise UnknownComponent("this deployment uses an external broker")

    @property
    def _record_path(self) -> Path:
        return Path(self.plan.state_dir) / "runtime.json"

    def _save_record(self) -> None:
        record = {
            "name": self.plan.name,
            "runtime": self.name,
            "subnet": self.plan.subnet,
            "network": self.network_name,
            "cidr": self.plan.network_cidr,
            "images": {"node": self.node_image, "broker": self.broker_image},
        }
        write_private(self._record_path, json.dumps(record, indent=2))

    # -- queries -------------------------------------------------------------------------------

    def inspect(self) -> DeploymentInfo:
        containers = self._containers()

        def state(name: str, address: str) -> ComponentState:
            container = containers.get(name)
            if container is None:
                return ComponentState(name, "stopped", address, detail="no container")
            attrs = container.attrs["State"]
            if container.status not in ("running", "paused"):
                if container.status == "created":
                    return ComponentState(name, "stopped", address, detail="never started")
                kind: State
                if attrs.get("OOMKilled"):
                    kind, detail = "crashed", "killed: out of memory"
                else:
                    kind, detail = ended(code=int(attrs.get("ExitCode") or 0))
                since = _docker_time(attrs.get("FinishedAt"))
                return ComponentState(name, kind, address, detail=detail, since=since)
            pid = int(attrs.get("Pid") or 0)
            paused = container.status == "paused"
            return ComponentState(
                name,
                "paused" if paused else "running",
                address,
                pid or None,
                since=_docker_time(attrs.get("StartedAt")),
            )

        nodes = {node_id: state(node_id, node.address) for node_id, node in self.plan.nodes.items()}
        broker = None
        if self.plan.external_broker is None:
            broker = state(BROKER, self.plan.broker_address)
        return self._deployment_info(nodes, broker)

    def logs(self, name: str, tail: int = _LOG_TAIL) -> str:
        """The last lines of a node's (or the broker's) container log."""
        container = self._container(name)
        if container is None:
            return "no container"
        with contextlib.suppress(APIError):
            text = bytes(container.logs(tail=tail)).decode(errors="replace").strip()
            return text or "no output"
        return "no log"

    # -- deploy --------------------------------------------------------------------------------

    def _deploy(self, timeout: float) -> DeploymentInfo:
        containers = self._containers()
        if any(c.status in ("running", "restarting", "paused") for c in containers.values()):
            raise ConfigError(
                f"{self.plan.name} is already deployed in containers (state in "
                f"{self.plan.state_dir}); run qkdnet destroy --name {self.plan.name} first"
            )
        self._check_network_free()
        for image in (self.node_image, self.broker_image):
            try:
                self.client.images.get(image)
            except ImageNotFound:
                raise ConfigError(
                    f"image {image} is missing: build it with qkdnet image build"
                ) from None
        for container in containers.values():  # left over, stopped: made afresh below
            container.remove(force=True)
        private_dir(Path(self.plan.state_dir))
        (Path(self.plan.state_dir) / FAULTS_FILE).unlink(missing_ok=True)
        pki = self.plan.provision_pki()
        self.emit("pki_ready", self.plan.name, str(self.plan.pki_dir))
        self.plan.write_node_configs(pki)
        self.plan.write_broker_files(pki)
        self._save_record()
        try:
            self._ensure_network()
            if self.plan.external_broker is None:
                self._start_broker(timeout=30.0)
            nodes = list(self.plan.nodes.values())
            with ThreadPoolExecutor(max_workers=min(16, len(nodes))) as pool:
                list(pool.map(self._launch, nodes))
            self._wait_ready(nodes, timeout)
        except BaseException:
            self._remove_all(grace=5)
            raise
        return self.inspect()

    def _check_network_free(self) -> None:
        """ConfigError when the network's name is another deployment's."""
        with contextlib.suppress(NotFound):
            network = self.client.networks.get(self.network_name)
            labels = network.attrs.get("Labels") or {}
            if labels.get(LABEL_STATE_DIR) != str(self.plan.state_dir):
                owner = labels.get(LABEL_STATE_DIR) or "not qkdnet"
                raise ConfigError(
                    f"docker network {self.network_name} exists already ({owner}); "
                    "destroy that deployment first"
                )

    def _ensure_network(self) -> Any:
        for network in self.client.networks.list(filters=self._filters()):
            if network.name == self.network_name:
                return network
        pool = IPAMPool(subnet=self.plan.network_cidr, gateway=self._gateway())
        try:
            network = self.client.networks.create(
                self.network_name,
                driver="bridge",
                ipam=IPAMConfig(pool_configs=[pool]),
                labels=self.labels("network"),
                check_duplicate=True,
            )
        except APIError as exc:
            raise DeployError(
                f"cannot create docker network {self.network_name} on "
                f"{self.plan.network_cidr}: {exc.explanation or exc}"
            ) from None
        self.emit("network_created", self.network_name, self.plan.network_cidr)
        return network

    def _gateway(self) -> str:
        prefix = self.plan.network_cidr.rsplit(".", 2)[0]
        return f"{prefix}.255.254"

    def _volume(self, node_id: str) -> str:
        name = self.volume_name(node_id)
        try:
            volume = self.client.volumes.get(name)
        except NotFound:
            self.client.volumes.create(name, labels=self.labels("store", node_id))
            return name
        if (volume.attrs.get("Labels") or {}).get(LABEL_STATE_DIR) != str(self.plan.state_dir):
            raise ConfigError(f"docker volume {name} exists already and is not this deployment's")
        return name

    def _create(self, name: str, image: str, ip: str, **options: Any) -> Any:
        endpoint = self.client.api.create_endpoint_config(ipv4_address=ip)
        return self.client.containers.create(
            image,
            name=self.container_name(name),
            network=self.network_name,
            networking_config={self.network_name: endpoint},
            log_config=LogConfig(type="json-file", config={"max-size": "10m", "max-file": "2"}),
            detach=True,
            **options,
        )

    def _create_node(self, node: NodePlan) -> Any:
        volume = self._volume(node.node_id)
        volumes = {
            str(node.config_path.parent): {"bind": NODE_CONFIG_DIR, "mode": "ro"},
            volume: {"bind": NODE_STATE_DIR, "mode": "rw"},
        }
        if self._venv_volume is not None:  # the environment off fuse-overlayfs: venv_volume
            volumes[self._venv_volume] = {"bind": VENV_DIR, "mode": "ro"}
        return self._create(
            node.node_id,
            self.node_image,
            node.host,
            hostname=node.node_id,
            labels=self.labels("node", node.node_id),
            volumes=volumes,
            stop_signal="SIGTERM",
            # For `qkdnet fault` (ip route, tc), run by `docker exec` as root; the node itself
            # runs as uid 10001 and holds no capability.
            cap_add=["NET_ADMIN"],
        )

    @functools.cached_property
    def _venv_volume(self) -> str | None:
        """The node image's environment volume, looked up once (not once a node)."""
        return venv_volume_for(self.client, self.client.images.get(self.node_image))

    def _launch(self, node: NodePlan) -> None:
        self._create_node(node).start()
        self.emit("node_started", node.node_id, node.address)

    def _start_broker(self, timeout: float) -> None:
        container = self._container(BROKER)
        if container is None:
            container = self._create(
                BROKER,
                self.broker_image,
                self.plan.broker_host,
                hostname="broker",
                labels=self.labels("broker"),
                # Mosquitto with the deployment's TLS files and access list (mosquitto.py), as
                # the nodes' user, who owns them.
                command=["-c", f"{NODE_CONFIG_DIR}/mosquitto.conf"],
                user=f"{NODE_UID}:{NODE_UID}",
                volumes={str(self.plan.broker_dir): {"bind": NODE_CONFIG_DIR, "mode": "ro"}},
            )
        container.start()
        host, port = self.plan.broker_host, int(self.plan.broker_address.rpartition(":")[2])
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
                break
            container.reload()
            if container.status not in ("running", "created"):
                raise DeployError(f"the broker container exited: {self.logs(BROKER)}")
            if time.monotonic() > deadline:
                raise DeployError(
                    f"the broker container does not answer on {host}:{port} from this host "
                    f"after {timeout:.0f} s (is the bridge network routed?): {self.logs(BROKER)}"
                )
            time.sleep(_POLL)
        self.emit("broker_started", BROKER, self.plan.broker_address)

    def _wait_ready(self, nodes: list[NodePlan], timeout: float) -> None:
        def ready(node: NodePlan) -> None:
            self.emit("node_ready", node.node_id, node.address)

        wait_ready(nodes, _ContainerProbe(self), timeout, ready)

    # -- per node ------------------------------------------------------------------------------

    def start(self, name: str, timeout: float = 60.0) -> None:
        from . import node_faults  # grpc: only for faults

        self._check_broker(name)
        if name == BROKER:
            container = self._container(BROKER)
            if container is None or container.status != "running":
                self._ensure_network()
                self._start_broker(timeout=min(timeout, 30.0))
            return
        node = self._node(name)
        container = self._container(name)
        if container is not None and container.status == "running":
            return
        if container is None:
            self._ensure_network()
            container = self._create_node(node)
        container.start()
        self.emit("node_started", name, node.address)
        self._reapply_faults(name)
        self._wait_ready([node], timeout)
        node_faults.sync_runtime(self, [name])  # the faults the node holds itself

    def stop(self, name: str, timeout: float = 10.0) -> None:
        container = self._running(name)
        if container is None:
            return
        if container.status == "paused":  # it could not handle SIGTERM before
            container.unpause()
        container.stop(timeout=max(1, round(timeout)))
        self.emit("node_stopped" if name != BROKER else "broker_stopped", name, "SIGTERM")

    def kill(self, name: str) -> None:
        container = self._running(name)
        if container is None:
            return
        with contextlib.suppress(APIError):  # it may have exited meanwhile
            container.kill()
        container.wait(timeout=30)
        self.emit("node_stopped" if name != BROKER else "broker_stopped", name, "SIGKILL")

    # -- faults --------------------------------------------------------------------------------

    def pause(self, name: str) -> None:
        container = self._live(name)
        if container.status != "paused":
            container.pause()
        self.emit("paused", name)

    def unpause(self, name: str) -> None:
        from . import node_faults  # grpc: only for faults

        container = self._live(name)
        if container.status == "paused":
            container.unpause()
        self.emit("unpaused", name)
        if name != BROKER:
            self._reapply_faults(name)
            node_faults.sync_runtime(self, [name])

    # -- destroy -------------------------------------------------------------------------------

    def run_application(
        self,
        name: str,
        command: list[str],
        *,
        volumes: dict[str, dict[str, str]],
        cap_add: list[str] | None = None,
        devices: list[str] | None = None,
    ) -> Any:
        """Start a container beside the nodes (an application of the deployment, such as the
        WireGuard demo's encryptors): the node image with its Python environment, running
        `python COMMAND...` as root, on the deployment's network (reachable by its name,
        `qkdnet-<deployment>-app-<name>`); removed with the deployment."""
        volumes = dict(volumes)
        if self._venv_volume is not None:
            volumes[self._venv_volume] = {"bind": VENV_DIR, "mode": "ro"}
        container = self.client.containers.create(
            self.node_image,
            command,
            name=self.application_name(name),
            entrypoint=["python"],
            user="root",
            network=self.network_name,
            labels=self.labels("application"),
            volumes=volumes,
            cap_add=cap_add or [],
            devices=devices or [],
            log_config=LogConfig(type="json-file", config={"max-size": "10m", "max-file": "2"}),
            detach=True,
        )
        container.start()
        return container

    def application_name(self, name: str) -> str:
        return f"qkdnet-{self.plan.name}-app-{name}"

    def _applications(self) -> list[Any]:
        filters = self._filters()
        filters["label"] = [*filters["label"], f"{LABEL_ROLE}=application"]
        return list(self.client.containers.list(all=True, ignore_removed=True, filters=filters))

    def _remove_all(self, grace: int) -> tuple[list[str], list[str]]:
        """Stop (applications, then nodes, the broker last) and remove every container of the
        deployment, then its network. Returns (stopped, killed): the names of the nodes and
        the broker that ran and how they ended."""
        for application in self._applications():
            with contextlib.suppress(NotFound, APIError):
                application.remove(force=True)
        containers = self._containers()
        broker = containers.pop(BROKER, None)
        stopped: list[str] = []
        killed: list[str] = []

        def finish(item: tuple[str, Any]) -> None:
            name, container = item
            if container.status in ("running", "restarting", "paused"):
                with contextlib.suppress(APIError):
                    if container.status == "paused":
                        container.unpause()
                    container.stop(timeout=grace)
                container.reload()
                code = container.attrs["State"].get("ExitCode")
                (killed if code == 137 else stopped).append(name)
            with contextlib.suppress(NotFound):
                container.remove(force=True)

        if containers:
            with ThreadPoolExecutor(max_workers=min(32, len(containers))) as pool:
                list(pool.map(finish, containers.items()))
        if broker is not None:
            finish((BROKER, broker))
        for network in self.client.networks.list(filters=self._filters()):
            with contextlib.suppress(NotFound):
                network.remove()
        return sorted(stopped), sorted(killed)

    def _destroy(self, keep_state: bool) -> DestroyReport:
        stopped, killed = self._remove_all(grace=10)
        for name in [*stopped, *killed]:
            self.emit("stopped", name)
        removed = False
        if not keep_state:
            for volume in self.client.volumes.list(filters=self._filters()):
                with contextlib.suppress(NotFound):
                    volume.remove(force=True)
            if Path(self.plan.state_dir).exists():
                remove_state_dir(Path(self.plan.state_dir))
                removed = True
        return DestroyReport(stopped=stopped, killed=killed, state_removed=removed)


class _ContainerProbe:
    """Readiness in containers: the node's gRPC health service; a container that exited has
    failed, and its log tells why."""

    def __init__(self, runtime: DockerRuntime) -> None:
        self._runtime = runtime

    def ready(self, node: NodePlan) -> bool:
        return health_serving(node, self._runtime.plan.controller_credentials)

    def failure(self, node: NodePlan) -> str | None:
        container = self._runtime._container(node.node_id)
        if container is not None and container.status not in ("exited", "dead"):
            return None
        return (
            f"node {node.node_id} exited during start-up "
            f"(container {self._runtime.container_name(node.node_id)}); its log ends:\n"
            f"{self._runtime.logs(node.node_id)}"
        )

    def timed_out(self, waiting: Sequence[str], timeout: float) -> str:
        return (
            f"not ready (gRPC health) after {timeout:.0f} s: {', '.join(waiting)}; "
            f"the log of {waiting[0]} ends:\n{self._runtime.logs(waiting[0])}"
        )
