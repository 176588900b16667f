"""Faults of the docker runtime, made by the kernel of each node's container: a cut link is a
blackhole route to the peer's address (both ways), and an impairment is netem on the
container's interface (when the host kernel has sch_netem; otherwise the node shapes what it
sends itself, as on the process runtime). Both are recorded (faults.json) and applied again to
a node that restarts or is unpaused. `DockerRuntime` takes them from `ContainerFaults`.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from docker.errors import APIError

from qkdnet.node.errors import QkdnetError

from .faults import (
    FaultRecord,
    FaultReport,
    FaultUnsupported,
    Impairment,
    link_pair,
    netem_from_tc,
)
from .seam import (
    BROKER,
    Runtime,
)

__all__ = ["ContainerFaults"]

_IFACE = "eth0"  # a node container's one interface, on the deployment's network
_SEPARATOR = "--qkdnet--"  # between the outputs of two commands of one exec


class ContainerFaults(Runtime):
    """The fault half of the docker runtime (a mixin of `DockerRuntime`, which gives it the
    containers)."""

    def _container(self, name: str) -> Any | None:
        raise NotImplementedError

    def _containers(self) -> dict[str, Any]:
        raise NotImplementedError

    def _running(self, name: str) -> Any | None:
        raise NotImplementedError

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
            if code == 0 and _SEPARATOR in output:
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
