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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
from docker.errors import APIError, ImageNotFound, NotFound
from docker.types import IPAMConfig, IPAMPool, LogConfig
from grpc_health.v1 import health_pb2, health_pb2_grpc

from qkdnet.node.edge.grpc_dial import credentials_from_files, dial_blocking
from qkdnet.node.errors import ConfigError, QkdnetError
from qkdnet.node.file_modes import private_dir, write_private

from ..plan.network_plan import CONTAINER_UID, NetworkPlan, NodePlan
from .faults import (
    FAULTS_FILE,
    FaultRecord,
    FaultReport,
    FaultUnsupported,
    Impairment,
    link_pair,
    netem_from_tc,
)
from .images import (
    NODE_CONFIG_DIR,
    NODE_STATE_DIR,
    docker_client,
    image_tags,
    installed_version,
)
from .seam import (
    BROKER,
    ComponentState,
    DeployError,
    DeploymentInfo,
    DestroyReport,
    EventSink,
    Runtime,
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
_IFACE = "eth0"  # a node container's one interface, on the deployment's network
_SEPARATOR = "--qkdnet--"  # between the outputs of two commands of one exec
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


class DockerRuntime(Runtime):
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
        for container in self.client.containers.list(all=True, filters=self._filters()):
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
                user=f"{CONTAINER_UID}:{CONTAINER_UID}",
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

    def _healthy(self, node: NodePlan) -> bool:
        """Whether the node's gRPC health service answers SERVING (mTLS, orchestrator cert)."""
        paths = self.plan.controller_credentials
        creds = credentials_from_files(paths.ca, paths.cert, paths.key)
        with dial_blocking(node.address, node.node_id, creds) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            except grpc.RpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def _wait_ready(self, nodes: list[NodePlan], timeout: float) -> None:
        waiting = {node.node_id: node for node in nodes}
        by_id = dict(waiting)
        deadline = time.monotonic() + timeout
        with ThreadPoolExecutor(max_workers=min(32, len(nodes) or 1)) as pool:
            while waiting:
                ready = dict(zip(waiting, pool.map(self._healthy, waiting.values()), strict=True))
                containers = self._containers() if not all(ready.values()) else {}
                for node_id, is_ready in ready.items():
                    if is_ready:
                        del waiting[node_id]
                        self.emit("node_ready", node_id, by_id[node_id].address)
                        continue
                    container = containers.get(node_id)
                    if container is None or container.status in ("exited", "dead"):
                        raise DeployError(
                            f"node {node_id} exited during start-up "
                            f"(container {self.container_name(node_id)}); its log ends:\n"
                            f"{self.logs(node_id)}"
                        )
                if waiting and time.monotonic() > deadline:
                    first = sorted(waiting)[0]
                    raise DeployError(
                        f"not ready (gRPC health) after {timeout:.0f} s: "
                        f"{', '.join(sorted(waiting))}; the log of {first} ends:\n"
                        f"{self.logs(first)}"
                    )
                if waiting:
                    time.sleep(_POLL)

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

    def _live(self, name: str) -> Any:
        container = self._running(name)
        if container is None:
            raise QkdnetError(f"{'the broker' if name == BROKER else name} is not running")
        return container

    def cut_link(self, a: str, b: str) -> None:
        pair = self.check_link(a, b)
        record = FaultRecord.load(self.plan.state_dir)
        record.cuts.add(pair)
        record.save(self.plan.state_dir)
        # One end suffices to cut both ways (its answers are dropped too); both are cut so that
        # neither node even tries, and a paused or stopped end gets it when it comes back.
        applied = [end for end, peer in ((a, b), (b, a)) if self._exec_route(end, "replace", peer)]
        if not applied:
            raise QkdnetError(f"neither {a} nor {b} is running: the cut applies once one starts")
        self.emit("link_cut", f"{a}--{b}", ", ".join(applied))

    def restore_link(self, a: str, b: str) -> None:
        pair = self.check_link(a, b)
        record = FaultRecord.load(self.plan.state_dir)
        record.cuts.discard(pair)
        record.save(self.plan.state_dir)
        for end, peer in ((a, b), (b, a)):
            self._exec_route(end, "delete", peer)
        self.emit("link_restored", f"{a}--{b}")

    def set_impairment(self, node: str, impairment: Impairment) -> None:
        """Kernel netem on the node's interface; where the kernel has no netem, the node's own
        shaping of its classical channels (qkdnet.node.edge.channel_shaping) stands in for it."""
        from . import node_faults  # grpc: only for faults

        container = self._live(node)
        if container.status == "paused":
            raise QkdnetError(f"{node} is paused: unpause it first")
        record = FaultRecord.load(self.plan.state_dir)
        if record.kernel_netem is not False:
            try:
                self._exec_netem(container, impairment)
                record.kernel_netem = True
            except FaultUnsupported:
                record.kernel_netem = False
        if impairment.is_none:
            record.impairments.pop(node, None)
        else:
            record.impairments[node] = impairment
        record.save(self.plan.state_dir)
        if record.kernel_netem is False:
            node_faults.sync_runtime(self, [node], record)
        how = "netem" if record.kernel_netem else "in-node shaping (no netem in this kernel)"
        self.emit("impairment_set", node, f"{impairment.describe()} ({how})")

    def faults(self) -> FaultReport:
        """Cuts and netem as the running nodes' kernels have them, what the nodes hold
        themselves (shaping, channel changes), paused nodes and broker; a node that is not
        running is reported with what it gets when it starts."""
        from . import node_faults  # grpc: only for faults

        record = FaultRecord.load(self.plan.state_dir)
        inside = node_faults.report(self, self.inspect(), record)
        containers = self._containers()
        cuts: set[tuple[str, str]] = set(inside.cuts)
        impairments = dict(inside.impairments)
        mechanism = dict(inside.mechanism)
        peers = {node.host: node_id for node_id, node in self.plan.nodes.items()}
        running: dict[str, Any] = {}
        for node_id in self.plan.nodes:
            container = containers.get(node_id)
            if container is not None and container.status == "running":
                running[node_id] = container
                continue
            cuts.update(link_pair(node_id, peer) for peer in record.cuts_of(node_id))
            if node_id in record.impairments and record.kernel_netem is not False:
                impairments[node_id] = record.impairments[node_id]
                mechanism[node_id] = "netem"
        # A `docker exec` a node, each a round trip to the engine: run the nodes side by side.
        with ThreadPoolExecutor(max_workers=min(16, len(running) or 1)) as pool:
            read = dict(zip(running, pool.map(self._kernel_faults, running.values()), strict=True))
        for node_id, (blackholes, impairment) in read.items():
            for destination in blackholes:
                peer = peers.get(destination.removesuffix("/32"))
                if peer is not None:
                    cuts.add(link_pair(node_id, peer))
            if impairment is not None and not impairment.is_none:
                impairments[node_id] = impairment
                mechanism[node_id] = "netem"
        return replace(inside, cuts=sorted(cuts), impairments=impairments, mechanism=mechanism)

    def _kernel_faults(self, container: Any) -> tuple[list[str], Impairment | None]:
        """The destinations of a running container's blackhole routes, and its netem.

        One `docker exec` for both: on a busy machine each exec waits for a core."""
        script = (
            f"ip -j route show type blackhole && echo {_SEPARATOR} && tc -j qdisc show dev {_IFACE}"
        )
        # An exec on a loaded engine now and then ends at once with nothing said: try again.
        for attempt in range(3):
            code, output = self._exec(container, ["sh", "-c", script])
            if code == 0 or output:
                break
            time.sleep(1.0 + attempt)
        routes_text, separator, qdiscs_text = output.partition(_SEPARATOR)
        if code != 0 or not separator:
            raise QkdnetError(
                f"reading routes and qdiscs failed in {container.name} (exit status {code}): "
                f"{output or 'no output'}"
            )
        try:
            routes = json.loads(routes_text.strip() or "[]")
            qdiscs = json.loads(qdiscs_text.strip() or "[]")
        except ValueError:
            raise QkdnetError(f"ip or tc in {container.name}: not JSON") from None
        blackholes = [str(r.get("dst", "")) for r in routes] if isinstance(routes, list) else []
        return blackholes, netem_from_tc(qdiscs)

    def _exec(self, container: Any, argv: list[str]) -> tuple[int, str]:
        try:
            result = container.exec_run(argv, user="root")
        except APIError as exc:
            raise QkdnetError(
                f"cannot run {argv[0]} in {container.name}: {exc.explanation or exc}"
            ) from None
        return int(result.exit_code), bytes(result.output).decode(errors="replace").strip()

    def _exec_route(self, node: str, action: str, peer: str) -> bool:
        """Add ("replace") or remove ("delete") the blackhole route to `peer` in `node`'s
        container; False when `node` is not running (nothing to change now)."""
        container = self._container(node)
        if container is None or container.status != "running":
            return False
        argv = ["ip", "route", action, "blackhole", f"{self.plan.nodes[peer].host}/32"]
        code, output = self._exec(container, argv)
        if code != 0 and not (action == "delete" and "No such process" in output):
            raise QkdnetError(
                f"{' '.join(argv)} failed in {container.name}: {output}"
                + (
                    " (made before qkdnet fault existed? redeploy it)"
                    if "Operation not permitted" in output
                    else ""
                )
            )
        return True

    def _exec_netem(self, container: Any, impairment: Impairment) -> None:
        if impairment.is_none:
            argv = ["tc", "qdisc", "del", "dev", _IFACE, "root"]
            code, output = self._exec(container, argv)
            if code != 0 and "handle of zero" not in output and "No such file" not in output:
                raise QkdnetError(f"{' '.join(argv)} failed in {container.name}: {output}")
            return
        argv = ["tc", "qdisc", "replace", "dev", _IFACE, "root", "netem"]
        argv += impairment.tc_netem_args()
        code, output = self._exec(container, argv)
        if code == 0:
            return
        if "qdisc kind is unknown" in output:
            raise FaultUnsupported(
                "the kernel of this Docker host has no netem qdisc (sch_netem, "
                "CONFIG_NET_SCH_NETEM), so delay, jitter and loss cannot be emulated on it "
                "(tc said: " + output + ")"
            )
        raise QkdnetError(f"{' '.join(argv)} failed in {container.name}: {output}")

    def _reapply_faults(self, node: str) -> None:
        """Give a node that (re)started, or was unpaused, the cuts and impairment recorded."""
        record = FaultRecord.load(self.plan.state_dir)
        for peer in record.cuts_of(node):
            self._exec_route(node, "replace", peer)
        impairment = record.impairments.get(node)
        container = self._container(node)
        live = container is not None and container.status == "running"
        if impairment is not None and live and record.kernel_netem is not False:
            try:
                self._exec_netem(container, impairment)
            except FaultUnsupported:  # the node shapes it itself once it is up (start)
                record.kernel_netem = False
                record.save(self.plan.state_dir)

    # -- destroy -------------------------------------------------------------------------------

    def _remove_all(self, grace: int) -> tuple[list[str], list[str]]:
        """Stop (nodes first, the broker last) and remove every container of the deployment,
        then its network. Returns (stopped, killed): the names that ran and how they ended."""
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
