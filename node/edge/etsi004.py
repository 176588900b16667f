"""The node's ETSI GS QKD 004 server: key streams over TLS in QUBIP's binary framing.

Applications connect with TLS and a client certificate that names an SAE of this deployment
(the `sae` role), as for ETSI 014; any other certificate is dropped after the handshake. A
connection carries any number of calls, one at a time (`etsi004_wire.py` for the bytes); the
calls go to the node's `KeyStreams`, with the certificate's SAE as the caller. A message that is
not 004 ends the connection (logged, with what was wrong); so does a connection idle for
`idle_timeout_s`. At most `max_connections` are held at once; the next is closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import Counter
from dataclasses import dataclass

from ..identity import Role, peer_certificate_identity
from ..protocol.key_streams import KeyStreams
from ..structured_log import log_event
from .etsi004_wire import (
    HEADER,
    MAX_REQUEST_BYTES,
    GetKeyAnswer,
    OpenAnswer,
    Service,
    WireError,
    decode_close_request,
    decode_get_key_request,
    decode_header,
    decode_open_request,
    encode_close_answer,
    encode_get_key_answer,
    encode_open_answer,
)

__all__ = ["KeyStreamServer", "StreamServerLimits"]

logger = logging.getLogger("qkdnet.node.etsi004")


@dataclass(frozen=True)
class StreamServerLimits:
    handshake_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0
    max_connections: int = 512


class KeyStreamServer:
    """ETSI GS QKD 004 in front of a node's `KeyStreams`."""

    def __init__(
        self,
        streams: KeyStreams,
        trust_domain: str,
        limits: StreamServerLimits = StreamServerLimits(),
    ) -> None:
        self._streams = streams
        self._trust_domain = trust_domain
        self.limits = limits
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.refused: Counter[str] = Counter()  # connections dropped, by why

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int, context: ssl.SSLContext) -> None:
        self._server = await asyncio.start_server(
            self._connection,
            host,
            port,
            ssl=context,
            ssl_handshake_timeout=self.limits.handshake_timeout_s,
            reuse_address=True,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            if len(self._connections) >= self.limits.max_connections:
                self.refused["too_many"] += 1
                return
            identity = peer_certificate_identity(writer.get_extra_info("peercert"))
            if (
                identity is None
                or identity.role is not Role.SAE
                or identity.trust_domain != self._trust_domain
            ):
                self.refused["not_an_sae"] += 1
                log_event(logger, logging.WARNING, "etsi004_refused", identity=str(identity))
                return
            self._connections.add(task)
            await self._serve(identity.name, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(
        self, sae: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            async with asyncio.timeout(self.limits.idle_timeout_s):
                try:
                    header = await reader.readexactly(HEADER.size)
                except asyncio.IncompleteReadError as exc:
                    if not exc.partial:
                        return  # the client hung up between calls
                    raise
            try:
                service, length = decode_header(header)
                if length > MAX_REQUEST_BYTES:
                    raise WireError(f"a request of {length} bytes")
                async with asyncio.timeout(self.limits.handshake_timeout_s):
                    payload = await reader.readexactly(length)
                answer = await self._answer(sae, service, payload)
            except WireError as exc:
                self.refused["malformed"] += 1
                log_event(logger, logging.WARNING, "etsi004_malformed", sae=sae, error=str(exc))
                return
            writer.write(answer)
            async with asyncio.timeout(self.limits.handshake_timeout_s):
                await writer.drain()  # a client that does not read loses its connection

    async def _answer(self, sae: str, service: Service, payload: bytes) -> bytes:
        streams = self._streams
        if service is Service.OPEN_CONNECT:
            request = decode_open_request(payload)
            opened = await streams.open_connect(
                sae, request.source, request.destination, request.qos, request.ksid
            )
            return encode_open_answer(OpenAnswer(opened.status, opened.qos, opened.ksid))
        if service is Service.GET_KEY:
            get = decode_get_key_request(payload)
            chunk = await streams.get_key(sae, get.ksid, get.index, get.metadata_size)
            return encode_get_key_answer(
                GetKeyAnswer(
                    chunk.status, chunk.index, chunk.key, chunk.metadata, chunk.metadata_size
                )
            )
        if service is Service.CLOSE:
            close = decode_close_request(payload)
            return encode_close_answer(await streams.close(sae, close.ksid))
        raise WireError(f"{service.name} is an answer, not a request")

    @property
    def connections(self) -> int:
        return len(self._connections)
