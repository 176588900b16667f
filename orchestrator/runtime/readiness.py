"""When the nodes of a start are ready: one wait for every runtime, with the runtime's probe.

A `ReadinessProbe` says whether a node serves yet (`ready`), why it never will (`failure`:
it exited, with what its log says) and what to add when the wait times out. `wait_ready`
asks it about every node still waiting, in parallel, until all are ready (each reported
through `on_ready`), one fails, or `timeout` passes: both are a `DeployError` naming the
nodes. The process runtime's probe reads the ready file a node writes once it serves
(`ready.json`, for the process it started); the docker runtime's asks the node's gRPC health
service, over mutual TLS with the controller's certificate (`health_serving`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from ..plan.credentials import CertificatePaths
from ..plan.network_plan import NodePlan
from .seam import DeployError

__all__ = ["ReadinessProbe", "health_serving", "wait_ready"]

_POLL_S = 0.2


class ReadinessProbe(Protocol):
    def ready(self, node: NodePlan) -> bool:
        """Whether `node` serves."""
        ...

    def failure(self, node: NodePlan) -> str | None:
        """Why `node`, not ready, never will be (it exited), or None while it may still."""
        ...

    def timed_out(self, waiting: Sequence[str], timeout: float) -> str:
        """The message when `waiting` were not ready after `timeout` seconds."""
        ...


def wait_ready(
    nodes: Sequence[NodePlan],
    probe: ReadinessProbe,
    timeout: float,
    on_ready: Callable[[NodePlan], None],
) -> None:
    """Wait until every node of `nodes` is ready; DeployError when one fails or time is up."""
    waiting = {node.node_id: node for node in nodes}
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(max_workers=min(32, len(nodes) or 1)) as pool:
        while waiting:
            answers = dict(zip(waiting, pool.map(probe.ready, waiting.values()), strict=True))
            for node_id, ready in answers.items():
                node = waiting[node_id]
                if ready:
                    del waiting[node_id]
                    on_ready(node)
                elif (why := probe.failure(node)) is not None:
                    raise DeployError(why)
            if waiting and time.monotonic() > deadline:
                raise DeployError(probe.timed_out(sorted(waiting), timeout))
            if waiting:
                time.sleep(_POLL_S)


def health_serving(node: NodePlan, credentials: CertificatePaths) -> bool:
    """Whether the node's gRPC health service answers SERVING (mutual TLS, `credentials`)."""
    import grpc  # only the runtimes that probe over gRPC pay for it
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from qkdnet.node.edge.grpc_dial import credentials_from_files, dial_blocking

    creds = credentials_from_files(credentials.ca, credentials.cert, credentials.key)
    with dial_blocking(node.address, node.node_id, creds) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
