"""An ETSI GS QKD 004 client: what an application does to get a key stream from its KME.

`KeyStreamClient` holds one TLS connection to one KME as one SAE (its client certificate names
the SAE) and makes the three calls of the standard, one at a time: `open_connect`, `get_key`
and `close`, in QUBIP's binary framing (`etsi004_wire.py`). Answers come back as they are,
status included; only a connection that fails or bytes that are not 004 raise
`StreamApiError`. `StreamQos` and `StreamStatus` are the QoS and statuses it speaks in. The
orchestrator's `key stream` verb, the benchmark and the tests use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from ..errors import QkdnetError
from ..protocol.key_stream_messages import StreamQos, StreamStatus
from .etsi004_wire import (
    HEADER,
    CloseRequest,
    GetKeyAnswer,
    GetKeyRequest,
    OpenAnswer,
    OpenRequest,
    Service,
    WireError,
    decode_close_answer,
    decode_get_key_answer,
    decode_header,
    decode_open_answer,
    encode_close_request,
    encode_get_key_request,
    encode_open_request,
)

__all__ = [
    "GetKeyAnswer",
    "KeyStreamClient",
    "OpenAnswer",
    "StreamApiError",
    "StreamQos",
    "StreamStatus",
]

_MAX_ANSWER_BYTES = 1 << 20
T = TypeVar("T")


class StreamApiError(QkdnetError):
    """The KME could not be reached, or answered something that is not ETSI 004."""


class KeyStreamClient:
    """One SAE's connection to its KME's ETSI GS QKD 004 server."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, timeout_s: float = 90.0):
        self.host = host
        self.port = port
        self._context = context
        self._timeout_s = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> KeyStreamClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def connect(self) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                self._reader, self._writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self._context, server_hostname=self.host
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise StreamApiError(f"{self.host}:{self.port}: cannot connect ({exc})") from None

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def _call(self, request: bytes, expect: Service) -> bytes:
        async with self._lock:
            if self._reader is None or self._writer is None:
                await self.connect()
            assert self._reader is not None
            assert self._writer is not None
            try:
                async with asyncio.timeout(self._timeout_s):
                    self._writer.write(request)
                    await self._writer.drain()
                    service, length = decode_header(await self._reader.readexactly(HEADER.size))
                    if service is not expect or length > _MAX_ANSWER_BYTES:
                        raise WireError(f"{service.name} of {length} bytes for a {expect.name}")
                    return await self._reader.readexactly(length)
            except WireError as exc:
                await self.aclose()  # the stream is out of step: the next call reconnects
                raise StreamApiError(f"{self.host}:{self.port}: {exc}") from None
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
                await self.aclose()
                raise StreamApiError(f"{self.host}:{self.port}: no answer ({exc!r})") from None
            except asyncio.CancelledError:
                await self.aclose()  # cancelled mid-call: its answer would go to the next call
                raise

    def _decode(self, decode: Callable[[bytes], T], payload: bytes) -> T:
        try:
            return decode(payload)
        except WireError as exc:
            raise StreamApiError(f"{self.host}:{self.port}: {exc}") from None

    async def open_connect(
        self,
        source: str,
        destination: str,
        qos: StreamQos,
        ksid: uuid.UUID | None = None,
    ) -> OpenAnswer:
        """OPEN_CONNECT: `ksid` None asks the KME for a new one."""
        request = OpenRequest(source, destination, qos, ksid or uuid.UUID(int=0))
        payload = await self._call(encode_open_request(request), Service.OPEN_CONNECT_ANSWER)
        return self._decode(decode_open_answer, payload)

    async def get_key(self, ksid: uuid.UUID, index: int, metadata_size: int = 1024) -> GetKeyAnswer:
        request = GetKeyRequest(ksid, index, metadata_size)
        payload = await self._call(encode_get_key_request(request), Service.GET_KEY_ANSWER)
        return self._decode(decode_get_key_answer, payload)

    async def close(self, ksid: uuid.UUID) -> StreamStatus:
        payload = await self._call(encode_close_request(CloseRequest(ksid)), Service.CLOSE_ANSWER)
        return self._decode(decode_close_answer, payload)
