"""Which role may call which gRPC service of a node: one interceptor in front of every method.

The caller's identity is the SPIFFE ID of its client certificate (`identity.py`), which gRPC
has already verified against the deployment's CA. `RoleAuthorization` lets a call through only
when that identity is in this node's trust domain and its role is one `POLICY` allows for the
service; anything else, and any service `POLICY` does not name, is refused with
PERMISSION_DENIED before the service sees the call:

| service                                   | roles              |
|-------------------------------------------|--------------------|
| QuantumChannel, ClassicalChannel          | node               |
| KeyRelay (relay, settle, link-state)      | node               |
| KeyStreamSync (ETSI 004 streams' two KMEs) | node              |
| HybridKem (ML-KEM between two KMEs)       | node               |
| NodeControl                               | controller         |
| grpc.health.v1.Health                     | controller, node   |
| server reflection                         | controller         |

An SAE certificate thus reaches no gRPC method at all: applications have the ETSI APIs only.
Services still check what only they can (a link's peer, a transaction's origin).

A border node that shares a QKD link with the border of another domain trusts that domain's CA
too (`NodeCredentials.server`), and admits from it one identity, on the link's services only:
the peer border (`ForeignPeer`). Trusting two CAs, gRPC would accept from either a certificate
naming either trust domain; so on such a node every certificate must also be issued by the CA
of the trust domain it names (checked here, once per certificate).
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ..identity import Identity, Role
from ..structured_log import log_event

__all__ = [
    "LINK_SERVICES",
    "POLICY",
    "ForeignPeer",
    "RoleAuthorization",
    "guarded_handler",
    "peer_identity",
    "peer_name",
]

logger = logging.getLogger("qkdnet.node.authorization")

_NODE = frozenset({Role.NODE})
_CONTROLLER = frozenset({Role.CONTROLLER})
POLICY: Mapping[str, frozenset[Role]] = {
    "qkdnet.v1.QuantumChannel": _NODE,
    "qkdnet.v1.ClassicalChannel": _NODE,
    "qkdnet.v1.KeyRelay": _NODE,
    "qkdnet.v1.KeyStreamSync": _NODE,
    "qkdnet.v1.HybridKem": _NODE,
    "qkdnet.v1.NodeControl": _CONTROLLER,
    "grpc.health.v1.Health": _CONTROLLER | _NODE,
    "grpc.reflection.v1alpha.ServerReflection": _CONTROLLER,
    "grpc.reflection.v1.ServerReflection": _CONTROLLER,
}

Context = grpc.aio.ServicerContext[Any, Any]


def peer_identity(context: Context) -> Identity | None:
    """The identity in the caller's certificate (None without a qkdnet SPIFFE ID)."""
    values = list(context.auth_context().get("peer_spiffe_id", []))
    return Identity.parse(values[0].decode(errors="replace")) if len(values) == 1 else None


def peer_name(context: Context) -> str:
    """The caller's name (node ID, SAE ID, ...), '' without an identity; `RoleAuthorization`
    has checked its role before any service asks."""
    identity = peer_identity(context)
    return identity.name if identity is not None else ""


if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler  # generic only in the type stubs


LINK_SERVICES = frozenset({"qkdnet.v1.QuantumChannel", "qkdnet.v1.ClassicalChannel"})


@dataclass(frozen=True)
class ForeignPeer:
    """The one node of another trust domain a border's server answers: its peer border, on
    the shared link's services, with a certificate its own domain's CA issued."""

    trust_domain: str
    node: str
    ca_pem: bytes
    services: frozenset[str] = LINK_SERVICES


class _Issuers:
    """Whether a caller's certificate was issued by a given CA, remembered per certificate."""

    def __init__(self) -> None:
        self._seen: dict[tuple[bytes, bytes], bool] = {}

    def issued(self, context: Context, ca_pem: bytes) -> bool:
        chain = list(context.auth_context().get("x509_pem_cert", []))
        if len(chain) != 1:
            return False
        key = (bytes(chain[0]), ca_pem)
        if key not in self._seen:
            if len(self._seen) > 4096:  # certificates are few; bound it all the same
                self._seen.clear()
            try:
                certificate = x509.load_pem_x509_certificate(key[0])
                certificate.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
                self._seen[key] = True
            except (ValueError, TypeError, InvalidSignature):
                self._seen[key] = False
        return self._seen[key]


class RoleAuthorization(grpc.aio.ServerInterceptor):
    """Refuses every call whose caller's role `policy` does not allow for the service (and,
    with `foreign`, admits that peer border of another domain to the shared link)."""

    def __init__(
        self,
        trust_domain: str,
        policy: Mapping[str, frozenset[Role]] = POLICY,
        *,
        own_ca_pem: bytes = b"",
        foreign: ForeignPeer | None = None,
    ) -> None:
        """`own_ca_pem` and `foreign`: a border that trusts its peer domain's CA too."""
        self._trust_domain = trust_domain
        self._policy = dict(policy)
        self._own_ca = own_ca_pem
        self._foreign = foreign
        self._issuers = _Issuers()
        self.refused: Counter[str] = Counter()  # by the caller's role ("none": no identity)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        method = str(details.method)
        service = method.split("/")[1] if method.count("/") == 2 else method
        allowed = self._policy.get(service, frozenset())
        return guarded_handler(handler, lambda context: self._check(context, method, allowed))

    async def _check(self, context: Context, method: str, allowed: frozenset[Role]) -> None:
        identity = peer_identity(context)
        foreign = self._foreign
        if (
            identity is not None
            and identity.trust_domain == self._trust_domain
            and identity.role in allowed
            and (foreign is None or self._issuers.issued(context, self._own_ca))
        ):
            return
        service = method.split("/")[1] if method.count("/") == 2 else method
        if (
            foreign is not None
            and identity == Identity(foreign.trust_domain, Role.NODE, foreign.node)
            and service in foreign.services
            and self._issuers.issued(context, foreign.ca_pem)
        ):
            return
        who = str(identity) if identity is not None else "a certificate without a qkdnet role"
        kind = identity.role.value if identity is not None else "none"
        if identity is not None and identity.trust_domain != self._trust_domain:
            who += f" of trust domain {identity.trust_domain}"
        self.refused[kind] += 1
        if self.refused[kind] in (1, 10, 100, 1000) or self.refused[kind] % 10_000 == 0:
            log_event(
                logger,
                logging.WARNING,
                "call_refused",
                caller=who,
                method=method,
                refused=self.refused[kind],
            )
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{who} may not call {method}")


Check = Callable[[Context], Awaitable[None]]


def guarded_handler(
    handler: Handler,
    check: Check,
    *,
    unary_answer: Callable[[Context, Any], Awaitable[None]] | None = None,
) -> Handler:
    """`handler` with `check(context)` run before its behaviour, whatever its kind; with
    `unary_answer`, a unary-unary call's answer is passed to it before it goes out."""

    def wrap(behaviour: Any) -> Any:
        if inspect.isasyncgenfunction(behaviour):

            async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
                await check(context)
                async for item in behaviour(request, context):
                    yield item

            return stream

        async def call(request: Any, context: Context) -> Any:
            await check(context)
            answer = await behaviour(request, context)
            if unary_answer is not None:
                await unary_answer(context, answer)
            return answer

        return call

    serialisation = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **serialisation)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **serialisation)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **serialisation)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **serialisation)
