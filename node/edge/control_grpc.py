"""NodeControl over gRPC: the controller's view of a node and its levers on it.

`ControlService` answers the orchestrator (the controller role, checked by
`RoleAuthorization`, and a name in the node's `controllers`): status, key digests, and the
live faults — cut links, shaping, channel changes — which it applies through the agent and
reports back as `NodeFaults`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import grpc

from qkdnet.v1 import control_pb2, control_pb2_grpc

from ..core.channel_model import ChannelChange
from ..protocol.link import LinkEnd
from .channel_shaping import Shaping
from .grpc_authorization import peer_name
from .status_codec import status_to_wire

if TYPE_CHECKING:
    from ..agent import NodeAgent

__all__ = ["ControlService", "channel_change_of", "faults_to_wire", "shaping_of"]

logger = logging.getLogger("qkdnet.node.agent")


class ControlService(control_pb2_grpc.NodeControlServicer):
    """NodeControl: status, key digests and fault injection, for the orchestrator only (the
    controller role, checked by `RoleAuthorization`, and a name in `controllers`)."""

    def __init__(self, agent: NodeAgent) -> None:
        self._agent = agent

    async def _authorise(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if peer_name(context) not in self._agent.config.controllers:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not a controller")

    async def _link(self, link_id: str, context: grpc.aio.ServicerContext[Any, Any]) -> LinkEnd:
        for link in self._agent.links.values():
            if link.link_id == link_id:
                return link
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no link {link_id!r} on this node")
        raise AssertionError("unreachable")

    async def GetStatus(
        self, request: control_pb2.StatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.NodeStatus:
        await self._authorise(context)
        await self._agent.refresh_delivery_levels()
        return status_to_wire(self._agent.status())

    async def GetKeyDigest(
        self, request: control_pb2.KeyDigestRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.KeyDigest:
        await self._authorise(context)
        if len(request.nonce) < 16:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "nonce of at least 16 bytes")
        link = await self._link(request.link_id, context)
        nonce = bytes(request.nonce)
        digests = await link.store.run(lambda db: db.digests(nonce))
        return control_pb2.KeyDigest(
            link_id=link.link_id,
            blocks=[
                control_pb2.BlockDigest(
                    block_id=d.block_id,
                    bits=d.bits,
                    consumed=d.consumed,
                    digest=d.digest,
                    ones=d.ones,
                    frame=d.frame,
                    pending=d.pending,
                )
                for d in digests
            ],
        )

    async def SetPeerFaults(
        self, request: control_pb2.PeerFaultsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.NodeFaults:
        await self._authorise(context)
        try:
            self._agent.set_peer_faults(
                request.peer,
                cut=request.cut if request.HasField("cut") else None,
                shaping=shaping_of(request.shaping) if request.HasField("shaping") else None,
            )
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        return faults_to_wire(self._agent)

    async def SetChannelChange(
        self,
        request: control_pb2.ChannelChangeRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> control_pb2.NodeFaults:
        await self._authorise(context)
        link = await self._link(request.link_id, context)
        try:
            link.change_channel(channel_change_of(request.change))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{link.link_id}: {exc}")
            raise
        return faults_to_wire(self._agent)

    async def GetFaults(
        self, request: control_pb2.FaultsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.NodeFaults:
        await self._authorise(context)
        return faults_to_wire(self._agent)

    async def ClearFaults(
        self, request: control_pb2.FaultsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> control_pb2.NodeFaults:
        await self._authorise(context)
        self._agent.clear_faults()
        return faults_to_wire(self._agent)


def shaping_of(message: control_pb2.Shaping) -> Shaping:
    """The Shaping of a control message (ValueError when out of range)."""
    return Shaping(
        delay_ms=message.delay_ms,
        jitter_ms=message.jitter_ms,
        loss_percent=message.loss_percent,
        rate_kbit=message.rate_kbit,
    )


def channel_change_of(message: control_pb2.ChannelChange) -> ChannelChange:
    """The ChannelChange of a control message (ValueError when out of range)."""
    return ChannelChange(
        eavesdrop_fraction=(
            message.eavesdrop_fraction if message.HasField("eavesdrop_fraction") else None
        ),
        extra_loss_db=message.extra_loss_db,
        misalignment_error=(
            message.misalignment_error if message.HasField("misalignment_error") else None
        ),
    )


def faults_to_wire(agent: NodeAgent) -> control_pb2.NodeFaults:
    """Every live fault of the node."""
    return control_pb2.NodeFaults(
        cut_peers=sorted(agent.faults.cut_peers),
        shaping={
            scope: control_pb2.Shaping(
                delay_ms=s.delay_ms,
                jitter_ms=s.jitter_ms,
                loss_percent=s.loss_percent,
                rate_kbit=s.rate_kbit,
            )
            for scope, s in agent.faults.shaping.settings().items()
        },
        channels=[
            control_pb2.LinkChannel(
                link_id=link.link_id,
                change=control_pb2.ChannelChange(
                    eavesdrop_fraction=link.change.eavesdrop_fraction,
                    extra_loss_db=link.change.extra_loss_db,
                    misalignment_error=link.change.misalignment_error,
                ),
            )
            for link in agent.links.values()
            if not link.change.is_none
        ],
    )
