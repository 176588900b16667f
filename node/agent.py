"""The node agent: one asyncio event loop serving gRPC (mutual TLS) and running the links.

`qkdnet node --config FILE` calls `main(path)`. The agent checks its configuration and
certificates first (a problem stops it with one message and exit status 2), opens one key store
per link, starts the gRPC server (link services, node control, health checking, reflection),
starts a transmitter task for every link it transmits on, writes `ready.json` into its state
directory, and runs until SIGTERM or SIGINT (a second signal exits at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import faulthandler
import json
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from qkdnet.v1 import (
    control_pb2,
    control_pb2_grpc,
    link_pb2,
    link_pb2_grpc,
    relay_pb2,
    relay_pb2_grpc,
)

from . import link_kinds
from .config import InterworkingConfig, KeyApiConfig, NodeConfig, load_node_config
from .core.channel_model import ChannelChange
from .core.toeplitz import configure_fftw
from .edge.channel_shaping import ALL_PEERS, Shaping
from .edge.control_grpc import ControlService
from .edge.etsi004 import KeyStreamServer
from .edge.etsi014 import KeyDeliveryServer
from .edge.etsi020 import (
    ACK_PATH,
    HttpPeerKms,
    InterworkingServer,
    interworking_client_context,
    interworking_server_context,
)
from .edge.grpc_authorization import ForeignPeer, RoleAuthorization
from .edge.grpc_options import MAX_CONCURRENT_RPCS, SERVER_OPTIONS
from .edge.https_server import HttpLimits, raise_file_limit, server_ssl_context
from .edge.hybrid_grpc import GrpcKemPeers, HybridKemService
from .edge.link_grpc import GrpcLinkConnector, LinkService
from .edge.peer_faults import PeerFaultInterceptor, PeerFaults, shaped_peer_channels
from .edge.relay_codec import RELAY_CODEC
from .edge.relay_grpc import RelayService
from .edge.restconf import RestconfServer
from .edge.stream_grpc import GrpcStreamPeers, StreamSyncService
from .edge.telemetry import TelemetryPublisher
from .edge.tls import NodeCredentials, client_tls_context, load_credentials
from .errors import ConfigError, KeyStoreError, QkdnetError
from .file_modes import PRIVATE_UMASK, private_dir, tighten
from .identity import Identity, Role
from .link_names import link_id_for
from .link_secret import read_psk
from .protocol.authentication import LinkAuthenticator
from .protocol.border_link import LinkHopCipher
from .protocol.hybrid_keys import HybridKeys
from .protocol.interworking import BorderKms
from .protocol.key_manager import KeyManager, delivery_settings
from .protocol.key_streams import KeyStreams, StreamLimits
from .protocol.link import LinkEnd, SessionTransmitter
from .protocol.link_state import LinkStateFlooder
from .protocol.rate_book import RateBook
from .protocol.relay import KeyRelay
from .protocol.routing import Router, kind_costs
from .protocol.sdn_view import SdnNode, link_views
from .protocol.virtual_links import VirtualLinks
from .status import DeliveryStatus, InterworkingStatus, NodeStatus, RelayStatus, VirtualLinkStatus
from .store.border_journal import BorderJournal
from .store.delivered_keys import DEFAULT_KEY_TTL_S, DeliveredKeys, DeliveryLevels
from .store.key_store import KeyStore
from .structured_log import configure_logging, log_event

__all__ = ["PARENT_PID_ENV", "NodeAgent", "main"]

# When set to a PID, the node stops (SIGTERM) as soon as that process is gone.
PARENT_PID_ENV = "QKDNET_PARENT_PID"

# A stopping node that has not exited after this long writes every thread's stack to its log
# and exits with status 1: a runtime's SIGKILL (after 10 s) would leave no clue behind.
STOP_DEADLINE_S = 8.0

logger = logging.getLogger("qkdnet.node.agent")


class NodeAgent:
    """A running node: server, links, stores."""

    def __init__(self, config: NodeConfig, credentials: NodeCredentials) -> None:
        self.config = config
        self.credentials = credentials
        self.links: dict[str, LinkEnd] = {}
        self.started = time.monotonic()
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="numpy")
        self._health = health.aio.HealthServicer()
        self.telemetry: TelemetryPublisher | None = None
        self.port = 0
        self.router = Router(config.node_id, kind_costs=kind_costs(config.routing.kinds))
        # Key rate reserved on links by this node: its 004 streams and its virtual links.
        self.rate_book = RateBook(self.router)
        self.virtual_links = VirtualLinks(config.node_id, self.router, self.rate_book)
        self.sdn: SdnNode | None = None
        self.restconf: RestconfServer | None = None
        self.faults = PeerFaults(config.node_id)
        self.peers = shaped_peer_channels(config.nodes, credentials.channel(), self.faults)
        self.delivered: DeliveredKeys | None = None
        self.relay: KeyRelay | None = None
        self.flooder: LinkStateFlooder | None = None
        self.key_api: KeyDeliveryServer | None = None
        self.key_manager: KeyManager | None = None
        self.key_streams: KeyStreams | None = None
        self.stream_api: KeyStreamServer | None = None
        self._stream_sync = StreamSyncService()
        self.hybrid: HybridKeys | None = None
        self._hybrid_kem = HybridKemService()
        self.border: BorderKms | None = None
        self.interworking: InterworkingServer | None = None
        self._peer_kms: HttpPeerKms | None = None
        self._journal: BorderJournal | None = None
        # A border sharing a QKD link with another domain's border trusts that domain's CA for
        # that link only (grpc_authorization.py).
        self._foreign = _foreign_peer(config)
        self.authorization = RoleAuthorization(
            credentials.identity.trust_domain,
            own_ca_pem=credentials.ca_pem if self._foreign else b"",
            foreign=self._foreign,
        )
        self._delivery_levels = DeliveryLevels(0, 0, 0)

    def _across(self, peer: str) -> bool:
        """Whether the link to `peer` is the one shared with another domain's border."""
        return self._foreign is not None and peer == self._foreign.node

    async def start(self) -> None:
        # One idle FFT workspace per length, 16 MiB in all: a node runs a frame at a time per
        # link, and the library default (256 MiB, for benchmarks) would dominate its memory.
        configure_fftw(max_idle_per_length=1, max_cache_bytes=16 << 20)
        cfg = self.config
        for index, link_cfg in enumerate(cfg.links):
            kind = link_kinds.find(link_cfg.kind, f"links[{index}].kind")
            psk = read_psk(link_cfg.psk_file)
            link_id = link_id_for(cfg.node_id, link_cfg.peer)
            store = await KeyStore.open(cfg.state_dir / "links" / f"{link_id}.sqlite")
            transmits = cfg.node_id < link_cfg.peer
            auth = await LinkAuthenticator.load(store, psk, 0 if transmits else 1, kind.codec)
            common: dict[str, Any] = {
                "node_id": cfg.node_id,
                "config": link_cfg,
                "store": store,
                "auth": auth,
                "executor": self._executor,
            }
            if kind.ports is not None:
                common.update(kind.ports(link_cfg))
            link: LinkEnd
            if transmits:
                trusted = (
                    self._foreign.ca_pem if self._foreign and self._across(link_cfg.peer) else None
                )
                connector = GrpcLinkConnector(
                    link_cfg.address or "",
                    link_cfg.peer,
                    self.credentials.channel(trusted),
                    shaping=self.faults.shaping,
                )
                link = kind.transmitter(connector=connector, **common)
            else:
                link = kind.receiver(**common)
            await link.refresh_store_level()  # a restarted node reports its stores at once
            self.links[link_cfg.peer] = link

        ttl = cfg.key_api.key_ttl_s if cfg.key_api is not None else DEFAULT_KEY_TTL_S
        self.delivered = await DeliveredKeys.open(
            cfg.state_dir / "delivered_keys.sqlite", default_ttl_s=ttl
        )
        self.relay = KeyRelay(
            cfg.node_id,
            self.links,
            self.delivered,
            self.peers,
            frozenset(cfg.saes),
            codec=RELAY_CODEC,
            key_ttl_s=ttl,
        )
        # A border serves, inside this domain, the SAEs it reaches through its peer domain.
        served = list(cfg.saes) + (cfg.interworking.peer_saes if cfg.interworking else [])
        # The link to another domain's border is no link of this domain's routing.
        own = {peer: link for peer, link in self.links.items() if not self._across(peer)}
        self.flooder = LinkStateFlooder(cfg.node_id, served, own, self.router, self.peers)

        server = grpc.aio.server(
            options=SERVER_OPTIONS,
            interceptors=[self.authorization, PeerFaultInterceptor(self.faults)],
            maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        )
        services = LinkService(self.links, self.faults.shaping)
        relay_pb2_grpc.add_KeyRelayServicer_to_server(
            RelayService(self.relay, self.flooder.received), server
        )
        relay_pb2_grpc.add_KeyStreamSyncServicer_to_server(self._stream_sync, server)
        relay_pb2_grpc.add_HybridKemServicer_to_server(self._hybrid_kem, server)
        link_pb2_grpc.add_QuantumChannelServicer_to_server(services, server)
        link_pb2_grpc.add_ClassicalChannelServicer_to_server(services, server)
        control_pb2_grpc.add_NodeControlServicer_to_server(ControlService(self), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [
            link_pb2.DESCRIPTOR.services_by_name["QuantumChannel"].full_name,
            link_pb2.DESCRIPTOR.services_by_name["ClassicalChannel"].full_name,
            control_pb2.DESCRIPTOR.services_by_name["NodeControl"].full_name,
            relay_pb2.DESCRIPTOR.services_by_name["KeyRelay"].full_name,
            relay_pb2.DESCRIPTOR.services_by_name["KeyStreamSync"].full_name,
            relay_pb2.DESCRIPTOR.services_by_name["HybridKem"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, server)
        try:
            self.port = server.add_secure_port(
                cfg.listen, self.credentials.server(self._foreign.ca_pem if self._foreign else b"")
            )
        except RuntimeError:
            raise ConfigError(f"listen: cannot listen on {cfg.listen}") from None
        await server.start()
        self._server = server
        for name in names[:6]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        for link in self.links.values():
            if isinstance(link, SessionTransmitter):
                self._tasks.append(asyncio.create_task(link.run(), name=f"link {link.link_id}"))
        self.flooder.start()
        self._tasks.append(
            asyncio.create_task(
                self.relay.expire_forever(_expiry_interval(ttl)), name="relay expiry"
            )
        )
        report_s = cfg.telemetry.interval_s if cfg.telemetry is not None else 5.0
        self._tasks.append(
            asyncio.create_task(
                self._delivery_levels_forever(max(1.0, report_s)), name="delivery levels"
            )
        )
        if cfg.key_api is not None or cfg.interworking is not None:
            self._start_key_manager(cfg.key_api)
        # A border's exporter is in place before any key is made here (pools, the ETSI API):
        # keys for another domain's SAEs must never be kept as this node's own.
        if cfg.interworking is not None:
            await self._start_interworking(cfg.interworking)
        if self.key_manager is not None:
            self._start_pools()
        if cfg.key_api is not None:
            await self._start_key_api(cfg.key_api)
            if cfg.key_api.stream_listen is not None:
                await self._start_stream_api(cfg.key_api)
        if cfg.restconf_listen is not None:
            await self._start_restconf(cfg.restconf_listen)
        if cfg.telemetry is not None:
            tls = (
                client_tls_context(cfg.tls.ca, cfg.tls.cert, cfg.tls.key)
                if cfg.telemetry.tls
                else None
            )
            self.telemetry = TelemetryPublisher(
                cfg.telemetry, cfg.node_id, cfg.advertise or self.address, self.status, tls
            )
            self.telemetry.start()
        self._write_ready()
        log_event(
            logger,
            logging.INFO,
            "node_started",
            listen=cfg.listen,
            port=self.port,
            links=[link.link_id for link in self.links.values()],
        )

    def _directory(self) -> dict[str, str]:
        """SAE ID -> the node serving it: the topology's, this node's own SAEs, and those of
        other domains this node reaches as their border."""
        cfg = self.config
        directory = dict(cfg.sae_directory)
        served = list(cfg.saes) + (cfg.interworking.peer_saes if cfg.interworking else [])
        directory.update({sae: cfg.node_id for sae in served})
        return directory

    def _start_key_manager(self, api: KeyApiConfig | None) -> None:
        """The KME's key management: for the ETSI 014 API and, on a border, for the keys that
        come from another domain (a border without SAEs keeps no pools)."""
        assert self.relay is not None
        assert self.delivered is not None
        limits, policy = delivery_settings(api)
        manager = KeyManager(
            self.config.node_id,
            self.config.saes,
            self._directory(),
            self.relay,
            self.router,
            self.delivered,
            limits,
            policy,
            on_event=self._relay_event,
        )
        self.key_manager = manager
        self.hybrid = HybridKeys(self.config.node_id, self.delivered, GrpcKemPeers(self.peers))
        self._hybrid_kem.hybrid = self.hybrid
        self._tasks.append(asyncio.create_task(self.hybrid.rotate_forever(), name="kem rotation"))

    def _start_pools(self) -> None:
        manager = self.key_manager
        assert manager is not None
        self._tasks.append(asyncio.create_task(manager.fill_pools_forever(), name="key pools"))
        self._tasks.append(
            asyncio.create_task(
                manager.expire_pools_forever(_expiry_interval(manager.policy.key_ttl_s)),
                name="pool expiry",
            )
        )

    async def _start_key_api(self, api: KeyApiConfig) -> None:
        assert self.key_manager is not None
        self.key_api = KeyDeliveryServer(
            self.key_manager,
            self.config.node_id,
            self._directory(),
            self.credentials.identity.trust_domain,
            HttpLimits(
                header_timeout_s=api.header_timeout_s,
                body_timeout_s=api.body_timeout_s,
                max_connections=api.max_connections,
            ),
            hybrid=self.hybrid,
        )
        await self._serve_tls(self.key_api, api.listen, "key_api.listen")

    async def _start_stream_api(self, api: KeyApiConfig) -> None:
        """ETSI GS QKD 004: the node's key streams, their TLS server, and the service through
        which the KMEs of a stream's two ends speak."""
        assert self.key_manager is not None
        assert self.delivered is not None
        assert api.stream_listen is not None
        streams = KeyStreams(
            self.config.node_id,
            frozenset(self.config.saes),
            self.key_manager,
            self.router,
            self.delivered,
            GrpcStreamPeers(self.peers),
            StreamLimits(local_max_bps=api.stream_local_max_bps, max_streams=api.max_streams),
            on_event=self._relay_event,
            book=self.rate_book,
        )
        self.key_streams = streams
        self._stream_sync.streams = streams
        self._tasks.append(asyncio.create_task(streams.expire_forever(), name="stream expiry"))
        self.stream_api = KeyStreamServer(streams, self.credentials.identity.trust_domain)
        await self._serve_tls(self.stream_api, api.stream_listen, "key_api.stream_listen")

    async def _start_restconf(self, listen: str) -> None:
        """ETSI GS QKD 015: the node as its SDN controller sees it, over RESTCONF."""
        from importlib.metadata import version

        self.sdn = SdnNode(
            self.config.node_id,
            self.credentials.identity.trust_domain,
            version("qkdnet"),
            list(self.config.nodes),
            lambda: link_views(self.links),
            self.router,
            self.rate_book,
            self.virtual_links,
            self.key_streams,
            location=self.config.location,
        )
        self.restconf = RestconfServer(self.sdn, self.credentials.identity.trust_domain)
        await self._serve_tls(self.restconf, listen, "restconf_listen")

    async def _serve_tls(self, server: Any, listen: str, field: str) -> None:
        """Start one of the node's TLS servers (`start(host, port, context)`) on `listen` with
        the node's certificate; ConfigError naming `field` when the address cannot be had."""
        host, _, port = listen.rpartition(":")
        tls = self.config.tls
        try:
            await server.start(host, int(port), server_ssl_context(tls.ca, tls.cert, tls.key))
        except OSError as exc:
            raise ConfigError(f"{field}: cannot listen on {listen} ({exc.strerror})") from None

    async def _start_interworking(self, border: InterworkingConfig) -> None:
        """ETSI GS QKD 020 towards the peer domain's border: the client, the hand-over logic
        (the relay's exporter) and the server, which trusts only the peer domain's CA."""
        assert self.relay is not None
        assert self.key_manager is not None
        tls = self.config.tls
        try:
            client = interworking_client_context(border.peer_ca, tls.cert, tls.key)
            server_context = interworking_server_context(border.peer_ca, tls.cert, tls.key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"interworking.peer_ca: {border.peer_ca}: {exc}") from None
        self._peer_kms = HttpPeerKms(border.peer_url, client)
        self._journal = await BorderJournal.open(self.config.state_dir / "border_journal.sqlite")
        kms = BorderKms(
            self.config.node_id,
            self._peer_kms,
            self.key_manager,
            frozenset(border.peer_saes),
            callback_url=border.url + ACK_PATH,
            cipher=LinkHopCipher(self.relay, border.peer_node) if border.shared_link else None,
            ack_timeout_s=border.ack_timeout_s,
            on_event=self._relay_event,
            journal=self._journal,
        )
        self.border = kms
        self.relay.exporter = kms
        peer = Identity(border.peer_trust_domain, Role.NODE, border.peer_node)
        self.interworking = InterworkingServer(kms, peer, border.peer_url, border.url)
        host, _, port = border.listen.rpartition(":")
        try:
            await self.interworking.start(host, int(port), server_context)
        except OSError as exc:
            raise ConfigError(
                f"interworking.listen: cannot listen on {border.listen} ({exc.strerror})"
            ) from None

        # What was crossing the border when this node last stopped is voided on both sides.
        async def recover() -> None:
            await kms.recover()

        self._tasks.append(asyncio.create_task(recover(), name="border recovery"))

    def _relay_event(self, kind: str, fields: dict[str, Any]) -> None:
        if self.telemetry is not None:
            self.telemetry.relay_event(kind, fields)

    @property
    def key_api_url(self) -> str:
        """https://host:port of the ETSI GS QKD 014 API ('' when there is none)."""
        if self.key_api is None or self.config.key_api is None:
            return ""
        return f"https://{self.config.key_api.listen.rpartition(':')[0]}:{self.key_api.port}"

    @property
    def address(self) -> str:
        """host:port the gRPC server listens on (the real port when the config said 0)."""
        return f"{self.config.listen.rpartition(':')[0]}:{self.port}"

    def _write_ready(self) -> None:
        info = {
            "node_id": self.config.node_id,
            "pid": os.getpid(),
            "address": self.address,
            "key_api_url": self.key_api_url,
        }
        path = self.config.state_dir / "ready.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(path)

    async def refresh_delivery_levels(self) -> None:
        """Count the keys the KME holds now (for the next `status`)."""
        if self.delivered is not None:
            with contextlib.suppress(KeyStoreError):
                self._delivery_levels = await self.delivered.run(lambda db: db.levels())

    async def _delivery_levels_forever(self, interval_s: float) -> None:
        """Keep the key counts of `status` (and so of telemetry) recent."""
        while True:
            await self.refresh_delivery_levels()
            await asyncio.sleep(interval_s)

    # -- live faults (the controller's, through NodeControl; see peer_faults.py) -------------

    def set_peer_faults(self, peer: str, *, cut: bool | None, shaping: Shaping | None) -> None:
        """Cut or restore the link with neighbour `peer`; replace the shaping of what is sent
        to `peer` ("": to every peer). ValueError (before anything changes) for a peer that is
        no neighbour (cut) or no known node (shaping)."""
        node_id = self.config.node_id
        if cut is not None and peer not in self.links:
            raise ValueError(f"{node_id} has no link with {peer!r} to cut or restore")
        if (
            shaping is not None
            and peer
            and peer not in self.links
            and peer not in self.config.nodes
        ):
            raise ValueError(f"{node_id} knows no node {peer!r}")
        if cut is not None:
            if cut:
                self.faults.cut_peers.add(peer)
            else:
                self.faults.cut_peers.discard(peer)
            self.links[peer].set_cut(cut)
        if shaping is not None:
            self.faults.shaping.set(peer or ALL_PEERS, shaping)
            log_event(
                logger,
                logging.INFO if shaping.is_none else logging.WARNING,
                "shaping_set",
                peer=peer or ALL_PEERS,
                delay_ms=shaping.delay_ms,
                jitter_ms=shaping.jitter_ms,
                loss_percent=shaping.loss_percent,
                rate_kbit=shaping.rate_kbit,
            )

    def clear_faults(self) -> None:
        """Restore every cut link, remove all shaping and every channel change."""
        for peer in sorted(self.faults.cut_peers):
            self.set_peer_faults(peer, cut=False, shaping=None)
        for scope in self.faults.shaping.settings():
            self.set_peer_faults("" if scope == ALL_PEERS else scope, cut=None, shaping=Shaping())
        for link in self.links.values():
            if not link.change.is_none:
                link.change_channel(ChannelChange())

    def status(self) -> NodeStatus:
        relay = None
        delivery = None
        if self.relay is not None:
            c = self.relay.counters
            relay = RelayStatus(
                frames_sent=c.frames_sent,
                frames_received=c.frames_received,
                frames_refused=dict(c.frames_refused),
                wasted_bits=c.wasted_bits,
                transactions_committed=c.transactions_committed,
                transactions_failed=c.transactions_failed,
            )
            levels = self._delivery_levels
            manager = self.key_manager.counters if self.key_manager is not None else None
            api = self.key_api
            delivery = DeliveryStatus(
                keys_waiting=levels.waiting,
                keys_pending=levels.pending,
                pool_keys=levels.pool,
                keys_expired=c.keys_expired,
                pending_expired=c.pending_expired,
                keys_voided=c.keys_voided,
                pool_keys_expired=manager.pool_keys_expired if manager else 0,
                keys_abandoned=manager.keys_abandoned if manager else 0,
                key_api_answers=dict(api.answers) if api else {},
                key_api_connections_evicted=api.server.evicted if api else 0,
                key_api_connections_refused=api.server.refused if api else 0,
            )
        return NodeStatus(
            node_id=self.config.node_id,
            uptime_seconds=time.monotonic() - self.started,
            links=tuple(link.stats.snapshot() for link in self.links.values()),
            relay=relay,
            key_api_url=self.key_api_url,
            routing_nodes=tuple(self.router.nodes()),
            delivery=delivery,
            calls_refused=dict(self.authorization.refused),
            interworking=self._interworking_status(),
            virtual_links=tuple(
                VirtualLinkStatus(
                    qkdl_id=str(v.qkdl_id),
                    remote=v.remote,
                    path=v.path,
                    bandwidth_bps=v.bandwidth_bps,
                    usable=all(self.router.link(a, b)[0] for a, b in v.hops),
                )
                for v in self.virtual_links
            ),
            key_streams=len(self.key_streams.snapshot()) if self.key_streams else 0,
        )

    def _interworking_status(self) -> InterworkingStatus | None:
        if self.border is None or self.config.interworking is None:
            return None
        c = self.border.counters
        return InterworkingStatus(
            peer_node=self.config.interworking.peer_node,
            keys_exported=c.keys_exported,
            keys_imported=c.keys_imported,
            transfers_failed=c.transfers_failed,
            keys_voided=c.keys_voided,
            acks_undelivered=c.acks_undelivered,
        )

    async def stop(self, grace: float = 2.0) -> None:
        """Stop everything, each step bounded: a step that overruns is logged and left behind
        (the process is about to end), so a stop never hangs on one part."""
        await self._bounded("health", self._health.enter_graceful_shutdown())
        if self.key_api is not None:
            await self._bounded("key_api", self.key_api.stop())
        if self.stream_api is not None:
            await self._bounded("stream_api", self.stream_api.stop())
        if self.restconf is not None:
            await self._bounded("restconf", self.restconf.stop())
        if self.key_streams is not None:
            await self._bounded("key_streams", self.key_streams.close_all())
        if self.interworking is not None:
            await self._bounded("interworking", self.interworking.stop())
        if self.border is not None:
            await self._bounded("border", self.border.close())
        if self._journal is not None:
            await self._bounded("border journal", self._journal.close())
        if self._peer_kms is not None:
            await self._bounded("peer_kms", self._peer_kms.close())
        if self.flooder is not None:
            await self._bounded("flooder", self.flooder.close())
        if self.telemetry is not None:
            await self._bounded("telemetry", self.telemetry.close(), seconds=3.0)
        await self._cancel_tasks()
        if self._server is not None:
            await self._bounded("grpc_server", self._server.stop(grace), seconds=grace + 1.0)
        await self._bounded("peer_channels", self.peers.close())
        for link in self.links.values():
            await self._bounded(f"link {link.link_id}", link.close())
        if self.delivered is not None:
            await self._bounded("delivered_keys", self.delivered.close())
        self._executor.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(FileNotFoundError):
            (self.config.state_dir / "ready.json").unlink()
        log_event(logger, logging.INFO, "node_stopped")

    async def _bounded(self, step: str, work: Awaitable[Any], seconds: float = 2.0) -> None:
        try:
            async with asyncio.timeout(seconds):
                await work
        except TimeoutError:
            log_event(logger, logging.WARNING, "stop_step_slow", step=step, seconds=seconds)
        except Exception:  # a bug in one part must not keep the node from stopping
            logger.exception("stop step %s failed", step)

    async def _cancel_tasks(self, seconds: float = 3.0) -> None:
        """Cancel the node's tasks, again every 0.2 s: a task can swallow one cancellation (a
        gRPC call turns it into an RPC error that a retry loop catches)."""
        pending = {task for task in self._tasks if not task.done()}
        deadline = time.monotonic() + seconds
        while pending and time.monotonic() < deadline:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.2)
        if pending:
            names = sorted(task.get_name() for task in pending)
            log_event(logger, logging.WARNING, "stop_step_slow", step="tasks", tasks=names)
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                logger.error("task %s ended with %r", task.get_name(), task.exception())


async def _serve(config: NodeConfig, credentials: NodeCredentials) -> None:
    agent = NodeAgent(config, credentials)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            os._exit(1)  # second signal: leave now
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await agent.start()
    await stop.wait()
    log_event(logger, logging.INFO, "node_stopping")
    # Armed until the process ends: it also covers asyncio.run joining executor threads.
    faulthandler.dump_traceback_later(STOP_DEADLINE_S, exit=True)
    await agent.stop()


def _expiry_interval(ttl_s: float) -> float:
    """How often keys past their time to live are looked for: a tenth of it, 1 to 30 s."""
    return min(30.0, max(1.0, ttl_s / 10))


def _private_state(state_dir: Path) -> None:
    """Make the state directory the node's only, and say so when it was not."""
    private_dir(state_dir)
    loose = tighten(state_dir)
    if loose:
        log_event(
            logger,
            logging.WARNING,
            "modes_tightened",
            directory=str(state_dir),
            paths=len(loose),
            first=[str(path.relative_to(state_dir)) for path in loose[:5]],
        )


def _tie_to_parent() -> None:
    """Honour PARENT_PID_ENV: ask Linux for SIGTERM when the parent dies (PR_SET_PDEATHSIG)."""
    expected = os.environ.get(PARENT_PID_ENV)
    if not expected:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(expected):  # the parent died before the request took effect
        sys.exit(1)


def main(config_path: Path) -> int:
    """Run a node until SIGTERM/SIGINT. Exit status: 0 stopped, 2 bad configuration, 1 failure."""
    _tie_to_parent()
    # Whatever the node or a library creates (stores, their journals, logs) is its own only.
    os.umask(PRIVATE_UMASK)
    try:
        config = load_node_config(config_path)
        credentials = load_credentials(config.tls, config.node_id)
        for index, link in enumerate(config.links):
            link_kinds.find(link.kind, f"{config_path}: links[{index}].kind")
            read_psk(link.psk_file)
        private_dir(config.state_dir)
    except ConfigError as exc:
        print(f"qkdnet node: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"qkdnet node: error: {config_path}: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.node_id, config.log_level)
    _private_state(config.state_dir)
    raise_file_limit()
    try:
        asyncio.run(_serve(config, credentials))
    except ConfigError as exc:
        print(f"qkdnet node: error: {exc}", file=sys.stderr)
        return 2
    except QkdnetError as exc:
        print(f"qkdnet node: failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _foreign_peer(config: NodeConfig) -> ForeignPeer | None:
    """The peer border of another domain this node shares a QKD link with, if any."""
    border = config.interworking
    if border is None or not border.shared_link:
        return None
    try:
        ca_pem = border.peer_ca.read_bytes()
    except OSError as exc:
        raise ConfigError(f"interworking.peer_ca: {border.peer_ca}: {exc.strerror}") from None
    return ForeignPeer(border.peer_trust_domain, border.peer_node, ca_pem)
