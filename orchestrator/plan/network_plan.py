"""From a topology to what a runtime starts: addresses, state layout, PKI and node configurations.

A deployment lives in one state directory (default `~/.local/state/qkdnet/<name>`):

```
pki/            CA, controller, broker, node and SAE certificates, link secrets
broker/         the broker's access list (and, in containers, its Mosquitto configuration)
nodes/<id>.yaml the node's configuration
nodes/<id>/     the node's state: key stores, ready.json
logs/<id>.log   the node's output (JSON lines); logs/broker.log
runtime.json    what the runtime started, and which runtime (see process_runtime.py)
topology.yaml   the topology as deployed
plan.json       this plan's record: what the verbs need to find the deployment's parts
```

A verb aimed at a deployed network reads its plan from plan.json (`NetworkPlan.load`) rather
than validating the topology again: the record is plain JSON, so a verb such as `inspect` or
`key get` starts without the topology's pydantic models (the topology as deployed is loaded on
first use of `NetworkPlan.topology`, by the few verbs that need it).

The state directory and every directory in it are 0700, every file 0600 (`file_modes`): keys,
private keys and link secrets are never readable by another local user.

On the process runtime every deployment gets its own loopback /16, `127.X.0.0/16` with `X` the
block the registry of deployments gave it (registry.py): the broker listens on `127.X.0.1:1883`
and node number `k` (in file order) on `127.X.(1 + k // 250).(1 + k % 250):50051`, so addresses
say which deployment a socket belongs to and stay the same across restarts.

On the docker runtime the same scheme runs in the private range: the deployment's bridge network
is `10.X.0.0/16` (gateway `10.X.255.254`), the broker container is `10.X.0.1` and node `k` is
`10.X.(1 + k // 250).(1 + k % 250)`, each container with that static IP. A node's
configuration then holds container paths: `nodes/<id>/` (node.yaml beside copies of the node's
certificate, key, CA and link secrets, referred to by relative paths) is mounted read-only on
/etc/qkdnet, and its state_dir is /var/lib/qkdnet (a named volume), see docker_runtime.py.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qkdnet.node.errors import ConfigError
from qkdnet.node.file_modes import private_dir, write_private
from qkdnet.node.identity import trust_domain_for
from qkdnet.node.link_names import link_id_for

from .container_layout import BROKER_PORT, NODE_CONFIG_DIR, NODE_STATE_DIR, NODE_UID
from .credentials import CertificatePaths
from .domain_role import BorderPlan, DomainRole
from .external_kmes import resolve_end
from .mosquitto import mosquitto_conf
from .registry import Registry, block_of_subnet, network_prefix, state_home
from .telemetry_access import TelemetryAccess

if TYPE_CHECKING:  # pydantic models and the PKI: loaded by what needs them (deploy, graph)
    from qkdnet.node.config import ExternalKmeConfig, LinkConfig, NodeConfig

    from .pki import TopologyPki
    from .topology import Topology

__all__ = [
    "GRPC_PORT",
    "KEY_API_PORT",
    "KEY_API_PREFIX",
    "MQTT_PORT",
    "RESTCONF_PORT",
    "RUNTIMES",
    "STREAM_API_PORT",
    "ConfigLayout",
    "NetworkPlan",
    "NodePlan",
    "PlannedLink",
    "default_state_dir",
    "node_host",
    "recorded_runtime",
]

RUNTIMES = ("process", "docker")

GRPC_PORT = 50051
KEY_API_PORT = 8443
STREAM_API_PORT = 25575  # ETSI GS QKD 004, the port QUBIP's implementation uses
RESTCONF_PORT = 8040  # ETSI GS QKD 015 over RESTCONF (RFC 8040)
KEY_API_PREFIX = "/api/v1/keys"  # ETSI GS QKD 014's path prefix of the key delivery API
MQTT_PORT = BROKER_PORT


def default_state_dir(name: str) -> Path:
    """`$XDG_STATE_HOME/qkdnet/<name>` (`~/.local/state/qkdnet/<name>` by default)."""
    return state_home() / name


def recorded_runtime(state_dir: Path) -> str | None:
    """The runtime a deployment in `state_dir` was started with (runtime.json), if any."""
    try:
        data = json.loads((state_dir / "runtime.json").read_text())
    except (OSError, ValueError):
        return None
    runtime = data.get("runtime") if isinstance(data, dict) else None
    return runtime if runtime in RUNTIMES else None


@dataclass(frozen=True)
class ConfigLayout:
    """Where nodes find each other and their files, as their configurations say it."""

    addresses: dict[str, str]  # node ID -> host:port its peers dial
    listen: dict[str, str]  # node ID -> host:port of its gRPC server
    key_api_listen: dict[str, str]  # node ID -> host:port of its ETSI 014 server
    broker: str  # host:port of the MQTT broker
    broker_tls: bool  # MQTT over TLS with the nodes' certificates (the deployment's own broker)
    tls: Callable[[str], dict[str, str]]  # node ID -> {"ca", "cert", "key"} paths
    psk_file: Callable[[str], str]  # link ID -> path of its secret
    state_dir: Callable[[str], str]  # node ID -> where its key stores go
    peer_ca: Callable[[str], str] = str  # border node ID -> path of its peer domain's CA
    # (node ID, link peer, "ca"/"cert"/"key", the file) -> where the node sees that file of its
    # end of an external-KME link
    external_file: Callable[[str, str, str, Path], str] = lambda _n, _p, _w, path: str(path)


@dataclass(frozen=True)
class NodePlan:
    """One node: where it listens and where its files are."""

    node_id: str
    address: str
    saes: tuple[str, ...]
    config_path: Path
    state_dir: Path
    log_path: Path
    interworking_port: int | None = None  # a border: the port of its ETSI 020 API

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0]

    @property
    def key_api_address(self) -> str | None:
        """host:port of the node's ETSI GS QKD 014 server (None when it serves no SAE)."""
        return f"{self.host}:{KEY_API_PORT}" if self.saes else None

    @property
    def key_api_url(self) -> str | None:
        address = self.key_api_address
        return f"https://{address}" if address else None

    @property
    def restconf_address(self) -> str:
        """host:port of the node's RESTCONF server (ETSI GS QKD 015): every node has one."""
        return f"{self.host}:{RESTCONF_PORT}"

    @property
    def restconf_url(self) -> str:
        return f"https://{self.restconf_address}/restconf/data/etsi-qkd-sdn-node:qkd_node"

    @property
    def stream_api_address(self) -> str | None:
        """host:port of the node's ETSI GS QKD 004 server (None when it serves no SAE)."""
        return f"{self.host}:{STREAM_API_PORT}" if self.saes else None

    @property
    def interworking_address(self) -> str | None:
        """host:port of a border's ETSI GS QKD 020 server (None on other nodes)."""
        return f"{self.host}:{self.interworking_port}" if self.interworking_port else None

    def listen_addresses(self) -> list[str]:
        """Every address the node listens on."""
        return [self.address] + [
            a
            for a in (
                self.key_api_address,
                self.stream_api_address,
                self.restconf_address,
                self.interworking_address,
            )
            if a is not None
        ]


@dataclass(frozen=True)
class PlannedLink:
    """A link of the plan: its two ends (in the topology's order) and its length."""

    endpoints: tuple[str, str]
    length_km: float

    @property
    def link_id(self) -> str:
        return link_id_for(*self.endpoints)


_RECORD = "plan.json"
_RECORD_VERSION = 1


def node_host(runtime: str, block: int, k: int) -> str:
    """The IP address of node number `k` (in topology order) of a deployment in `block`."""
    return f"{network_prefix(runtime)}.{block}.{1 + k // 250}.{1 + k % 250}"


def _node_plans(
    saes_of: dict[str, tuple[str, ...]],
    root: Path,
    block: int,
    runtime: str,
    domain: DomainRole | None = None,
) -> dict[str, NodePlan]:
    """Every node's address and files: node number k (in topology order) gets host k + 1 of
    the block (see the module's docstring)."""
    ports = {border.node: border.port for border in domain.borders} if domain else {}
    nodes = {}
    for k, (node_id, saes) in enumerate(saes_of.items()):
        host = node_host(runtime, block, k)
        nodes[node_id] = NodePlan(
            node_id=node_id,
            address=f"{host}:{GRPC_PORT}",
            saes=saes,
            config_path=(
                root / "nodes" / node_id / "node.yaml"
                if runtime == "docker"
                else root / "nodes" / f"{node_id}.yaml"
            ),
            state_dir=root / "nodes" / node_id,
            log_path=root / "logs" / f"{node_id}.log",
            interworking_port=ports.get(node_id),
        )
    return nodes


@dataclass(frozen=True)
class NetworkPlan:
    """Everything a runtime needs to start (and later find) a deployment."""

    name: str
    state_dir: Path
    subnet: int
    nodes: dict[str, NodePlan]
    links: list[PlannedLink]
    external_broker: str | None
    runtime: str = "process"
    source: Path | None = None  # the topology file, when it came from one
    telemetry_interval_s: float = 1.0
    log_max_bytes: int = 10_000_000
    log_files: int = 3
    domain: DomainRole | None = None  # one domain of a topology with domains (federation.py)
    # The validated topology; None in a plan read from its record until first asked for.
    _topology: Topology | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        topology: Topology,
        state_dir: Path | None = None,
        broker_url: str | None = None,
        runtime: str | None = None,
        *,
        subnet: str | None = None,
        block: int | None = None,
        source: Path | None = None,
        avoid: frozenset[int] = frozenset(),
    ) -> NetworkPlan:
        """Lay out `topology`; `broker_url` (mqtt://host:port) overrides the topology's.

        The runtime is `runtime` when given, else the one the deployment in the state directory
        was started with (runtime.json), else the topology's; addresses depend on it. The
        address block is `block` (X of the /16) when given, else `subnet` (`--subnet`), else
        the topology's `subnet`, else the one the registry holds for this deployment or would
        give it (registry.py) apart from the blocks in `avoid`. A topology with domains is
        several deployments: `federation.plan_domains` lays them out.
        """
        if topology.domains:
            raise ConfigError(
                f"{topology.name} has domains ({', '.join(topology.domains)}): each deploys as "
                "a network of its own (federation.plan_domains)"
            )
        root = (state_dir or default_state_dir(topology.name)).absolute()
        runtime = runtime or recorded_runtime(root) or topology.runtime
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
        if block is None and subnet is not None:
            block = block_of_subnet(subnet, runtime, "--subnet")
        if block is None and topology.subnet is not None:
            block = block_of_subnet(topology.subnet, runtime, "subnet")
        if block is None:
            block = Registry().proposed_block(topology.name, root, avoid)
        saes_of = {node_id: tuple(node.saes) for node_id, node in topology.nodes.items()}
        url = broker_url or topology.telemetry.broker
        return cls(
            name=topology.name,
            state_dir=root,
            subnet=block,
            nodes=_node_plans(saes_of, root, block, runtime),
            links=[
                PlannedLink(link.endpoints, link.channel.length_km)
                for link in topology.resolved_links()
            ],
            external_broker=url.removeprefix("mqtt://") if url else None,
            runtime=runtime,
            source=source.absolute() if source is not None else None,
            telemetry_interval_s=topology.telemetry.interval_s,
            log_max_bytes=topology.logs.max_bytes,
            log_files=topology.logs.files,
            _topology=topology,
        )

    @classmethod
    def load(cls, state_dir: Path, broker_url: str | None = None) -> NetworkPlan | None:
        """The plan a deployment in `state_dir` was deployed with (`save`), None when it has
        no readable record; `broker_url` overrides the recorded broker."""
        try:
            record = json.loads((state_dir / _RECORD).read_text())
            if record.get("version") != _RECORD_VERSION:
                return None
            root = state_dir.absolute()
            saes_of = {node["id"]: tuple(node["saes"]) for node in record["nodes"]}
            url = broker_url.removeprefix("mqtt://") if broker_url else None
            return cls(
                name=record["name"],
                state_dir=root,
                subnet=int(record["subnet"]),
                nodes=_node_plans(saes_of, root, int(record["subnet"]), record["runtime"]),
                links=[PlannedLink((a, b), float(km)) for a, b, km in record["links"]],
                external_broker=url or record["external_broker"],
                runtime=record["runtime"],
                source=Path(record["source"]) if record["source"] else None,
                telemetry_interval_s=float(record["telemetry_interval_s"]),
                log_max_bytes=int(record["logs"]["max_bytes"]),
                log_files=int(record["logs"]["files"]),
                domain=DomainRole.from_json(record["domain"]) if record.get("domain") else None,
            ).with_domain(None)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def save(self) -> None:
        """Write this plan's record (plan.json) and the topology as deployed (topology.yaml)
        into the state directory, for `load`."""
        copy = self.topology_copy
        if self.source is not None and self.source != copy:
            write_private(copy, self.source.read_bytes())
        elif self.source is None and self._topology is not None:
            import yaml

            dumped = self._topology.model_dump(mode="json", exclude_defaults=True)
            write_private(copy, yaml.safe_dump(dumped, sort_keys=False))
        record = {
            "version": _RECORD_VERSION,
            "name": self.name,
            "subnet": self.subnet,
            "runtime": self.runtime,
            "source": str(self.source) if self.source else None,
            "external_broker": self.external_broker,
            "telemetry_interval_s": self.telemetry_interval_s,
            "logs": {"max_bytes": self.log_max_bytes, "files": self.log_files},
            "nodes": [{"id": n.node_id, "saes": list(n.saes)} for n in self.nodes.values()],
            "links": [[*link.endpoints, link.length_km] for link in self.links],
            "domain": self.domain.as_json() if self.domain else None,
        }
        write_private(self.state_dir / _RECORD, json.dumps(record, indent=1) + "\n")

    def with_domain(self, role: DomainRole | None) -> NetworkPlan:
        """This plan as the deployment of one domain (`role`; None: keep the plan's role),
        its borders listening for ETSI GS QKD 020."""
        role = role or self.domain
        saes_of = {node.node_id: node.saes for node in self.nodes.values()}
        nodes = _node_plans(saes_of, self.state_dir, self.subnet, self.runtime, role)
        return replace(self, domain=role, nodes=nodes)

    @property
    def topology_copy(self) -> Path:
        """Where the state directory keeps the topology as deployed."""
        return self.state_dir / "topology.yaml"

    @property
    def topology(self) -> Topology:
        """The validated topology (read from the deployed copy on first use when the plan came
        from its record)."""
        if self._topology is None:
            from .topology import load_topology

            if not self.topology_copy.exists():
                raise ConfigError(f"{self.name}: no topology in {self.state_dir}")
            object.__setattr__(
                self, "_topology", load_topology(self.topology_copy, check_workable=False)
            )
        assert self._topology is not None
        return self._topology

    @property
    def broker_address(self) -> str:
        """host:port of the MQTT broker the nodes publish to."""
        return self.external_broker or f"{self.broker_host}:{MQTT_PORT}"

    @property
    def broker_host(self) -> str:
        """The embedded broker's IP address."""
        return f"{network_prefix(self.runtime)}.{self.subnet}.0.1"

    @property
    def network_cidr(self) -> str:
        """The /16 every address of the deployment is in."""
        return f"{network_prefix(self.runtime)}.{self.subnet}.0.0/16"

    @property
    def in_containers(self) -> bool:
        """Whether nodes see their files at container paths (the docker runtime)."""
        return self.runtime == "docker"

    @property
    def topic_prefix(self) -> str:
        return f"qkdnet/{self.name}"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def broker_log(self) -> Path:
        return self.state_dir / "logs" / "broker.log"

    @property
    def controller_credentials(self) -> CertificatePaths:
        """The orchestrator's client certificate for NodeControl (once the PKI exists)."""
        where = self.pki_dir / "orchestrator"
        return CertificatePaths(where / "cert.pem", where / "key.pem", self.pki_dir / "ca.pem")

    @property
    def broker_dir(self) -> Path:
        """The broker's files: its access list (and Mosquitto's configuration)."""
        return self.state_dir / "broker"

    def node_of_sae(self, sae: str) -> NodePlan:
        """The node serving `sae` (ConfigError naming the SAE and the known ones otherwise)."""
        for node in self.nodes.values():
            if sae in node.saes:
                return node
        known = [s for n in self.nodes.values() for s in n.saes]
        raise ConfigError(
            f"no SAE {sae!r} in topology {self.name!r} (SAEs: {', '.join(known) or 'none'})"
        )

    def sae_credentials(self, sae: str) -> CertificatePaths:
        """Where the PKI keeps the client certificate of `sae` (see `provision_pki`)."""
        where = self.pki_dir / "saes" / sae
        return CertificatePaths(where / "cert.pem", where / "key.pem", self.pki_dir / "ca.pem")

    @property
    def trust_domain(self) -> str:
        return trust_domain_for(self.name)

    def telemetry_access(self) -> TelemetryAccess:
        """Who may publish and read which telemetry topics."""
        shared = [(b.node, b.peer_node) for b in self.shared_links()]
        return TelemetryAccess.for_network(
            self.topic_prefix, self.nodes, [link.endpoints for link in self.links] + shared
        )

    def shared_links(self) -> list[BorderPlan]:
        """The borders of this domain that share a QKD link with their peer in another domain
        (the link is not in `links`: the domain's own)."""
        return [b for b in self.domain.borders if b.link is not None] if self.domain else []

    def telemetry_tls(self) -> ssl.SSLContext | None:
        """The controller's TLS context for the deployment's broker (None: an external one)."""
        if self.external_broker is not None:
            return None
        from qkdnet.node.edge.tls import client_tls_context  # grpc, pydantic: only here

        paths = self.controller_credentials
        return client_tls_context(paths.ca, paths.cert, paths.key)

    def link_ids(self) -> list[str]:
        """Every link with a secret in this deployment's PKI: its own, and those it shares
        with other domains."""
        own = [link_id_for(*link.endpoints) for link in self.links]
        return own + [border.link_id for border in self.shared_links()]

    def provision_pki(self) -> TopologyPki:
        """Create (or reuse) the deployment's CA, certificates and link secrets."""
        from .pki import provision_pki

        return provision_pki(
            self.pki_dir,
            {node.node_id: list(node.saes) for node in self.nodes.values()},
            self.link_ids(),
            deployment=self.name,
            hosts={node.node_id: node.host for node in self.nodes.values()},
            broker_hosts=[self.broker_host],
        )

    def node_configs(self, layout: ConfigLayout) -> dict[str, NodeConfig]:
        """Every node's configuration (the links it holds, TLS, telemetry, key delivery), with
        addresses and file paths as `layout` says the node sees them."""
        from qkdnet.node.config import (
            InterworkingConfig,
            KeyApiConfig,
            LinkConfig,
            NodeConfig,
            RoutingConfig,
            TelemetryConfig,
            TlsConfig,
        )

        links_of: dict[str, list[LinkConfig]] = {node: [] for node in self.nodes}
        for link in self.topology.resolved_links():
            a, b = link.endpoints
            link_id = link_id_for(a, b)
            for end, peer in ((a, b), (b, a)):
                external = None
                if link.external_kme is not None:
                    external = _external_config(
                        link.external_kme.model_dump(), end, peer, layout, f"links[{link.index}]"
                    )
                links_of[end].append(
                    LinkConfig(
                        peer=peer,
                        kind=link.kind,
                        address=layout.addresses[peer] if end < peer else None,
                        psk_file=Path(layout.psk_file(link_id)),
                        channel=link.channel,
                        processing=link.processing,
                        external_kme=external,
                        **({"pqc_bridge": link.pqc_bridge} if link.pqc_bridge else {}),
                    )
                )
        directory = {sae: node.node_id for node in self.nodes.values() for sae in node.saes}
        if self.domain is not None:  # SAEs of other domains: through this domain's borders
            directory.update(self.domain.far_directory)
        delivery = self.topology.key_delivery
        configs: dict[str, NodeConfig] = {}
        for node in self.nodes.values():
            node_id = node.node_id
            key_api = None
            if node.saes:
                api_host = layout.key_api_listen[node_id].rpartition(":")[0]
                key_api = KeyApiConfig(
                    listen=layout.key_api_listen[node_id],
                    stream_listen=f"{api_host}:{STREAM_API_PORT}",
                    key_size=delivery.key_size,
                    pool_keys=delivery.pool_keys,
                    multipath=delivery.multipath,
                    key_ttl_s=delivery.key_ttl_s,
                )
            advertise = layout.addresses[node_id]
            border = self.domain.border(node_id) if self.domain else None
            interworking = None
            if border is not None and border.link is not None:
                links_of[node_id].append(self._shared_link_config(border, layout))
            if border is not None:
                interworking = InterworkingConfig(
                    listen=f"{'0.0.0.0' if self.in_containers else node.host}:{border.port}",
                    url=border.url,
                    peer_node=border.peer_node,
                    peer_trust_domain=trust_domain_for(border.peer_deployment),
                    peer_url=border.peer_url,
                    peer_ca=Path(layout.peer_ca(node_id)),
                    peer_saes=list(border.far_saes),
                    shared_link=border.link is not None,
                )
            configs[node_id] = NodeConfig(
                node_id=node_id,
                listen=layout.listen[node_id],
                advertise=advertise if advertise != layout.listen[node_id] else None,
                state_dir=Path(layout.state_dir(node_id)),
                tls=TlsConfig(**{k: Path(v) for k, v in layout.tls(node_id).items()}),
                links=links_of[node_id],
                telemetry=TelemetryConfig(
                    broker=layout.broker,
                    topic_prefix=self.topic_prefix,
                    interval_s=self.topology.telemetry.interval_s,
                    tls=layout.broker_tls,
                ),
                nodes=dict(layout.addresses),
                sae_directory=directory,
                saes=list(node.saes),
                key_api=key_api,
                interworking=interworking,
                restconf_listen=f"{layout.listen[node_id].rpartition(':')[0]}:{RESTCONF_PORT}",
                location=f"{self.domain.domain}/{node_id}" if self.domain else node_id,
                routing=RoutingConfig(kinds=dict(self.topology.routing.kinds)),
            )
        return configs

    def _shared_link_config(self, border: BorderPlan, layout: ConfigLayout) -> LinkConfig:
        """The configuration of the QKD link `border` shares with its peer in another domain
        (its gRPC server trusts the peer's CA for that link only: see the node's agent)."""
        from qkdnet.node.config import LinkConfig

        assert border.link is not None
        transmits = border.node < border.peer_node
        if transmits and border.peer_address is None:
            raise ConfigError(f"{self.name}: where does {border.peer_node}'s gRPC listen?")
        external = None
        spec = border.link["external_kme"]
        if spec is not None:
            where = f"the link {border.link_id} across domains"
            external = _external_config(spec, border.node, border.peer_node, layout, where)
        return LinkConfig.model_validate(
            {
                "peer": border.peer_node,
                "kind": border.link["kind"],
                "address": border.peer_address if transmits else None,
                "psk_file": layout.psk_file(border.link_id),
                "channel": border.link["channel"],
                "processing": border.link["processing"],
                "external_kme": external,
                **(
                    {"pqc_bridge": border.link["pqc_bridge"]}
                    if border.link.get("pqc_bridge")
                    else {}
                ),
            }
        )

    def layout(self, pki: TopologyPki) -> ConfigLayout:
        """How this plan's runtime shows nodes their files and each other."""
        addresses = {node.node_id: node.address for node in self.nodes.values()}
        key_api = {n.node_id: n.key_api_address or "" for n in self.nodes.values()}
        if self.in_containers:
            return ConfigLayout(
                addresses=addresses,
                listen=addresses,
                key_api_listen=key_api,
                broker=self.broker_address,
                broker_tls=self.external_broker is None,
                tls=lambda _: {"ca": "ca.pem", "cert": "cert.pem", "key": "key.pem"},
                psk_file=lambda link_id: f"links/{pki.link_secrets[link_id].name}",
                state_dir=lambda _: NODE_STATE_DIR,
                peer_ca=lambda _: "peer-ca.pem",
                external_file=lambda _, peer, name, __: f"external/{peer}-{name}.pem",
            )

        def tls(node_id: str) -> dict[str, str]:
            paths = pki.nodes[node_id]
            return {"ca": str(paths.ca), "cert": str(paths.cert), "key": str(paths.key)}

        return ConfigLayout(
            addresses=addresses,
            listen=addresses,
            key_api_listen=key_api,
            broker=self.broker_address,
            broker_tls=self.external_broker is None,
            tls=tls,
            psk_file=lambda link_id: str(pki.link_secrets[link_id]),
            state_dir=lambda node_id: str(self.nodes[node_id].state_dir),
            peer_ca=lambda node_id: str(self.peer_ca_of(node_id)),
        )

    def peer_ca_of(self, node_id: str) -> Path:
        """The trust bundle of border `node_id`: its peer domain's CA (ConfigError when the
        deployment has not been given it)."""
        border = self.domain.border(node_id) if self.domain else None
        assert border is not None, node_id
        path = border.peer_ca(self.pki_dir)
        if not path.exists():
            raise ConfigError(
                f"{self.name}: border {node_id} needs the CA certificate of domain "
                f"{border.peer_domain} (deployment {border.peer_deployment}), its peer's: give "
                f"it with --peer-ca {border.peer_domain}=FILE (`qkdnet ca` writes a domain's)"
            )
        return path

    def write_broker_files(self, pki: TopologyPki) -> Path:
        """Write the broker's files into `broker_dir` (returned): the access list, and in
        containers Mosquitto's configuration with copies of the broker's credentials."""
        directory = private_dir(self.broker_dir)
        access = self.telemetry_access()
        if not self.in_containers:
            write_private(directory / "access.json", access.to_json())
            return directory
        for path in directory.iterdir():  # made afresh (a previous deployment's may be read-only)
            os.chmod(path, 0o600)
            path.unlink()
        write_private(directory / "mosquitto.conf", mosquitto_conf(NODE_CONFIG_DIR, MQTT_PORT))
        write_private(directory / "acl", access.mosquitto_acl())
        for source, name in (
            (pki.ca, "ca.pem"),
            (pki.broker.cert, "cert.pem"),
            (pki.broker.key, "key.pem"),
        ):
            write_private(directory / name, source.read_bytes())
        _hand_over(directory)
        return directory

    def write_node_configs(self, pki: TopologyPki) -> None:
        """Write every node's configuration file.

        In containers, the node's directory also receives copies of its credentials and link
        secrets, and the configuration names them by paths relative to itself."""
        from qkdnet.node.config import node_config_yaml

        configs = self.node_configs(self.layout(pki))
        for node in self.nodes.values():
            config = configs[node.node_id]
            if self.in_containers:
                self._copy_credentials(node, pki, config.links)
            write_private(node.config_path, node_config_yaml(config))
            if self.in_containers:
                _hand_over(node.config_path.parent)

    def _copy_credentials(self, node: NodePlan, pki: TopologyPki, links: list[LinkConfig]) -> None:
        """Copy what `node` needs into its (container-mounted) directory, afresh."""
        where = node.config_path.parent
        if where.exists():
            for path in [where, *where.rglob("*")]:
                if path.is_dir():
                    os.chmod(path, 0o700)
            shutil.rmtree(where)
        # nodes/ is the owner's only: the copies below are read through the container's mount.
        private_dir(where / "links")
        tls = pki.nodes[node.node_id]
        for source, name in ((tls.ca, "ca.pem"), (tls.cert, "cert.pem"), (tls.key, "key.pem")):
            write_private(where / name, source.read_bytes())
        if self.domain is not None and self.domain.border(node.node_id) is not None:
            write_private(where / "peer-ca.pem", self.peer_ca_of(node.node_id).read_bytes())
        for resolved in self.topology.resolved_links():  # the node's external KMEs' files
            if resolved.external_kme is None or node.node_id not in resolved.endpoints:
                continue
            peer = next(end for end in resolved.endpoints if end != node.node_id)
            mine = resolve_end(resolved.external_kme.ends[node.node_id], f"links[{resolved.index}]")
            private_dir(where / "external")
            for name in ("ca", "cert", "key"):
                path = where / "external" / f"{peer}-{name}.pem"
                write_private(path, getattr(mine, name).read_bytes())
        secrets = {path.name: path for path in pki.link_secrets.values()}
        for link in links:
            name = link.psk_file.name
            write_private(where / "links" / name, secrets[name].read_bytes())


def _external_config(
    spec: dict[str, Any], end: str, peer: str, layout: ConfigLayout, where: str
) -> ExternalKmeConfig:
    """The external_kme section of `end`'s configuration of its link to `peer` (`spec`: the
    topology's `external_kme`, as JSON)."""
    from qkdnet.node.config import ExternalKmeConfig

    mine = resolve_end(spec["ends"][end], f"{where}, end {end}")
    return ExternalKmeConfig(
        url=mine.url,
        sae_id=spec["ends"][end]["sae_id"],
        peer_sae_id=spec["ends"][peer]["sae_id"],
        keys_per_pull=spec["keys_per_pull"],
        key_bits=spec["key_bits"],
        pull_interval_s=spec["pull_interval_s"],
        **{
            name: Path(layout.external_file(end, peer, name, getattr(mine, name)))
            for name in ("ca", "cert", "key")
        },
    )


def _hand_over(directory: Path) -> None:
    """Make a node's directory readable by the node's user in its container (uid 10001).

    As root the files are given to that uid (readable by it only); otherwise they are made
    readable by all inside it, the directory above being the owner's only."""
    paths = [directory, *sorted(directory.rglob("*"))]
    for path in paths:
        os.chmod(path, 0o500 if path.is_dir() else 0o400)
        if os.geteuid() == 0:
            os.chown(path, NODE_UID, NODE_UID)
        else:
            os.chmod(path, 0o555 if path.is_dir() else 0o444)
