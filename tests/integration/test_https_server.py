"""The HTTPS server of the node's APIs against slow and abusive clients: real TLS sockets in
process, with limits small enough to watch them act."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from qkdnet.node.edge.etsi014 import error_response
from qkdnet.node.edge.https_server import HttpLimits, HttpsServer, server_ssl_context
from qkdnet.node.identity import Role
from qkdnet.orchestrator.plan.pki import CertificateAuthority

pytestmark = pytest.mark.integration

LIMITS = HttpLimits(
    handshake_timeout_s=0.5, header_timeout_s=0.5, body_timeout_s=0.5, max_connections=4
)


class Api:
    """`GET /hold` waits until released; `POST /echo` reads its body; `GET /ok` answers."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.app = web.Application(client_max_size=LIMITS.max_body_bytes)
        self.app.router.add_get("/ok", self.ok)
        self.app.router.add_get("/hold", self.hold)
        self.app.router.add_post("/echo", self.echo)
        self.server = HttpsServer(self.app, LIMITS, error_response)

    async def ok(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def hold(self, request: web.Request) -> web.Response:
        await self.release.wait()
        return web.json_response({"held": True})

    async def echo(self, request: web.Request) -> web.Response:
        return web.json_response({"bytes": len(await self.server.read_body(request))})


OPEN: list[asyncio.StreamWriter] = []


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Api, ssl.SSLContext]]:
    ca = CertificateAuthority(tmp_path / "ca")
    server = ca.issue(Role.NODE, "kme", tmp_path / "kme", hosts=["127.0.0.1"])
    client = ca.issue(Role.SAE, "sae", tmp_path / "sae")
    context = ssl.create_default_context(cafile=str(client.ca))
    context.load_cert_chain(str(client.cert), str(client.key))
    api = Api()
    await api.server.start("127.0.0.1", 0, server_ssl_context(server.ca, server.cert, server.key))
    yield api, context
    api.release.set()
    for writer in OPEN:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    OPEN.clear()
    await api.server.stop()


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _connect(api: Api, context: ssl.SSLContext | None) -> Connection:
    reader, writer = await asyncio.open_connection("127.0.0.1", api.server.port, ssl=context)
    OPEN.append(writer)
    return reader, writer


async def _closed(connection: Connection, within: float = 5.0) -> bool:
    """Whether the server closes the connection (in `within` seconds)."""
    reader, _ = connection
    try:
        async with asyncio.timeout(within):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        pass
    return True


async def _request(connection: Connection, raw: bytes) -> tuple[int, dict[str, object]]:
    reader, writer = connection
    writer.write(raw)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, json.loads(await reader.readexactly(length))


async def test_a_half_sent_head_is_dropped_after_the_header_timeout(
    api: tuple[Api, ssl.SSLContext],
) -> None:
    server, context = api
    connection = await _connect(server, context)
    connection[1].write(b"GET /ok HTTP/1.1\r\nHost: x\r\n")  # no blank line: never complete
    assert await _closed(connection)


async def test_a_silent_tcp_connection_is_dropped_after_the_handshake_timeout(
    api: tuple[Api, ssl.SSLContext],
) -> None:
    server, _ = api
    connection = await _connect(server, None)
    connection[1].write(b"\x16\x03\x01")  # the start of a ClientHello, and nothing more
    assert await _closed(connection)


async def test_a_slow_body_gets_408_and_the_connection_closes(
    api: tuple[Api, ssl.SSLContext],
) -> None:
    server, context = api
    connection = await _connect(server, context)
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    status, body = await _request(connection, head + b"0123456789")
    assert status == 408
    assert "no complete body" in str(body["message"])
    assert await _closed(connection)


async def test_the_parser_s_own_answers_are_api_error_bodies(
    api: tuple[Api, ssl.SSLContext],
) -> None:
    server, context = api
    for raw in (
        b"G\x00T /ok HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /ok HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 10_000 + b"\r\n\r\n",
        b"GET /ok HTTP/9\r\n\r\n",
    ):
        status, body = await _request(await _connect(server, context), raw)
        assert status == 400
        assert str(body["message"]).startswith("malformed HTTP request")


async def test_at_the_cap_the_oldest_idle_connection_makes_room(
    api: tuple[Api, ssl.SSLContext],
) -> None:
    server, context = api
    busy = await _connect(server, context)
    busy[1].write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")  # a request in progress
    await asyncio.sleep(0.1)
    idle = [await _connect(server, context) for _ in range(LIMITS.max_connections - 1)]
    for connection in idle:
        connection[1].write(b"GET /ok HTTP/1.1\r\n")  # half-sent heads
    await asyncio.sleep(0.1)
    # A well-behaved client comes in: the oldest idle one goes, the busy one stays.
    status, _ = await _request(
        await _connect(server, context), b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert status == 200
    assert await _closed(idle[0], within=0.3)
    assert server.server.evicted >= 1
    server.release.set()
    status, body = await _request(busy, b"")
    assert (status, body) == (200, {"held": True})


async def test_at_the_cap_with_every_connection_busy_a_newcomer_is_refused(
    api: tuple[Api, ssl.SSLContext],
) -> None:
    server, context = api
    busy = [await _connect(server, context) for _ in range(LIMITS.max_connections)]
    for connection in busy:
        connection[1].write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.2)
    newcomer = await _connect(server, context)
    assert await _closed(newcomer, within=2.0)
    assert server.server.refused == 1
    server.release.set()
    for connection in busy:
        assert (await _request(connection, b""))[0] == 200
