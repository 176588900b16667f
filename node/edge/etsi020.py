"""ETSI GS QKD 020 (V1.1.1) between border KMSs of two domains: HTTPS server and client.

Endpoints (the standard's OpenAPI, `etsi020_openapi.yaml`, vendored byte for byte with its
BSD-3 licence): `GET /kmapi/versions`, `POST /kmapi/v1/ext_keys`, `POST /kmapi/v1/ext_keys/ack`,
`POST /kmapi/v1/ext_keys/void`; `GET /kmapi/openapi.json` serves that document as JSON, its
server URL set to this node's and its profile in `x-qkdnet-profile`.

Transport: TLS 1.3 or newer with mutual authentication. The listener trusts only the peer
domain's CA (the trust bundle exchanged at deploy time) and answers only the peer border's
certificate (401 for any other identity, its own domain's included); the client trusts only
the peer's CA. Bodies are JSON (UTF-8); every error is an RFC 9457 problem-details object with
the standard's `type` URIs (`https://qkd.etsi.org/gs020-interop-kms/...`) and `details`, as
`application/json` like the OpenAPI says. 400 and 401 mean nothing was kept (`BorderKms`
refuses before it keeps anything); anything that may have gone on is 202, 503 or 408.

Both modes are served: asynchronous (`ack_callback_url` given: 202, acknowledgements posted
later to the peer's `/kmapi/v1/ext_keys/ack`; the callback must be that URL, 401 otherwise) and
synchronous (no callback: the acks in a 200). `/kmapi/versions` announces `v1` and
`synchronous_mode`. This node's own transfers are asynchronous, as every KMS must accept them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import logging
import re
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import KeyStoreError, RelayError
from ..identity import Identity, peer_certificate_identity
from ..protocol.interworking import BorderKms
from ..protocol.interworking_messages import (
    PROBLEM_TYPE_PREFIX,
    Ack,
    AckStatus,
    ExtKey,
    InterworkingRefusal,
    KeyTransfer,
    VoidRequest,
)
from ..structured_log import log_event
from .https_server import BodyTimeout, HttpLimits, HttpsServer

__all__ = [
    "ACK_PATH",
    "EXT_KEYS_PATH",
    "VOID_PATH",
    "HttpPeerKms",
    "InterworkingServer",
    "interworking_client_context",
    "interworking_server_context",
    "openapi_document",
    "problem_response",
]

logger = logging.getLogger("qkdnet.node.edge.etsi020")

VERSIONS_PATH = "/kmapi/versions"
EXT_KEYS_PATH = "/kmapi/v1/ext_keys"
ACK_PATH = "/kmapi/v1/ext_keys/ack"
VOID_PATH = "/kmapi/v1/ext_keys/void"
OPENAPI_PATH = "/kmapi/openapi.json"
MAX_KEYS = 1024  # per transfer, and key IDs per ack or void container
MAX_BODY_BYTES = 8 << 20
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# RFC 3986: unreserved, gen-delims, sub-delims and percent-escapes.
_SAE_ID = re.compile(r"^(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2}){1,64}$")
_EXTENSION_NAME = re.compile(r"^E[0-9]+_")
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    503: "Service Unavailable",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Identify = Callable[[web.Request], Identity | None]


def problem_response(status: int, problem: str, detail: str, message: str) -> web.Response:
    """A problem-details answer (RFC 9457) as GS QKD 020 writes them."""
    body = {
        "type": PROBLEM_TYPE_PREFIX + problem,
        "status": status,
        "title": _TITLES.get(status, "Error"),
        "details": {detail: message[:1024]},
    }
    return web.json_response(body, status=status)


def _framework_problem(status: int, message: str) -> web.Response:
    """The HTTPS server's own answers (408, malformed requests) as problem details."""
    if status == 408:
        return problem_response(408, "timeout", "timeout", message)
    return problem_response(status, "bad-request", "bad_request", message)


@functools.cache
def _official_document() -> dict[str, Any]:
    import yaml

    text = resources.files(__package__).joinpath("etsi020_openapi.yaml").read_text("utf-8")
    document: dict[str, Any] = yaml.safe_load(text)
    return document


def openapi_document(base_url: str = "https://127.0.0.1:443") -> dict[str, Any]:
    """The standard's OpenAPI document, as this node serves it: its server, its profile."""
    document: dict[str, Any] = json.loads(json.dumps(_official_document(), default=str))
    document["servers"] = [{"url": base_url, "description": "this border KMS"}]
    document["info"]["x-qkdnet-profile"] = {
        "modes": ["asynchronous", "synchronous"],
        "max_keys_per_transfer": MAX_KEYS,
        "callback": f"only the peer border's {ACK_PATH}",
        "caller": "only the peer border's certificate, from the peer domain's CA",
        "key_sizes": "whole bytes; keys of one transfer may differ in size",
        "mandatory_extensions": ["E32473_qkdnet_link_otp (borders that share a QKD link)"],
    }
    return document


def interworking_server_context(peer_ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.3 server: this node's certificate; a client certificate from `peer_ca` (the peer
    domain's CA, and only it) required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(peer_ca))
    context.load_cert_chain(str(cert), str(key))
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def interworking_client_context(peer_ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.3 client: this node's certificate presented; the server's checked against
    `peer_ca` and the peer border's name (the URL's host)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(peer_ca))
    context.load_cert_chain(str(cert), str(key))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def _certificate_identity(request: web.Request) -> Identity | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    return peer_certificate_identity(ssl_object.getpeercert() if ssl_object else None)


# -- JSON of the standard ------------------------------------------------------------------------
def _bad(detail: str, message: str, problem: str = "missing-parameters") -> InterworkingRefusal:
    return InterworkingRefusal(400, problem, detail, message)


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad("missing_parameters", f"{what} shall be a JSON object")
    return body


def _required(body: Mapping[str, Any], name: str, what: str) -> Any:
    if name not in body:
        raise _bad("missing_parameters", f"{what}: {name} is missing")
    return body[name]


def _sae_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _SAE_ID.match(value):
        raise _bad("missing_parameters", f"{where}: an SAE ID of 1 to 64 URI characters")
    return value


def _targets(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _bad("missing_parameters", f"{where}: a non-empty array of SAE IDs")
    return tuple(_sae_id(item, f"{where}[{i}]") for i, item in enumerate(value))


def _key_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _UUID.match(value):
        raise _bad("missing_parameters", f"{where}: a UUID")
    return value.lower()


def _extension(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not 1 <= len(value) <= 1024:
        raise _bad("missing_parameters", f"{where}: an object of 1 to 1024 members")
    return value


def _callback(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("https://") or len(value) > 1024:
        raise _bad("missing_parameters", "ack_callback_url: an https:// URL of 1024 characters")
    return value


def _value(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise _bad("missing_parameters", f"{where}: base64")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("missing_parameters", f"{where}: not base64 (RFC 4648)") from None
    if not raw:
        raise _bad("missing_parameters", f"{where}: an empty key")
    return raw


def parse_transfer(body: Any) -> KeyTransfer:
    """An `ext_key_container`; InterworkingRefusal(400) saying what is wrong where."""
    body = _object(body, "ext_key_container")
    raw_keys = _required(body, "keys", "ext_key_container")
    if not isinstance(raw_keys, list) or not raw_keys:
        raise _bad("missing_parameters", "keys: a non-empty array")
    if len(raw_keys) > MAX_KEYS:
        raise InterworkingRefusal(
            503, "server-side-general-error", "too_many_keys", f"at most {MAX_KEYS} keys"
        )
    keys = []
    for index, item in enumerate(raw_keys):
        where = f"keys[{index}]"
        item = _object(item, where)
        keys.append(
            ExtKey(
                _key_id(_required(item, "key_id", where), f"{where}.key_id"),
                _value(_required(item, "value", where), f"{where}.value"),
                _extension(item.get("extension"), f"{where}.extension"),
            )
        )
    mandatory = _extension(body.get("extension_mandatory"), "extension_mandatory")
    for name in mandatory or {}:
        if not _EXTENSION_NAME.match(name):
            raise _bad("missing_parameters", f"extension_mandatory: {name[:64]} is not E<PEN>_")
    return KeyTransfer(
        keys=tuple(keys),
        initiator=_sae_id(
            _required(body, "initiator_sae_id", "ext_key_container"), "initiator_sae_id"
        ),
        targets=_targets(_required(body, "target_sae_ids", "ext_key_container"), "target_sae_ids"),
        callback_url=_callback(body.get("ack_callback_url")),
        extension_mandatory=mandatory,
        extension_optional=_extension(body.get("extension_optional"), "extension_optional"),
    )


def parse_acks(body: Any) -> list[Ack]:
    """`ack_containers`; InterworkingRefusal(400, ack-not-understood) when malformed."""

    def bad(message: str) -> InterworkingRefusal:
        return _bad("ack_not_understood", message, "ack-not-understood")

    if not isinstance(body, list) or not body or len(body) > MAX_KEYS:
        raise bad("ack_containers: an array of 1 to 1024 ack_container")
    acks = []
    for index, item in enumerate(body):
        where = f"[{index}]"
        if not isinstance(item, dict):
            raise bad(f"{where}: an ack_container object")
        for name in ("key_id_container", "ack_status", "initiator_sae_id", "target_sae_ids"):
            if name not in item:
                raise bad(f"{where}: {name} is missing")
        ids = item["key_id_container"]
        if not isinstance(ids, list) or len(ids) > MAX_KEYS:
            raise bad(f"{where}.key_id_container: an array of at most 1024 objects")
        key_ids = []
        for j, entry in enumerate(ids):
            if not isinstance(entry, dict) or "key_id" not in entry:
                raise bad(f"{where}.key_id_container[{j}]: an object with key_id")
            if not isinstance(entry["key_id"], str) or not _UUID.match(entry["key_id"]):
                raise bad(f"{where}.key_id_container[{j}].key_id: a UUID")
            key_ids.append(entry["key_id"].lower())
        try:
            status = AckStatus(item["ack_status"])
        except (ValueError, TypeError):
            raise bad(f"{where}.ack_status: one of {', '.join(AckStatus)}") from None
        message = item.get("message", "")
        if not isinstance(message, str):
            raise bad(f"{where}.message: a string")
        try:
            initiator = _sae_id(item["initiator_sae_id"], f"{where}.initiator_sae_id")
            targets = _targets(item["target_sae_ids"], f"{where}.target_sae_ids")
        except InterworkingRefusal as exc:
            raise bad(exc.message) from None
        acks.append(Ack(tuple(key_ids), status, initiator, targets, message[:4096]))
    return acks


def parse_void(body: Any) -> VoidRequest:
    """A `void_container`; InterworkingRefusal(400, void-request-not-understood)."""

    def bad(message: str) -> InterworkingRefusal:
        return _bad("key_voiding_error", message, "void-request-not-understood")

    if not isinstance(body, dict):
        raise bad("void_container shall be a JSON object")
    for name in ("key_ids", "initiator_sae_id", "target_sae_ids"):
        if name not in body:
            raise bad(f"void_container: {name} is missing")
    ids = body["key_ids"]
    if not isinstance(ids, list) or len(ids) > MAX_KEYS:
        raise bad("key_ids: an array of at most 1024 UUIDs")
    confirmation = body.get("all_confirmation", False)
    if not isinstance(confirmation, bool):
        raise bad("all_confirmation: true or false")
    try:
        return VoidRequest(
            key_ids=tuple(_key_id(item, f"key_ids[{i}]") for i, item in enumerate(ids)),
            initiator=_sae_id(body["initiator_sae_id"], "initiator_sae_id"),
            targets=_targets(body["target_sae_ids"], "target_sae_ids"),
            callback_url=_callback(body.get("ack_callback_url")),
            all_confirmation=confirmation,
        )
    except InterworkingRefusal as exc:
        raise bad(exc.message) from None


def ack_json(acks: Sequence[Ack]) -> list[dict[str, Any]]:
    out = []
    for ack in acks:
        item: dict[str, Any] = {
            "key_id_container": [{"key_id": key_id} for key_id in ack.key_ids],
            "ack_status": str(ack.status),
            "initiator_sae_id": ack.initiator,
            "target_sae_ids": list(ack.targets),
        }
        if ack.message:
            item["message"] = ack.message
        out.append(item)
    return out


def transfer_json(transfer: KeyTransfer) -> dict[str, Any]:
    body: dict[str, Any] = {
        "keys": [
            {"key_id": key.key_id, "value": base64.b64encode(key.value).decode()}
            | ({"extension": dict(key.extension)} if key.extension else {})
            for key in transfer.keys
        ],
        "initiator_sae_id": transfer.initiator,
        "target_sae_ids": list(transfer.targets),
    }
    if transfer.callback_url is not None:
        body["ack_callback_url"] = transfer.callback_url
    if transfer.extension_mandatory:
        body["extension_mandatory"] = dict(transfer.extension_mandatory)
    if transfer.extension_optional:
        body["extension_optional"] = dict(transfer.extension_optional)
    return body


def void_json(request: VoidRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "key_ids": list(request.key_ids),
        "initiator_sae_id": request.initiator,
        "target_sae_ids": list(request.targets),
    }
    if request.callback_url is not None:
        body["ack_callback_url"] = request.callback_url
    if request.all_confirmation:
        body["all_confirmation"] = True
    return body


# -- server ----------------------------------------------------------------------------------
class InterworkingServer:
    """The 020 HTTPS server of one border node, for one peer border."""

    def __init__(
        self,
        border: BorderKms,
        peer: Identity,
        peer_url: str,
        own_url: str,
        limits: HttpLimits | None = None,
        identify: Identify | None = None,
    ) -> None:
        """`peer`: the only identity answered; `peer_url`: its base URL (acks go to its
        `ACK_PATH`, and a transfer's callback must be that); `own_url`: this server's, for the
        OpenAPI document. `identify` names the caller (default: its TLS certificate)."""
        self._border = border
        self._peer = peer
        self._peer_ack_url = peer_url.rstrip("/") + ACK_PATH
        self._own_url = own_url
        self._identify = identify or _certificate_identity
        # A full container (1,024 keys or acks, each with extensions) passes 1 MiB; only the
        # peer border, authenticated before its body is read, can send one.
        limits = limits or HttpLimits(max_body_bytes=MAX_BODY_BYTES)
        app = web.Application(client_max_size=limits.max_body_bytes, middlewares=[self._errors])
        app.router.add_get(VERSIONS_PATH, self._versions, allow_head=False)
        app.router.add_get(OPENAPI_PATH, self._openapi, allow_head=False)
        app.router.add_post(EXT_KEYS_PATH, self._ext_keys)
        app.router.add_post(ACK_PATH, self._ack)
        app.router.add_post(VOID_PATH, self._void)
        self.app = app
        self._server = HttpsServer(app, limits, _framework_problem)
        self.answers: Counter[int] = Counter()

    @property
    def port(self) -> int:
        return self._server.port

    async def start(self, host: str, port: int, context: ssl.SSLContext) -> None:
        await self._server.start(host, port, context)

    async def stop(self) -> None:
        await self._server.stop()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every refusal as problem details; never a 500."""
        try:
            identity = self._identify(request)
            if identity != self._peer:
                raise InterworkingRefusal(
                    401,
                    "unauthorized",
                    "unauthorized",
                    f"only the peer border ({self._peer}) may call; not "
                    f"{identity or 'a caller without a qkdnet identity'}",
                )
            response = await handler(request)
        except InterworkingRefusal as exc:
            response = problem_response(exc.status, exc.problem, exc.detail, exc.message)
            if exc.status in (400, 401, 503):
                self._border.counters.refusals[exc.detail] += 1
        except web.HTTPRequestEntityTooLarge:
            # Capacity, as the standard's errors go (413 is none of its answers): try less.
            response = problem_response(
                503,
                "server-side-general-error",
                "server_side_general_error",
                f"a body over {MAX_BODY_BYTES >> 20} MiB; nothing was kept",
            )
        except web.HTTPException as exc:  # the framework's: 404, 405
            status = exc.status if exc.status in _TITLES else 400
            response = problem_response(
                status,
                "bad-request",
                "bad_request",
                f"{exc.reason}: {request.method} {request.path}"[:200],
            )
            if status == 405:
                response.headers["Allow"] = exc.headers.get("Allow", "")
        except BodyTimeout:
            self.answers[408] += 1
            raise
        except HttpProcessingError as exc:
            response = problem_response(400, "bad-request", "bad_request", exc.message[:200])
            response.force_close()
        except ConnectionError:
            raise
        except (RelayError, KeyStoreError) as exc:
            log_event(logger, logging.WARNING, "interworking_failed", error=str(exc))
            response = problem_response(
                503, "server-side-general-error", "server_side_general_error", str(exc)
            )
        except Exception:
            logger.exception("020 request failed")
            response = problem_response(
                503,
                "server-side-general-error",
                "server_side_general_error",
                "internal error; nothing was kept",
            )
        self.answers[response.status] += 1
        return response

    async def _json(self, request: web.Request) -> Any:
        raw = await self._server.read_body(request)
        if request.content_type not in ("application/json", "application/problem+json"):
            raise _bad("missing_parameters", "the body shall be application/json")
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise _bad("missing_parameters", "the body is not UTF-8 JSON") from None

    def _check_callback(self, url: str | None) -> None:
        if url is not None and url != self._peer_ack_url:
            raise InterworkingRefusal(
                401,
                "unauthorized",
                "unauthorized",
                f"ack_callback_url must be the peer border's {self._peer_ack_url}",
            )

    async def _versions(self, request: web.Request) -> web.Response:
        return web.json_response({"versions": ["v1"], "capabilities": ["synchronous_mode"]})

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document(self._own_url))

    async def _ext_keys(self, request: web.Request) -> web.Response:
        transfer = parse_transfer(await self._json(request))
        self._check_callback(transfer.callback_url)
        acks = await self._border.receive_transfer(transfer)
        if acks is None:
            return web.Response(status=202)
        return web.json_response(ack_json(acks))

    async def _ack(self, request: web.Request) -> web.Response:
        self._border.receive_acks(parse_acks(await self._json(request)))
        return web.Response(status=200)

    async def _void(self, request: web.Request) -> web.Response:
        void = parse_void(await self._json(request))
        self._check_callback(void.callback_url)
        acks = await self._border.receive_void(void)
        if acks is None:
            return web.Response(status=202)
        return web.json_response(ack_json(acks))


# -- client ----------------------------------------------------------------------------------
class HttpPeerKms:
    """`PeerKms` over HTTPS: the peer border's 020 API."""

    def __init__(self, base_url: str, context: ssl.SSLContext, timeout_s: float = 5.0) -> None:
        self._base = base_url.rstrip("/")
        self._context = context
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._context, limit=64),
                timeout=self._timeout,
            )
        return self._session

    async def _post(self, path: str, body: Any) -> tuple[int, Any]:
        url = self._base + path
        try:
            async with self._client().post(url, json=body) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RelayError(
                f"the peer border at {self._base} did not answer ({type(exc).__name__})",
                reason="unreachable",
            ) from None
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if status >= 400:
            problem = data if isinstance(data, dict) else {}
            details = problem.get("details")
            detail, message = (
                next(iter(details.items()), ("", "")) if isinstance(details, dict) else ("", "")
            )
            kind = str(problem.get("type", "")).removeprefix(PROBLEM_TYPE_PREFIX)
            raise InterworkingRefusal(status, kind, str(detail), str(message) or f"HTTP {status}")
        return status, data

    async def transfer(self, transfer: KeyTransfer) -> list[Ack] | None:
        status, data = await self._post(EXT_KEYS_PATH, transfer_json(transfer))
        return None if status == 202 else parse_acks(data)

    async def acknowledge(self, acks: Sequence[Ack]) -> None:
        await self._post(ACK_PATH, ack_json(acks))

    async def void(self, request: VoidRequest) -> list[Ack] | None:
        status, data = await self._post(VOID_PATH, void_json(request))
        return None if status == 202 else parse_acks(data)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            await asyncio.sleep(0)
