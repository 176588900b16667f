"""A node as an SDN controller sees it: the ETSI GS QKD 015 `qkd_node` tree (RFC 7951 JSON) built
from the live node, and the writes a controller makes.

- `qkdn_id`: a UUID derived from the node's trust domain and ID (stable, the same everywhere);
- `qkd_interfaces`: one per link end, `qkdi_id` 1, 2, ... in the order of the node's peers;
- `qkd_links` PHYS: every link, `qkdl_id` derived from its link ID (the same at both ends);
  status from the live session (ACTIVE generating, PASSIVE not generating but holding key,
  PENDING no key yet, OFF cut); `skr` the secret rate it measures, `expected_consumption` what
  this node reserved on it, `eskr` what is left; QBER and the modelled attenuation for BB84;
- `qkd_links` VIRT: the virtual links a controller created here (`virtual_links.py`);
- `qkd_applications`: the ETSI 004 streams with an end here (`app_id` = the KSID).

Writes: creating and deleting virtual links, changing a stream's QoS (`app_qos`: max and min
bandwidth, jitter, TTL; at the stream's origin), and `qkdn_location_id`. Every error is a
`SdnRefused` with the RESTCONF error tag and a message that says what and where.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from .key_streams import KeyStreams
from .link import LinkEnd
from .rate_book import RateBook
from .routing import Router
from .virtual_links import VirtualLinkRefused, VirtualLinks

__all__ = [
    "MODULE",
    "TYPES",
    "LinkView015",
    "SdnNode",
    "SdnRefused",
    "link_uuid",
    "link_views",
    "node_uuid",
]

MODULE = "etsi-qkd-sdn-node"
TYPES = "etsi-qkd-node-types"
_NAMESPACE = uuid.UUID("6c1f3f40-7b7e-4f53-9f4e-0f15e7a30015")  # qkdnet's, for 015 IDs


def node_uuid(trust_domain: str, node_id: str) -> uuid.UUID:
    """A node's `qkdn_id`."""
    return uuid.uuid5(_NAMESPACE, f"{trust_domain}/node/{node_id}")


def link_uuid(trust_domain: str, link_id: str) -> uuid.UUID:
    """A physical link's `qkdl_id` (the same at both of its ends)."""
    return uuid.uuid5(_NAMESPACE, f"{trust_domain}/link/{link_id}")


def _identity(name: str) -> str:
    return f"{TYPES}:{name}"


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _u32(value: float) -> int:
    return max(0, min(int(value), 2**32 - 1))


class SdnRefused(Exception):
    """A controller's request refused: `tag` is the RFC 8040 error-tag, `status` the HTTP
    status."""

    def __init__(self, status: int, tag: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.tag = tag
        self.message = message


@dataclass(frozen=True)
class LinkView015:
    """What the view needs of one link end."""

    link_id: str
    peer: str
    role: str  # "transmitter" | "receiver"
    kind: str
    state: str
    store_bits: int
    secret_rate_bps: float
    qber: float | None  # None before the first frame, and for kinds without photons
    attenuation_db: float | None  # BB84: the modelled channel loss


class LinkSource(Protocol):
    def __call__(self) -> Sequence[LinkView015]: ...


def link_views(links: Mapping[str, LinkEnd]) -> list[LinkView015]:
    """What the 015 view needs of a node's link ends, now."""
    views = []
    for link in links.values():
        status = link.stats.snapshot()
        params = link.stats.params
        bb84 = link.config.kind == "bb84"
        views.append(
            LinkView015(
                link_id=link.link_id,
                peer=link.peer,
                role=link.role,
                kind=link.config.kind,
                state=status.state,
                store_bits=status.store_bits,
                secret_rate_bps=status.secret_rate_bps,
                qber=status.last_qber if bb84 and status.frames_ok else None,
                attenuation_db=(
                    params.length_km * params.fiber_loss_db_per_km + params.extra_loss_db
                    if bb84
                    else None
                ),
            )
        )
    return views


_TECHNOLOGY = {"bb84": "DV-QKD"}  # other kinds have no 015 technology: qkdi_type is left out


class SdnNode:
    """The 015 view of one node."""

    def __init__(
        self,
        node_id: str,
        trust_domain: str,
        version: str,
        nodes: Sequence[str],
        links: LinkSource,
        router: Router,
        book: RateBook,
        virtual: VirtualLinks,
        streams: KeyStreams | None = None,
        location: str = "",
        now: Callable[[], float] | None = None,
    ) -> None:
        self.node_id = node_id
        self.trust_domain = trust_domain
        self.version = version
        self.location = location
        self._uuid_of = {node: node_uuid(trust_domain, node) for node in {*nodes, node_id}}
        self._node_of = {str(u): node for node, u in self._uuid_of.items()}
        self._links = links
        self._router = router
        self._book = book
        self._virtual = virtual
        self._streams = streams
        self._now = now or time.time

    @property
    def qkdn_id(self) -> str:
        return str(self._uuid_of[self.node_id])

    # -- reading -----------------------------------------------------------------------------
    def tree(self) -> dict[str, Any]:
        """`{"etsi-qkd-sdn-node:qkd_node": {...}}`."""
        links = sorted(self._links(), key=lambda link: link.peer)
        interface_of = {link.peer: index + 1 for index, link in enumerate(links)}
        apps = self._applications(interface_of)
        node: dict[str, Any] = {
            "qkdn_id": self.qkdn_id,
            "qkdn_status": _identity("OPERATING"),
            "qkdn_version": self.version,
            "qkdn_location_id": self.location,
            "qkdn_capabilities": {
                "link_stats_support": True,
                "application_stats_support": False,
                "key_relay_mode_enable": True,
            },
            "qkd_applications": {"qkd_app": apps},
            "qkd_interfaces": {
                "qkd_interface": [self._interface(link, interface_of) for link in links]
            },
            "qkd_links": {
                "qkd_link": [self._physical(link, interface_of, apps) for link in links]
                + [self._virtual_link(v.qkdl_id) for v in self._virtual]
            },
        }
        return {f"{MODULE}:qkd_node": node}

    def _hop_link(self, a: str, b: str) -> str:
        x, y = sorted((a, b))
        return str(link_uuid(self.trust_domain, f"{x}--{y}"))

    def _interface(self, link: LinkView015, interface_of: Mapping[str, int]) -> dict[str, Any]:
        index = interface_of[link.peer]
        out: dict[str, Any] = {
            "qkdi_id": index,
            "qkdi_model": f"qkdnet emulated {link.kind} link end",
            "qkdi_att_point": {"device": self.node_id, "port": index},
            "qkdi_capabilities": {"role_support": _identity(link.role.upper())},
            "qkdi_status": _identity("DISABLED" if link.state == "cut" else "ENABLED"),
        }
        technology = _TECHNOLOGY.get(link.kind)
        if technology is not None:
            out["qkdi_type"] = _identity(technology)
        return out

    def _status(self, link: LinkView015) -> str:
        if link.state == "running":
            return "ACTIVE"
        if link.state == "cut":
            return "OFF"
        return "PASSIVE" if link.store_bits > 0 else "PENDING"

    def _physical(
        self,
        link: LinkView015,
        interface_of: Mapping[str, int],
        apps: Sequence[Mapping[str, Any]],
    ) -> dict[str, Any]:
        qkdl_id = str(link_uuid(self.trust_domain, link.link_id))
        reserved = self._book.reserved((self.node_id, link.peer))
        rate_out = self._router.rate_out(self.node_id, link.peer)
        out: dict[str, Any] = {
            "qkdl_id": qkdl_id,
            "qkdl_status": _identity(self._status(link)),
            "qkdl_enable": link.state != "cut",
            "qkdl_local": {"qkdn_id": self.qkdn_id, "qkdi_id": interface_of[link.peer]},
            "qkdl_remote": {"qkdn_id": str(self._uuid_of.get(link.peer) or "")},
            "qkdl_type": _identity("PHYS"),
            "qkdl_applications": [
                app["app_id"] for app in apps if qkdl_id in app.get("backing_qkdl_id", [])
            ],
            "qkdl_performance": {
                "expected_consumption": _u32(reserved),
                "skr": _u32(link.secret_rate_bps),
                "eskr": _u32(rate_out - reserved),
            },
            "phys_qkd_role": _identity(link.role.upper()),
        }
        if not out["qkdl_remote"]["qkdn_id"]:
            del out["qkdl_remote"]["qkdn_id"]
        if link.attenuation_db is not None:
            out["phys_channel_att"] = f"{link.attenuation_db:.3f}"
        if link.qber is not None:
            out["qkdl_performance"]["phys_perf"] = [
                {"perf_type": _identity("QBER"), "value": f"{link.qber:.3f}"}
            ]
        return out

    def _virtual_link(self, qkdl_id: uuid.UUID) -> dict[str, Any]:
        virtual = self._virtual.get(qkdl_id)
        assert virtual is not None
        usable = all(self._router.link(a, b)[0] for a, b in virtual.hops)
        skr = min((self._router.rate_out(a, b) for a, b in virtual.hops), default=0)
        return {
            "qkdl_id": str(qkdl_id),
            "qkdl_status": _identity("ACTIVE" if usable else "OFF"),
            "qkdl_enable": True,
            "qkdl_local": {"qkdn_id": self.qkdn_id},
            "qkdl_remote": {"qkdn_id": str(self._uuid_of[virtual.remote])},
            "qkdl_type": _identity("VIRT"),
            "virt_next_hop": [str(self._uuid_of[virtual.path[1]])],
            "virt_bandwidth": _u32(virtual.bandwidth_bps),
            "qkdl_performance": {
                "expected_consumption": _u32(virtual.bandwidth_bps),
                "skr": _u32(skr),
                "eskr": _u32(skr - virtual.bandwidth_bps),
            },
        }

    def _applications(self, interface_of: Mapping[str, int]) -> list[dict[str, Any]]:
        if self._streams is None:
            return []
        now = self._now()
        apps = []
        for stream in self._streams.snapshot():
            route: list[str] = stream["route"]
            apps.append(
                {
                    "app_id": stream["ksid"],
                    "app_status": _identity("ON" if stream["connected"] else "DISCONNECTED"),
                    "app_type": _identity("CLIENT"),
                    "server_app_id": f"qkd://{stream['source']}",
                    "client_app_id": [f"qkd://{stream['destination']}"],
                    "app_priority": _u32(stream["priority"]),
                    "creation_time": _rfc3339(stream["created"]),
                    "expiration_time": _rfc3339(now + stream["expires_in_s"]),
                    "app_qos": {
                        "max_bandwidth": _u32(stream["max_bps"]),
                        "min_bandwidth": _u32(stream["min_bps"]),
                        "jitter": _u32(stream["jitter"]),
                        "ttl": _u32(stream["ttl"]),
                    },
                    "backing_qkdl_id": [self._hop_link(a, b) for a, b in itertools.pairwise(route)],
                    "local_qkdn_id": self.qkdn_id,
                    "remote_qkdn_id": str(
                        self._uuid_of.get(stream["peer_node"], self._uuid_of[self.node_id])
                    ),
                }
            )
        return apps

    # -- writing -----------------------------------------------------------------------------
    def create_links(self, items: Sequence[Any]) -> list[str]:
        """Create the virtual links `items` (015 `qkd_link` objects); their IDs. All or none:
        the first refusal undoes those made before it."""
        made: list[uuid.UUID] = []
        try:
            for index, item in enumerate(items):
                made.append(self._create_link(item, f"qkd_link[{index}]"))
        except BaseException:
            for qkdl_id in made:
                self._virtual.delete(qkdl_id)
            raise
        return [str(qkdl_id) for qkdl_id in made]

    def _create_link(self, item: Any, where: str) -> uuid.UUID:
        if not isinstance(item, dict):
            raise SdnRefused(400, "invalid-value", f"{where}: a qkd_link is an object")
        kind = str(item.get("qkdl_type", "")).rpartition(":")[2]
        if kind != "VIRT":
            raise SdnRefused(
                400,
                "invalid-value",
                f"{where}.qkdl_type: only VIRT links can be created (physical links come from "
                "the topology)",
            )
        qkdl_id = self._uuid(item.get("qkdl_id"), f"{where}.qkdl_id")
        local = item.get("qkdl_local") or {}
        remote = item.get("qkdl_remote")
        for name, value in (("qkdl_local", local), ("qkdl_remote", remote)):
            if not isinstance(value, dict):
                raise SdnRefused(400, "invalid-value", f"{where}.{name}: an object with qkdn_id")
        assert isinstance(local, dict)
        assert isinstance(remote, dict)
        if local.get("qkdn_id") not in (None, self.qkdn_id):
            raise SdnRefused(
                400, "invalid-value", f"{where}.qkdl_local.qkdn_id: this node is {self.qkdn_id}"
            )
        remote_node = self._node(remote.get("qkdn_id"), f"{where}.qkdl_remote.qkdn_id")
        hops = item.get("virt_next_hop") or []
        if not isinstance(hops, list) or len(hops) > 1:
            raise SdnRefused(
                400,
                "invalid-value",
                f"{where}.virt_next_hop: one next hop at most (no multicast virtual links)",
            )
        next_hop = self._node(hops[0], f"{where}.virt_next_hop[0]") if hops else None
        bandwidth = item.get("virt_bandwidth", 0)
        if (
            isinstance(bandwidth, bool)
            or not isinstance(bandwidth, int)
            or not (0 <= bandwidth < 2**32)
        ):
            raise SdnRefused(400, "invalid-value", f"{where}.virt_bandwidth: bit/s, a uint32")
        try:
            self._virtual.create(qkdl_id, remote_node, next_hop=next_hop, bandwidth_bps=bandwidth)
        except VirtualLinkRefused as exc:
            tag = "data-exists" if "exists" in str(exc) else "resource-denied"
            raise SdnRefused(409, tag, f"{where}: {exc}") from None
        return qkdl_id

    def delete_link(self, qkdl_id: str) -> None:
        ref = self._uuid(qkdl_id, "qkd_link")
        if self._virtual.delete(ref):
            return
        physical = {str(link_uuid(self.trust_domain, link.link_id)) for link in self._links()}
        if str(ref) in physical:
            raise SdnRefused(
                400, "operation-not-supported", f"qkd_link={ref} is physical: cut it instead"
            )
        raise SdnRefused(404, "invalid-value", f"no qkd_link={ref} here")

    async def update_app(self, app_id: str, qos: Any, where: str) -> None:
        """Change an application's `app_qos` (max_bandwidth, min_bandwidth, jitter, ttl)."""
        if self._streams is None:
            raise SdnRefused(404, "invalid-value", f"no qkd_app={app_id} here")
        ksid = self._uuid(app_id, "qkd_app")
        if not isinstance(qos, dict):
            raise SdnRefused(400, "invalid-value", f"{where}: app_qos is an object")
        fields = {
            "max_bandwidth": "max_bps",
            "min_bandwidth": "min_bps",
            "jitter": "jitter",
            "ttl": "ttl",
        }
        unknown = set(qos) - set(fields)
        if unknown:
            raise SdnRefused(
                400, "invalid-value", f"{where}: {', '.join(sorted(unknown))} cannot be changed"
            )
        changes: dict[str, int] = {}
        for name, value in qos.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
                raise SdnRefused(400, "invalid-value", f"{where}.{name}: a uint32")
            if name in fields:
                changes[fields[name]] = value
        if changes.get("max_bps") == 0:
            raise SdnRefused(400, "invalid-value", f"{where}.max_bandwidth: at least 1 bit/s")
        try:
            await self._streams.update_qos(ksid, **changes)
        except LookupError:
            raise SdnRefused(404, "invalid-value", f"no qkd_app={ksid} here") from None
        except ValueError as exc:
            raise SdnRefused(409, "resource-denied", f"{where}: {exc}") from None

    def set_location(self, value: Any) -> None:
        if not isinstance(value, str) or len(value) > 255:
            raise SdnRefused(400, "invalid-value", "qkdn_location_id: a string of 255 at most")
        self.location = value

    def _uuid(self, value: Any, where: str) -> uuid.UUID:
        try:
            return uuid.UUID(str(value))
        except ValueError:
            raise SdnRefused(400, "invalid-value", f"{where}: {value!r} is not a UUID") from None

    def _node(self, value: Any, where: str) -> str:
        node = self._node_of.get(str(self._uuid(value, where)))
        if node is None:
            raise SdnRefused(400, "invalid-value", f"{where}: no node {value} in this network")
        return node
