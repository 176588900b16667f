"""Errors across gRPC as typed details: gRPC's rich status model.

A service that refuses a call on purpose ends it with a status whose trailing metadata holds a
`google.rpc.Status` (the `grpc-status-details-bin` trailer, grpcio-status) carrying one
`google.rpc.ErrorInfo`: `reason` is a `qkdnet.node.errors.Reason` code, `domain` is
`qkdnet`, and `metadata["error"]` names the error class. The caller reads it back with
`error_info` and raises the same typed error — no parsing of the status message, whose text is
for people.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..errors import QkdnetError, Reason

__all__ = ["DOMAIN", "abort_with", "error_info", "reason_of"]

DOMAIN = "qkdnet"


async def abort_with(
    context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, error: QkdnetError
) -> None:
    """End the call with `code`, the error's message, and its reason as an ErrorInfo detail.
    (Raises, as `context.abort` does.)"""
    reason = getattr(error, "reason", None)
    info = error_details_pb2.ErrorInfo(
        reason=str(reason) if reason is not None else "",
        domain=DOMAIN,
        metadata={"error": type(error).__name__},
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code.value[0], message=str(error), details=[detail])
    await context.abort(
        code, str(error), trailing_metadata=rpc_status.to_status(status).trailing_metadata
    )


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of a failed call from a qkdnet service, or None (another failure:
    no answer, a deadline, a refusal by the gRPC layer)."""
    try:
        status = rpc_status.from_call(exc)  # AioRpcError offers what a Call does
    except ValueError:  # inconsistent trailers: not ours
        return None
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == DOMAIN:
            return info
    return None


def reason_of(exc: grpc.aio.AioRpcError, default: Reason) -> Reason:
    """The Reason a failed call carries, or `default` when it carries none."""
    info = error_info(exc)
    return Reason.of(info.reason, default) if info is not None else default
