"""The node's RESTCONF server (RFC 8040, JSON encoding of RFC 7951) for ETSI GS QKD 015.

HTTPS with mutual TLS; only the deployment's controller (the `controller` role) may call: the
SDN controller of the network. The data resource is the `etsi-qkd-sdn-node:qkd_node` tree the
node's `SdnNode` builds (`protocol/sdn_view.py`):

- GET of `/restconf/data`, `etsi-qkd-sdn-node:qkd_node` and any container, list or entry
  below it (`qkd_links/qkd_link=<uuid>`, `qkd_applications/qkd_app=<uuid>/app_qos`,
  `qkd_interfaces/qkd_interface=<id>`, ...): the data, named by its module-qualified member;
- POST `.../qkd_node/qkd_links` with `{"etsi-qkd-sdn-node:qkd_link": [...]}` (or TeraFlowSDN's
  `{"qkd_links": {"qkd_link": [...]}}`): create VIRT links; 201 with `Location`;
- DELETE `.../qkd_links/qkd_link=<uuid>`: delete a VIRT link; 204;
- PATCH `.../qkd_applications/qkd_app=<uuid>` or `.../app_qos`: change a stream's QoS; 204;
- PATCH `.../qkd_node`: its `qkdn_location_id`; 204.

Trailing slashes are accepted (TeraFlowSDN's driver sends them). Errors are RFC 8040 error
bodies (`ietf-restconf:errors`) with the error-tag that fits; no request gets a 500. `GET
/.well-known/host-meta` names the RESTCONF root; `GET /restconf` and
`/restconf/yang-library-version` answer as RFC 8040 says.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..identity import Identity, Role, peer_certificate_identity
from ..protocol.sdn_view import MODULE, SdnNode, SdnRefused
from ..structured_log import log_event
from .https_server import HttpLimits, HttpsServer

__all__ = ["MEDIA_TYPE", "RestconfServer"]

logger = logging.getLogger("qkdnet.node.edge.restconf")

MEDIA_TYPE = "application/yang-data+json"
_ROOT = f"{MODULE}:qkd_node"
_ENTRY = re.compile(r"^([a-z_]+)=(.+)$")
# list name -> its key leaf
_KEYS = {"qkd_link": "qkdl_id", "qkd_app": "app_id", "qkd_interface": "qkdi_id"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _errors(status: int, tag: str, message: str, path: str = "") -> web.Response:
    error: dict[str, Any] = {
        "error-type": "protocol" if status in (400, 401, 403, 404, 405, 415) else "application",
        "error-tag": tag,
        "error-message": message,
    }
    if path:
        error["error-path"] = path
    body = {"ietf-restconf:errors": {"error": [error]}}
    return web.Response(status=status, text=json.dumps(body), content_type=MEDIA_TYPE)


def _data(member: str, value: Any) -> web.Response:
    return web.Response(text=json.dumps({member: value}), content_type=MEDIA_TYPE)


class RestconfServer:
    """RESTCONF in front of a node's `SdnNode`."""

    def __init__(
        self,
        node: SdnNode,
        trust_domain: str,
        limits: HttpLimits | None = None,
        identify: Callable[[web.Request], Identity | None] | None = None,
    ) -> None:
        """`identify` names the caller; by default its TLS client certificate's identity."""
        self._node = node
        self._trust_domain = trust_domain
        self._identify = identify or (
            lambda request: peer_certificate_identity(
                request.transport.get_extra_info("peercert") if request.transport else None
            )
        )
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/.well-known/host-meta", self._host_meta)
        app.router.add_get("/restconf", self._restconf_root)
        app.router.add_get("/restconf/yang-library-version", self._library_version)
        app.router.add_route("*", "/restconf/data", self._dispatch)
        app.router.add_route("*", "/restconf/data/{path:.*}", self._dispatch)
        self.app = app
        self._server = HttpsServer(
            app,
            limits or HttpLimits(),
            lambda status, message: _errors(status, "invalid-value", message),
        )

    @property
    def port(self) -> int:
        return self._server.port

    async def start(self, host: str, port: int, context: Any) -> None:
        await self._server.start(host, port, context)

    async def stop(self) -> None:
        await self._server.stop()

    # -- plumbing ----------------------------------------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        identity = self._identify(request)
        if identity is None:
            return _errors(401, "access-denied", "a client certificate of the deployment is needed")
        if identity.trust_domain != self._trust_domain or identity.role is not Role.CONTROLLER:
            return _errors(403, "access-denied", f"{identity} is not this network's controller")
        try:
            return await handler(request)
        except SdnRefused as exc:
            return _errors(exc.status, exc.tag, exc.message, request.path)
        except web.HTTPException as exc:
            if exc.status == 405:
                return _errors(405, "operation-not-supported", f"{request.method} {request.path}")
            return _errors(exc.status, "invalid-value", f"{request.method} {request.path}")
        except ConnectionError:
            raise
        except Exception:
            logger.exception("RESTCONF request failed")
            return _errors(503, "operation-failed", "the node could not answer; try again")

    async def _host_meta(self, request: web.Request) -> web.Response:
        xrd = (
            '<XRD xmlns="http://docs.oasis-open.org/ns/xri/xrd-1.0">'
            '<Link rel="restconf" href="/restconf"/></XRD>'
        )
        return web.Response(text=xrd, content_type="application/xrd+xml")

    async def _restconf_root(self, request: web.Request) -> web.Response:
        return _data(
            "ietf-restconf:restconf",
            {"data": {}, "operations": {}, "yang-library-version": "2016-06-21"},
        )

    async def _library_version(self, request: web.Request) -> web.Response:
        return _data("ietf-restconf:yang-library-version", "2016-06-21")

    async def _body(self, request: web.Request) -> Any:
        raw = await self._server.read_body(request)
        try:
            return json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise SdnRefused(400, "malformed-message", "the body is not JSON") from None

    # -- the data resource -------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        # aiohttp has decoded the path once already: list keys are not decoded again.
        segments = [s for s in request.match_info.get("path", "").split("/") if s]
        if segments and segments[0] not in (_ROOT, f"{MODULE}:"):
            raise SdnRefused(404, "invalid-value", f"no resource {segments[0]!r}")
        rest = segments[1:]
        if request.method in ("GET", "HEAD"):  # HEAD: the same headers, no body
            return self._get(segments, rest)
        if request.method == "POST":
            return await self._post(request, rest)
        if request.method == "DELETE":
            return self._delete(rest)
        if request.method == "PATCH":
            return await self._patch(request, rest)
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD", "POST", "PATCH", "DELETE"])

    def _get(self, segments: list[str], rest: list[str]) -> web.Response:
        tree = self._node.tree()
        if not segments:
            return web.Response(text=json.dumps(tree), content_type=MEDIA_TYPE)
        value: Any = tree[_ROOT]
        name = "qkd_node"
        for segment in rest:
            value, name = self._step(value, segment)
        return _data(f"{MODULE}:{name}", value)

    @staticmethod
    def _step(value: Any, segment: str) -> tuple[Any, str]:
        entry = _ENTRY.match(segment)
        if entry is not None:
            name, key = entry.group(1), entry.group(2)
            items = value.get(name) if isinstance(value, dict) else None
            if name not in _KEYS or not isinstance(items, list):
                raise SdnRefused(404, "invalid-value", f"no list {name!r} here")
            for item in items:
                if str(item.get(_KEYS[name])) == key:
                    return [item], name
            raise SdnRefused(404, "invalid-value", f"no {name}={key}")
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, dict) or segment not in value:
            raise SdnRefused(404, "invalid-value", f"no {segment!r} here")
        return value[segment], segment

    async def _post(self, request: web.Request, rest: list[str]) -> web.Response:
        if rest != ["qkd_links"]:
            raise SdnRefused(
                405, "operation-not-supported", "POST creates qkd_link entries under qkd_links"
            )
        body = await self._body(request)
        items = None
        if isinstance(body, dict):
            for member in (f"{MODULE}:qkd_link", "qkd_link"):
                if member in body:
                    items = body[member]
            wrapped = body.get("qkd_links") or body.get(f"{MODULE}:qkd_links")
            if isinstance(wrapped, dict):  # TeraFlowSDN's driver wraps the list
                items = wrapped.get("qkd_link")
        if not isinstance(items, list) or not items:
            raise SdnRefused(
                400, "malformed-message", f'the body is {{"{MODULE}:qkd_link": [...]}}'
            )
        made = self._node.create_links(items)
        log_event(logger, logging.INFO, "virtual_links_created", qkdl_ids=made)
        response = web.Response(status=201)
        response.headers["Location"] = f"/restconf/data/{_ROOT}/qkd_links/qkd_link={made[0]}"
        return response

    def _delete(self, rest: list[str]) -> web.Response:
        entry = _ENTRY.match(rest[-1]) if len(rest) == 2 and rest[0] == "qkd_links" else None
        if entry is None or entry.group(1) != "qkd_link":
            raise SdnRefused(
                405, "operation-not-supported", "DELETE takes qkd_links/qkd_link=<qkdl_id>"
            )
        self._node.delete_link(entry.group(2))
        log_event(logger, logging.INFO, "virtual_link_deleted", qkdl_id=entry.group(2))
        return web.Response(status=204)

    async def _patch(self, request: web.Request, rest: list[str]) -> web.Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            raise SdnRefused(400, "malformed-message", "the body is a JSON object")
        if not rest:
            node = body.get(_ROOT, body.get("qkd_node", {}))
            if not isinstance(node, dict) or set(node) - {"qkdn_location_id", "qkdn_id"}:
                raise SdnRefused(
                    400, "invalid-value", "of qkd_node itself, only qkdn_location_id is written"
                )
            if "qkdn_location_id" in node:
                self._node.set_location(node["qkdn_location_id"])
            return web.Response(status=204)
        app = _ENTRY.match(rest[1]) if len(rest) >= 2 and rest[0] == "qkd_applications" else None
        if app is None or app.group(1) != "qkd_app" or rest[2:] not in ([], ["app_qos"]):
            raise SdnRefused(
                405,
                "operation-not-supported",
                "PATCH takes qkd_node, or qkd_applications/qkd_app=<app_id>[/app_qos]",
            )
        app_id = app.group(2)
        if rest[2:] == ["app_qos"]:
            qos = body.get(f"{MODULE}:app_qos", body.get("app_qos"))
        else:
            entries = body.get(f"{MODULE}:qkd_app", body.get("qkd_app"))
            entry = entries[0] if isinstance(entries, list) and len(entries) == 1 else None
            if not isinstance(entry, dict) or set(entry) - {"app_id", "app_qos"}:
                raise SdnRefused(400, "invalid-value", "of a qkd_app, only app_qos is written")
            qos = entry.get("app_qos", {})
        await self._node.update_app(app_id, qos, f"qkd_app={app_id}/app_qos")
        log_event(logger, logging.INFO, "app_qos_changed", app_id=app_id)
        return web.Response(status=204)
