"""The runtimes: where a plan's nodes run, behind one seam.

What belongs here: the runtime seam (`seam.Runtime`: deploy, destroy, inspect, start, stop,
kill, faults), its process and Docker implementations, the container images they need, the
MQTT broker, the faults a runtime injects and the scenarios that play them, and the Compose
export.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..plan.network_plan import NetworkPlan
    from .seam import EventSink, Runtime

__all__ = ["runtime_for"]


def runtime_for(plan: NetworkPlan, on_event: EventSink | None = None) -> Runtime:
    """The runtime the plan was laid out for (`--runtime`, runtime.json or the topology's)."""
    from .process_runtime import ProcessRuntime

    if plan.runtime == "docker":
        from .docker_runtime import DockerRuntime  # imports the Docker SDK

        return DockerRuntime(plan, on_event)
    runtimes: dict[str, type[Runtime]] = {ProcessRuntime.name: ProcessRuntime}
    return runtimes[plan.runtime](plan, on_event)
