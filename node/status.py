"""What a node shows of itself: its links, its relay and its key delivery, as one snapshot.

The agent builds a `NodeStatus` on demand; NodeControl's Status answers it
(`qkdnet.node.edge.status_codec` turns it into `control.proto`'s message of the same shape)
and telemetry publishes figures from it. Plain data: nothing here computes or waits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .protocol.link_stats import LinkStatus

__all__ = [
    "DeliveryStatus",
    "InterworkingStatus",
    "LinkStatus",
    "NodeStatus",
    "RelayStatus",
    "VirtualLinkStatus",
]


@dataclass(frozen=True)
class RelayStatus:
    """What this node's relay did."""

    frames_sent: int
    frames_received: int
    frames_refused: dict[str, int]
    wasted_bits: int
    transactions_committed: int
    transactions_failed: int


@dataclass(frozen=True)
class DeliveryStatus:
    """Keys for this node's SAEs, and its ETSI key API's answers (HTTP status -> count)."""

    keys_waiting: int
    keys_pending: int
    pool_keys: int
    keys_expired: int
    pending_expired: int
    keys_voided: int
    pool_keys_expired: int = 0
    keys_abandoned: int = 0
    key_api_answers: dict[int, int] = field(default_factory=dict)
    key_api_connections_evicted: int = 0
    key_api_connections_refused: int = 0


@dataclass(frozen=True)
class InterworkingStatus:
    """A border node's ETSI GS QKD 020 side: keys handed to and taken from the peer border."""

    peer_node: str
    keys_exported: int
    keys_imported: int
    transfers_failed: int
    keys_voided: int
    acks_undelivered: int


@dataclass(frozen=True)
class VirtualLinkStatus:
    """A virtual link an SDN controller created here (ETSI GS QKD 015)."""

    qkdl_id: str
    remote: str
    path: tuple[str, ...]
    bandwidth_bps: int
    usable: bool


@dataclass(frozen=True)
class NodeStatus:
    node_id: str
    uptime_seconds: float
    links: tuple[LinkStatus, ...]
    key_api_url: str
    routing_nodes: tuple[str, ...]
    calls_refused: dict[str, int]
    relay: RelayStatus | None = None
    delivery: DeliveryStatus | None = None
    interworking: InterworkingStatus | None = None
    virtual_links: tuple[VirtualLinkStatus, ...] = ()
    key_streams: int = 0
