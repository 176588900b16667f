"""ETSI GS QKD 014 (V1.1.1) key delivery over HTTPS with mutual TLS, served with aiohttp.

Endpoints (clause 5): `GET /api/v1/keys/{slave_SAE_ID}/status`, `GET|POST
/api/v1/keys/{slave_SAE_ID}/enc_keys` and `GET|POST /api/v1/keys/{master_SAE_ID}/dec_keys`;
`GET /api/v1/openapi.json` is the OpenAPI document of the API as this node serves it
(`etsi014_openapi.json`).

The caller must present a client certificate from the deployment's CA (anything else fails the
TLS handshake) that names an SAE (the `sae` role of `identity.py`: a node's or the controller's
certificate gets 401), and the node must serve that SAE (401 otherwise).

Every answer but a key container or a status is an ETSI Error body (`{"message": ...}`): 400
for a malformed request, 401 when the caller may not have the keys, 404 for an unknown path,
405 for a method a path does not take, 408 when the body does not arrive in time, 413 for a body
over 1 MiB, 415 for a body that is not UTF-8 JSON, and 503 when the keys cannot be delivered
now (no route, a failed relay, a key store that cannot be written: nothing is lost). No request
gets a 500. Keys are base64 (RFC 4648); sizes are in bits, multiples of 8. Key IDs are UUIDs in
their 8-4-4-4-12 form and are compared without regard to case (RFC 4122).

A key container is written to the master before its keys are final: if the master is gone
before the answer is written (it hung up), the keys are withdrawn at every slave's KME and
counted as abandoned (`KeyManager.abandon`), never left at one end only. Likewise a slave that
hangs up before its dec_keys answer is written keeps its keys, to ask for them again.

Vendor extensions use the prefix `qkdnet_`, in `extension_mandatory` or `extension_optional` of
a POST enc_keys: `{"qkdnet_multipath": true}` splits each key into XOR shares over node-disjoint
routes (mandatory and impossible: 400; optional and impossible: one route), `{"qkdnet_pool":
false}` relays every key on demand. Any other mandatory extension is refused as the standard
prescribes. Every key container of enc_keys carries `key_container_extension.qkdnet_relay`:
where the keys came from (`local`, `pool`, `relay`, `pool+relay`), the routes and the time each
node spent on them.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import KeyStoreError, RelayError
from ..identity import Identity, Role, peer_certificate_identity
from ..protocol.hybrid_keys import HYBRID_EXTENSION, HybridKeys
from ..protocol.key_manager import KeyManager
from ..store.delivered_keys import KeyNotFound, KeyNotYours
from ..structured_log import log_event
from .https_server import BodyTimeout, HttpLimits, HttpsServer

__all__ = [
    "API_PREFIX",
    "EXTENSIONS",
    "INTERNAL_ERROR",
    "KeyDeliveryServer",
    "error_response",
    "openapi_document",
]

logger = logging.getLogger("qkdnet.node.edge.etsi014")

API_PREFIX = "/api/v1/keys"
_SAE = r"{sae:[^/]*}"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_COUNT = re.compile(r"^[0-9]{1,9}$")  # ASCII digits; a billion is above every limit
_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    503: "Service Unavailable",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# What a request that met a bug gets (logged with its traceback): a 503, never a 500.
INTERNAL_ERROR = "the KME could not handle the request"


class _ApiError(Exception):
    """An answer other than 200, with its ETSI Error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _bad(message: str) -> _ApiError:
    return _ApiError(400, message)


def error_response(status: int, message: str) -> web.Response:
    """An ETSI GS QKD 014 Error body (`message`) with `status`."""
    return web.json_response({"message": message}, status=status)


@functools.cache
def openapi_document() -> bytes:
    """The OpenAPI 3 document of this API (JSON), read once."""
    return resources.files(__package__).joinpath("etsi014_openapi.json").read_bytes()


def _key_container(
    keys: list[tuple[str, bytes]], extension: dict[str, Any] | None = None
) -> web.Response:
    """The Key container of clause 6.3: key IDs with base64 keys (and an extension)."""
    body: dict[str, Any] = {
        "keys": [{"key_ID": i, "key": base64.b64encode(k).decode()} for i, k in keys]
    }
    if extension:
        body["key_container_extension"] = extension
    return web.json_response(body)


# The vendor extensions of enc_keys (objects in extension_mandatory / extension_optional):
# qkdnet_multipath splits each key into XOR shares over node-disjoint routes; qkdnet_pool false
# relays every key on demand instead of handing out keys relayed ahead of demand; qkdnet_hybrid
# combines each key with an ML-KEM-768 secret between the master's and the slave's KMEs
# (`protocol/hybrid_keys.py`).
EXTENSIONS = {"qkdnet_multipath": bool, "qkdnet_pool": bool, "qkdnet_hybrid": bool}


def _extensions(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The parameters of `extension_mandatory` or `extension_optional`, merged."""
    entries = body.get(name)
    if entries is None:
        return {}
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise _bad(f"{name} shall be an array of objects")
    merged: dict[str, Any] = {}
    for entry in entries:
        for key, value in entry.items():
            kind = EXTENSIONS.get(key)
            if kind is not None and not isinstance(value, kind):
                raise _bad(f"{name}: {key} shall be a {kind.__name__}")
            merged[key] = value
    return merged


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, str):
        if not _COUNT.match(value):
            raise _bad(f"{name} shall be a positive integer")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _bad(f"{name} shall be a positive integer")
    return value


def _query(request: web.Request, allowed: set[str], what: str) -> dict[str, str]:
    """The query parameters (each at most once, only `allowed` ones)."""
    query = request.query
    extra = set(query) - allowed
    if extra:
        shown = ", ".join(sorted(repr(k[:40]) for k in extra)[:5])
        takes = f"only {' and '.join(sorted(allowed))}" if allowed else "no"
        raise _bad(f"{what} takes {takes} query parameters, not {shown}")
    for key in allowed:
        if len(query.getall(key, [])) > 1:
            raise _bad(f"{key} is given more than once")
    return {key: query[key] for key in allowed if key in query}


def _certificate_identity(request: web.Request) -> Identity | None:
    """The identity in the request's TLS client certificate."""
    cert = request.transport.get_extra_info("peercert") if request.transport else None
    return peer_certificate_identity(cert)


class KeyDeliveryServer:
    """The HTTPS server of one node's KME."""

    def __init__(
        self,
        manager: KeyManager,
        kme_id: str,
        all_saes: Mapping[str, str],
        trust_domain: str,
        limits: HttpLimits | None = None,
        identify: Callable[[web.Request], Identity | None] | None = None,
        hybrid: HybridKeys | None = None,
    ) -> None:
        """`identify` names the caller of a request; by default the identity in its TLS client
        certificate (tests in memory give the caller another way). Without `hybrid`, the
        qkdnet_hybrid extension is not supported."""
        self._manager = manager
        self._hybrid = hybrid
        self._identify = identify or _certificate_identity
        self._kme_id = kme_id
        self._all_saes = dict(all_saes)  # SAE ID -> node (KME) ID, for the whole network
        self._trust_domain = trust_domain
        limits = limits or HttpLimits()
        app = web.Application(
            client_max_size=limits.max_body_bytes, middlewares=[self._errors_as_etsi]
        )
        app.router.add_get(f"{API_PREFIX}/{_SAE}/status", self._api(self._status), allow_head=False)
        for name, call in (("enc_keys", self._enc_keys), ("dec_keys", self._dec_keys)):
            path = f"{API_PREFIX}/{_SAE}/{name}"
            app.router.add_get(path, self._api(call), allow_head=False)
            app.router.add_post(path, self._api(call))
        app.router.add_get("/api/v1/openapi.json", self._openapi, allow_head=False)
        self.app = app
        self._server = HttpsServer(app, limits, error_response)
        self.answers: Counter[int] = Counter()  # status -> count, for telemetry

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def server(self) -> HttpsServer:
        return self._server

    async def start(self, host: str, port: int, context: Any) -> None:
        await self._server.start(host, port, context)

    async def stop(self) -> None:
        await self._server.stop()

    # -- plumbing ----------------------------------------------------------------------------
    @web.middleware
    async def _errors_as_etsi(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every answer that is not the API's own becomes an ETSI Error body; never a 500."""
        try:
            response = await handler(request)
        except _ApiError as exc:
            response = error_response(exc.status, exc.message)
        except web.HTTPException as exc:  # the framework's: 404, 405, 413
            status = exc.status if exc.status in _REASONS else 400
            response = error_response(status, _framework_message(exc, request))
            if status == 405:
                response.headers["Allow"] = exc.headers.get("Allow", "")
        except BodyTimeout:
            self.answers[408] += 1
            raise  # answered by the HTTPS server
        except HttpProcessingError as exc:  # a body the HTTP parser refused (bad chunking)
            response = error_response(400, f"malformed HTTP request: {exc.message[:200]}")
            response.force_close()
        except ConnectionError:
            raise  # the client is gone: there is nobody to answer
        except Exception:
            logger.exception("request failed")  # a bug: logged, and the client gets a 503
            response = error_response(503, INTERNAL_ERROR)
        self.answers[response.status] += 1
        return response

    def _api(self, fn: Any) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            caller = self._caller(request)
            sae = request.match_info["sae"]
            if not sae:
                raise _bad("the SAE ID in the path is empty")
            if caller not in self._manager.local_saes:
                raise _ApiError(401, f"SAE {caller} is not served by KME {self._kme_id}")
            if sae == caller:
                raise _bad("the SAE ID in the path is the caller's own")
            try:
                result: web.StreamResponse = await fn(request, caller, sae)
            except RelayError as exc:
                log_event(logger, logging.WARNING, "delivery_failed", reason=exc.reason)
                raise _ApiError(503, f"keys could not be delivered: {exc}") from None
            except KeyNotYours as exc:
                raise _ApiError(401, str(exc)) from None
            except KeyNotFound as exc:
                raise _bad(str(exc)) from None
            except KeyStoreError as exc:
                log_event(logger, logging.ERROR, "key_store_unavailable", error=str(exc))
                raise _ApiError(503, "the KME's key store cannot be used now; try again") from None
            return result

        return handler

    def _caller(self, request: web.Request) -> str:
        """The SAE ID of the client certificate; 401 for any other identity."""
        identity = self._identify(request)
        if identity is None:
            raise _ApiError(401, "the client certificate names no SAE")
        if identity.trust_domain != self._trust_domain or identity.role is not Role.SAE:
            raise _ApiError(401, f"the client certificate is for {identity}, not for an SAE")
        return identity.name

    def _known(self, sae: str, what: str) -> None:
        if sae not in self._all_saes:
            raise _bad(f"{what} {sae[:80]} is unknown in this network")

    async def _body(self, request: web.Request) -> dict[str, Any]:
        """The JSON object of a POST (an empty body is an empty object)."""
        raw = await self._server.read_body(request)
        if not raw.strip():
            return {}
        if "Content-Type" in request.headers:
            if request.content_type != "application/json" and not request.content_type.endswith(
                "+json"
            ):
                raise _ApiError(415, "the request body shall be application/json")
            charset = (request.charset or "utf-8").lower().replace("_", "-")
            if charset not in ("utf-8", "utf8"):
                raise _ApiError(415, "the request body shall be UTF-8")
        try:
            body = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise _ApiError(415, "the request body is not UTF-8") from None
        except RecursionError:
            raise _bad("the request body nests too deeply") from None
        except ValueError:  # malformed JSON, or an integer of thousands of digits
            raise _bad("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _bad("the request body shall be a JSON object")
        return body

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=openapi_document(), content_type="application/json")

    # -- Get status --------------------------------------------------------------------------
    async def _status(self, request: web.Request, caller: str, slave: str) -> web.Response:
        _query(request, set(), "status")
        self._known(slave, "slave SAE")
        limits = self._manager.limits
        stored = await self._manager.stored_key_count(caller, slave)
        return web.json_response(
            {
                "source_KME_ID": self._kme_id,
                "target_KME_ID": self._all_saes[slave],
                "master_SAE_ID": caller,
                "slave_SAE_ID": slave,
                "key_size": limits.key_size,
                "stored_key_count": min(stored, limits.max_key_count),
                "max_key_count": limits.max_key_count,
                "max_key_per_request": limits.max_key_per_request,
                "max_key_size": limits.max_key_size,
                "min_key_size": limits.min_key_size,
                "max_SAE_ID_count": limits.max_sae_id_count,
                # How long a slave has to fetch a key once its master got it (then discarded).
                "status_extension": {"qkdnet_key_ttl_s": self._manager.policy.key_ttl_s},
            }
        )

    # -- Get key -----------------------------------------------------------------------------
    async def _enc_keys(self, request: web.Request, caller: str, slave: str) -> web.StreamResponse:
        self._known(slave, "slave SAE")
        limits = self._manager.limits
        if request.method == "GET":
            body: dict[str, Any] = _query(request, {"number", "size"}, "GET enc_keys")
        else:
            _query(request, set(), "POST enc_keys")
            body = await self._body(request)
        number = _positive_int(body.get("number", 1), "number")
        size = _positive_int(body.get("size", limits.key_size), "size")
        if size % 8:
            raise _bad("size shall be a multiple of 8")
        if not limits.min_key_size <= size <= limits.max_key_size:
            raise _bad(f"size shall be between {limits.min_key_size} and {limits.max_key_size}")
        if number > limits.max_key_per_request:
            raise _bad(f"number shall be at most {limits.max_key_per_request}")
        slaves = [slave, *self._additional_slaves(body, caller, slave)]
        mandatory = _extensions(body, "extension_mandatory")
        optional = _extensions(body, "extension_optional")
        if set(mandatory) - set(EXTENSIONS):
            raise _bad("not all extension_mandatory parameters are supported")
        options = {k: v for k, v in optional.items() if k in EXTENSIONS} | mandatory
        multipath = options.get("qkdnet_multipath")
        use_pool = options.get("qkdnet_pool", True)
        hybrid = self._hybrid if options.get("qkdnet_hybrid") else None
        if hybrid is None and mandatory.get("qkdnet_hybrid"):
            raise _bad("not all extension_mandatory parameters are supported")
        if hybrid is not None and len(slaves) > 1:
            if mandatory.get("qkdnet_hybrid"):
                raise _bad(
                    "not all extension_mandatory request options could be met: hybrid keys "
                    "are for one slave SAE (no additional_slave_SAE_IDs)"
                )
            hybrid = None  # optional: plain keys
        try:
            keys, report = await self._manager.enc_keys(
                caller, slaves, number, size, multipath=multipath, use_pool=use_pool
            )
        except RelayError as exc:
            if not multipath or exc.reason not in ("no_disjoint_routes", "no_route"):
                raise
            if "qkdnet_multipath" in mandatory:
                if exc.reason == "no_route":
                    raise  # the routes exist but lack key for now: 503
                raise _bad(
                    f"not all extension_mandatory request options could be met: {exc}"
                ) from None
            # Optional: the KME may ignore it, so the keys go over a single route.
            keys, report = await self._manager.enc_keys(
                caller, slaves, number, size, multipath=False, use_pool=use_pool
            )
        extension: dict[str, Any] = {"qkdnet_relay": report.to_json()}
        if hybrid is not None:
            keys = await self._combine(hybrid, caller, slave, keys)
            extension["qkdnet_hybrid"] = HYBRID_EXTENSION
        response = _key_container(keys, extension)
        try:
            await self._write(request, response)
        except ConnectionError:
            await self._manager.abandon(caller, slaves, [key_id for key_id, _ in keys])
            raise
        return response

    async def _combine(
        self, hybrid: HybridKeys, master: str, slave: str, keys: list[tuple[str, bytes]]
    ) -> list[tuple[str, bytes]]:
        """The hybrid keys of `keys` (replaced at the slave's KME too); when the slave's KME
        cannot take part the keys are withdrawn there and the request fails (503)."""
        node = self._manager.node_of(slave)
        assert node is not None  # the keys reached it
        try:
            return await hybrid.combine(master, node, keys)
        except RelayError:
            with contextlib.suppress(RelayError, KeyStoreError):
                await self._manager.withdraw([slave], [key_id for key_id, _ in keys], "abandoned")
            raise

    def _additional_slaves(self, body: dict[str, Any], master: str, slave: str) -> list[str]:
        if "additional_slave_SAE_IDs" not in body:
            return []
        extra = body["additional_slave_SAE_IDs"]
        if not isinstance(extra, list) or not extra:
            raise _bad("additional_slave_SAE_IDs shall be a non-empty array of SAE IDs")
        limit = self._manager.limits.max_sae_id_count
        if len(extra) > limit:
            raise _bad(f"additional_slave_SAE_IDs holds more than {limit} SAE IDs")
        for sae in extra:
            if not isinstance(sae, str) or not sae.strip():
                raise _bad("additional_slave_SAE_IDs holds a blank or non-string ID")
            if sae in (master, slave):
                raise _bad(f"additional_slave_SAE_IDs names {sae}, the master or slave")
            self._known(sae, "additional slave SAE")
        if len(set(extra)) != len(extra):
            raise _bad("additional_slave_SAE_IDs holds duplicates")
        return list(extra)

    # -- Get key with key IDs ----------------------------------------------------------------
    async def _dec_keys(self, request: web.Request, caller: str, master: str) -> web.Response:
        self._known(master, "master SAE")
        if request.method == "GET":
            query = _query(request, {"key_ID"}, "GET dec_keys")
            if "key_ID" not in query:
                raise _bad("GET dec_keys takes exactly one key_ID")
            asked = [query["key_ID"]]
        else:
            _query(request, set(), "POST dec_keys")
            body = await self._body(request)
            entries = body.get("key_IDs")
            if not isinstance(entries, list) or not entries:
                raise _bad("key_IDs shall be a non-empty array")
            if len(entries) > self._manager.limits.max_key_per_request:
                raise _bad(f"key_IDs holds more than {self._manager.limits.max_key_per_request}")
            asked = []
            for entry in entries:
                if not isinstance(entry, dict) or not isinstance(entry.get("key_ID"), str):
                    raise _bad("every key_IDs entry shall be an object with a key_ID")
                asked.append(entry["key_ID"])
        for key_id in asked:
            if not _UUID.match(key_id):
                raise _bad("key_ID shall be a UUID (8-4-4-4-12 hexadecimal digits)")
        canonical = [key_id.lower() for key_id in asked]
        if len(set(canonical)) != len(canonical):
            raise _bad("key_IDs holds duplicates")
        spelling = dict(zip(canonical, asked, strict=True))  # answered as the caller wrote them
        async with self._manager.dec_keys(caller, master, canonical) as keys:
            response = _key_container([(spelling[key_id], key) for key_id, key in keys])
            # A slave that hung up already keeps its keys; otherwise they are its own for good
            # before the answer goes out, so that the store says so once the slave has them.
            if request.transport is None or request.transport.is_closing():
                raise ConnectionResetError("the slave hung up before its answer was written")
        return response

    @staticmethod
    async def _write(request: web.Request, response: web.Response) -> None:
        """Write `response` now; ConnectionError when the client is gone already."""
        if request.transport is None or request.transport.is_closing():
            raise ConnectionResetError("the client hung up before its answer was written")
        await response.prepare(request)
        await response.write_eof()


def _framework_message(exc: web.HTTPException, request: web.Request) -> str:
    path = request.path[:200]
    if exc.status == 404:
        return f"no such resource: {path}"
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        return f"{request.method[:20]} is not allowed on {path} (allowed: {allowed})"
    if exc.status == 413:
        return "the request body is larger than 1 MiB"
    return _REASONS.get(exc.status, "bad request")
