"""An HTTPS server for the node's APIs that slow or abusive clients cannot wear down.

aiohttp serves the application; this module owns the sockets in front of it:

- the TLS handshake must finish within `handshake_timeout_s` (a client that opens a connection
  and sends nothing, or half a ClientHello, is dropped then);
- a request's head (request line and headers) must arrive within `header_timeout_s` of the
  connection or of the previous answer: aiohttp's keep-alive timer, which runs from the moment a
  connection opens and is not reset by a partial head, closes the connection otherwise;
- a body must arrive within `body_timeout_s` (`read_body`), and be at most `max_body_bytes`;
- at most `max_connections` connections that completed the handshake (clients holding a
  certificate of the CA) are held at once. At the cap, a newly established one evicts the oldest
  one with no request in progress (a half-sent head, or an idle keep-alive), so that a
  well-behaved client always gets in while an abusive one cannot hold the server; only when
  every connection is busy with a request is the newcomer closed at once. Connections still in
  their handshake cannot evict anyone: they are bounded by the handshake timeout and by the
  process's open-file limit (`raise_file_limit`).
- answers the HTTP parser makes itself (a malformed request line, a header too long) go through
  `error_response` like the application's, so that clients always get the API's error body.

The process should allow enough file descriptors for the cap (`raise_file_limit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import ssl
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

__all__ = [
    "BodyTimeout",
    "HttpLimits",
    "HttpsServer",
    "raise_file_limit",
    "server_ssl_context",
]

logger = logging.getLogger("qkdnet.node.https")

ErrorResponse = Callable[[int, str], web.Response]


@dataclass(frozen=True)
class HttpLimits:
    """How long a client may take and how much it may hold."""

    handshake_timeout_s: float = 10.0
    header_timeout_s: float = 15.0
    body_timeout_s: float = 15.0
    max_connections: int = 512
    max_body_bytes: int = 1 << 20
    max_line_bytes: int = 8190
    max_headers: int = 64


class BodyTimeout(Exception):
    """The client did not send its whole body in time."""


def server_ssl_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2 or 1.3, the node's server certificate, a client certificate from `ca` required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def raise_file_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit; returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
    return soft


class _ApiRequestHandler(RequestHandler):
    """aiohttp's connection handler: admitted (or not) once TLS is established, and with the
    answers of its HTTP parser in the API's format."""

    error_response: ErrorResponse
    admit: Callable[[_ApiRequestHandler], bool]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.admit(self):
            transport.close()
            return
        super().connection_made(transport)

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, ConnectionError):  # the client hung up: nobody to answer, no bug
            logger.debug("client gone: %s", exc)
            if request.writer.output_size > 0:
                raise ConnectionResetError("the client is gone")
            response = self.error_response(503, "the client is gone")
            response.force_close()
            return response
        if request.writer.output_size > 0:  # an answer is on its way already
            return super().handle_error(request, status, exc, message)
        if status >= 500:
            logger.error("request failed", exc_info=exc)
            response = self.error_response(503, "the server could not handle the request")
        else:
            detail = (message or (str(exc) if exc else "") or "malformed HTTP request").strip()
            response = self.error_response(status, f"malformed HTTP request: {detail[:200]}")
        response.force_close()
        return response


class HttpsServer:
    """Serves one aiohttp application over TLS within `HttpLimits`.

    Make the application with `client_max_size=limits.max_body_bytes`."""

    def __init__(
        self, app: web.Application, limits: HttpLimits, error_response: ErrorResponse
    ) -> None:
        self.limits = limits
        self._error_response = error_response
        self._busy: weakref.WeakSet[Any] = weakref.WeakSet()
        self._opened: weakref.WeakKeyDictionary[RequestHandler, float] = weakref.WeakKeyDictionary()
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.evicted = 0
        self.refused = 0
        self.port = 0
        app.middlewares.insert(0, self._guard)
        self._app = app

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Marks the connection busy while a request is in progress; a body that is too slow
        gets 408 and the connection is closed. (Only connections this server accepted are
        tracked: the application also runs under aiohttp's test server, in unit tests.)"""
        protocol = request.protocol
        tracked = isinstance(protocol, _ApiRequestHandler)
        if tracked:
            self._busy.add(protocol)
        try:
            return await handler(request)
        except BodyTimeout as exc:
            response = self._error_response(408, str(exc))
            response.force_close()
            return response
        finally:
            if tracked:
                self._busy.discard(protocol)

    async def read_body(self, request: web.Request) -> bytes:
        """The whole body, within `body_timeout_s` (BodyTimeout) and `max_body_bytes` (aiohttp's
        413 HTTPRequestEntityTooLarge)."""
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                return await request.read()
        except TimeoutError:
            raise BodyTimeout(f"no complete body within {self.limits.body_timeout_s:g} s") from None

    async def start(self, host: str, port: int, context: ssl.SSLContext) -> None:
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runner = runner
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._connection,
            host,
            port,
            ssl=context,
            ssl_handshake_timeout=self.limits.handshake_timeout_s,
            reuse_address=True,
            backlog=1024,
        )
        sockets = list(self._server.sockets or [])
        self.port = sockets[0].getsockname()[1] if sockets else port

    def _connection(self) -> asyncio.BaseProtocol:
        """The protocol of a new connection (admitted once its TLS handshake is done)."""
        assert self._runner is not None
        server = self._runner.server
        assert server is not None
        handler = _ApiRequestHandler(
            server,
            loop=asyncio.get_running_loop(),
            keepalive_timeout=self.limits.header_timeout_s,
            access_log=None,  # type: ignore[arg-type]  # aiohttp takes None: no access log
            max_line_size=self.limits.max_line_bytes,
            max_field_size=self.limits.max_line_bytes,
            max_headers=self.limits.max_headers,
            # After an answer to a request whose body did not all come (a 408, a 413), unread
            # bytes are read and dropped this long before the connection closes.
            lingering_time=1.0,
        )
        handler.error_response = self._error_response
        handler.admit = self._admit
        return handler

    def _admit(self, handler: RequestHandler) -> bool:
        """Whether a connection that just completed TLS may stay: make room at the cap by
        evicting the oldest idle connection, or refuse it when every one is busy."""
        assert self._runner is not None
        assert self._runner.server is not None
        live = self._runner.server.connections
        if len(live) >= self.limits.max_connections:
            idle = [other for other in live if other not in self._busy]
            if not idle:
                self.refused += 1
                return False
            oldest = min(idle, key=lambda other: self._opened.get(other, 0.0))
            oldest.force_close()
            self.evicted += 1
        self._opened[handler] = asyncio.get_running_loop().time()
        return True

    @property
    def connections(self) -> int:
        """Connections held now (TLS established)."""
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
