"""ETSI GS QKD 014 (V1.1.1) key delivery over HTTPS with mutual TLS, served with aiohttp.

Endpoints (clause 5): `GET /api/v1/keys/{slave_SAE_ID}/status`, `GET|POST
/api/v1/keys/{slave_SAE_ID}/enc_keys` and `GET|POST /api/v1/keys/{master_SAE_ID}/dec_keys`.
The calling SAE is the subject CN of its client certificate, which must come from the
deployment's CA (anything else fails the TLS handshake). An SAE may call this KME only if the
node serves it (401 otherwise). Errors follow the standard: 400 with an Error body for a bad
request, 401 when the caller may not have the keys, 503 when the keys cannot be delivered
(no route, a failed relay). Keys are base64 (RFC 4648); sizes are in bits, multiples of 8.

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
import json
import logging
import ssl
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from .delivered_keys import KeyNotFound, KeyNotYours
from .errors import RelayError
from .key_manager import KeyManager
from .structured_log import log_event

__all__ = ["KeyDeliveryServer", "server_ssl_context"]

logger = logging.getLogger("qkdnet.node.etsi014")

_SAE = r"{sae:[^/]*}"


class _BadRequest(Exception):
    status = 400


class _Unauthorized(_BadRequest):
    status = 401


def server_ssl_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2 or 1.3, server certificate of the node, client certificate required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


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
# relays every key on demand instead of handing out keys relayed ahead of demand.
EXTENSIONS = {"qkdnet_multipath": bool, "qkdnet_pool": bool}


def _extensions(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The parameters of `extension_mandatory` or `extension_optional`, merged."""
    entries = body.get(name)
    if entries is None:
        return {}
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise _BadRequest(f"{name} shall be an array of objects")
    merged: dict[str, Any] = {}
    for entry in entries:
        for key, value in entry.items():
            kind = EXTENSIONS.get(key)
            if kind is not None and not isinstance(value, kind):
                raise _BadRequest(f"{name}: {key} shall be a {kind.__name__}")
            merged[key] = value
    return merged


def _caller(request: web.Request) -> str:
    cert = request.transport.get_extra_info("peercert") if request.transport else None
    for rdn in (cert or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    raise _Unauthorized("no client certificate identifies the SAE")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, str):
        if not value.strip().isdigit():
            raise _BadRequest(f"{name} shall be a positive integer")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _BadRequest(f"{name} shall be a positive integer")
    return value


class KeyDeliveryServer:
    """The HTTPS server of one node's KME."""

    def __init__(self, manager: KeyManager, kme_id: str, all_saes: Mapping[str, str]) -> None:
        self._manager = manager
        self._kme_id = kme_id
        self._all_saes = dict(all_saes)  # SAE ID -> node (KME) ID, for the whole network
        self._runner: web.AppRunner | None = None
        self.port = 0
        app = web.Application(client_max_size=4 << 20)
        app.router.add_get(f"/api/v1/keys/{_SAE}/status", self._handle(self._status))
        app.router.add_route("*", f"/api/v1/keys/{_SAE}/enc_keys", self._handle(self._enc_keys))
        app.router.add_route("*", f"/api/v1/keys/{_SAE}/dec_keys", self._handle(self._dec_keys))
        self.app = app

    async def start(self, host: str, port: int, context: ssl.SSLContext) -> None:
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=context, reuse_address=True)
        await site.start()
        self._runner = runner
        server = site._server  # the real port when `port` was 0
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- plumbing ----------------------------------------------------------------------------
    def _handle(self, fn: Any) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            if request.method not in ("GET", "POST"):
                return _error(400, f"method {request.method} is not supported")
            try:
                caller = _caller(request)
                sae = request.match_info["sae"]
                if not sae:
                    raise _BadRequest("the SAE ID in the path is empty")
                if caller not in self._manager.local_saes:
                    raise _Unauthorized(f"SAE {caller} is not served by KME {self._kme_id}")
                if sae == caller:
                    raise _BadRequest("the SAE ID in the path is the caller's own")
                result: web.StreamResponse = await fn(request, caller, sae)
                return result
            except _BadRequest as exc:
                return _error(exc.status, str(exc))
            except RelayError as exc:
                log_event(logger, logging.WARNING, "delivery_failed", reason=exc.reason)
                return _error(503, f"keys could not be delivered: {exc}")

        return handler

    def _known(self, sae: str, what: str) -> None:
        if sae not in self._all_saes:
            raise _BadRequest(f"{what} {sae} is unknown in this network")

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if request.method == "GET" or not request.can_read_body:
            return {}
        text = await request.text()
        if not text.strip():
            return {}
        try:
            body = json.loads(text)
        except json.JSONDecodeError:
            raise _BadRequest("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _BadRequest("the request body shall be a JSON object")
        return body

    # -- Get status --------------------------------------------------------------------------
    async def _status(self, request: web.Request, caller: str, slave: str) -> web.Response:
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
            }
        )

    # -- Get key -----------------------------------------------------------------------------
    async def _enc_keys(self, request: web.Request, caller: str, slave: str) -> web.Response:
        self._known(slave, "slave SAE")
        limits = self._manager.limits
        if request.method == "GET":
            extra = set(request.query) - {"number", "size"}
            if extra:
                raise _BadRequest(f"GET enc_keys takes only number and size, not {sorted(extra)}")
            body: dict[str, Any] = dict(request.query)
        else:
            body = await self._body(request)
        number = _positive_int(body.get("number", 1), "number")
        size = _positive_int(body.get("size", limits.key_size), "size")
        if size % 8:
            raise _BadRequest("size shall be a multiple of 8")
        if not limits.min_key_size <= size <= limits.max_key_size:
            raise _BadRequest(
                f"size shall be between {limits.min_key_size} and {limits.max_key_size}"
            )
        if number > limits.max_key_per_request:
            raise _BadRequest(f"number shall be at most {limits.max_key_per_request}")
        slaves = [slave, *self._additional_slaves(body, caller, slave)]
        mandatory = _extensions(body, "extension_mandatory")
        optional = _extensions(body, "extension_optional")
        if set(mandatory) - set(EXTENSIONS):
            raise _BadRequest("not all extension_mandatory parameters are supported")
        options = {k: v for k, v in optional.items() if k in EXTENSIONS} | mandatory
        multipath = options.get("qkdnet_multipath")
        use_pool = options.get("qkdnet_pool", True)
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
                raise _BadRequest(
                    f"not all extension_mandatory request options could be met: {exc}"
                ) from None
            # Optional: the KME may ignore it, so the keys go over a single route.
            keys, report = await self._manager.enc_keys(
                caller, slaves, number, size, multipath=False, use_pool=use_pool
            )
        return _key_container(keys, {"qkdnet_relay": report.to_json()})

    def _additional_slaves(self, body: dict[str, Any], master: str, slave: str) -> list[str]:
        if "additional_slave_SAE_IDs" not in body:
            return []
        extra = body["additional_slave_SAE_IDs"]
        if not isinstance(extra, list) or not extra:
            raise _BadRequest("additional_slave_SAE_IDs shall be a non-empty array of SAE IDs")
        limit = self._manager.limits.max_sae_id_count
        if len(extra) > limit:
            raise _BadRequest(f"additional_slave_SAE_IDs holds more than {limit} SAE IDs")
        for sae in extra:
            if not isinstance(sae, str) or not sae.strip():
                raise _BadRequest("additional_slave_SAE_IDs holds a blank or non-string ID")
            if sae in (master, slave):
                raise _BadRequest(f"additional_slave_SAE_IDs names {sae}, the master or slave")
            self._known(sae, "additional slave SAE")
        if len(set(extra)) != len(extra):
            raise _BadRequest("additional_slave_SAE_IDs holds duplicates")
        return list(extra)

    # -- Get key with key IDs ----------------------------------------------------------------
    async def _dec_keys(self, request: web.Request, caller: str, master: str) -> web.Response:
        self._known(master, "master SAE")
        if request.method == "GET":
            extra = set(request.query) - {"key_ID"}
            if extra or len(request.query.getall("key_ID", [])) != 1:
                raise _BadRequest("GET dec_keys takes exactly one key_ID")
            key_ids = [request.query["key_ID"]]
        else:
            body = await self._body(request)
            entries = body.get("key_IDs")
            if not isinstance(entries, list) or not entries:
                raise _BadRequest("key_IDs shall be a non-empty array")
            key_ids = []
            for entry in entries:
                if not isinstance(entry, dict) or not isinstance(entry.get("key_ID"), str):
                    raise _BadRequest("every key_IDs entry shall be an object with a key_ID")
                key_ids.append(entry["key_ID"])
        for key_id in key_ids:
            try:
                uuid.UUID(key_id)
            except ValueError:
                raise _BadRequest("key_ID shall be a UUID") from None
        if len(set(key_ids)) != len(key_ids):
            raise _BadRequest("key_IDs holds duplicates")
        try:
            keys = await self._manager.dec_keys(caller, master, key_ids)
        except KeyNotYours as exc:
            raise _Unauthorized(str(exc)) from None
        except KeyNotFound as exc:
            raise _BadRequest(str(exc)) from None
        return _key_container(keys)
