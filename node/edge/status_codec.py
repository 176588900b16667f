"""A node's status (`qkdnet.node.status`) as NodeControl's protobuf message, field for field."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from qkdnet.v1 import control_pb2

from ..status import NodeStatus

__all__ = ["status_to_wire"]


def _values(snapshot: Any) -> dict[str, Any]:
    return {f.name: getattr(snapshot, f.name) for f in fields(snapshot)}


def status_to_wire(status: NodeStatus) -> control_pb2.NodeStatus:
    return control_pb2.NodeStatus(
        node_id=status.node_id,
        uptime_seconds=status.uptime_seconds,
        links=[control_pb2.LinkStatus(**_values(link)) for link in status.links],
        relay=control_pb2.RelayStatus(**_values(status.relay)) if status.relay else None,
        key_api_url=status.key_api_url,
        routing_nodes=status.routing_nodes,
        delivery=(
            control_pb2.DeliveryStatus(**_values(status.delivery)) if status.delivery else None
        ),
        calls_refused=status.calls_refused,
        interworking=(
            control_pb2.InterworkingStatus(**_values(status.interworking))
            if status.interworking
            else None
        ),
        virtual_links=[
            control_pb2.VirtualLinkStatus(**_values(link)) for link in status.virtual_links
        ],
        key_streams=status.key_streams,
    )
