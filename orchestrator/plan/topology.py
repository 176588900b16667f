"""Topology files: a whole QKD network in one YAML file, in the shape containerlab users know.

```yaml
name: chain5                 # names the deployment (state directory, telemetry topics)
runtime: process             # where nodes run: process (default) or docker (containers)
subnet: 127.42.0.0/16        # optional: the address block (default: a free one, see registry.py)
defaults:                    # link parameters every link starts from
  pulse_rate_hz: 1.0e9
  speedup: 10
nodes:
  alice: {saes: [sae-alice]} # a node that serves applications lists its SAE IDs
  r1: {}                     # every node can relay
  bob: {saes: [sae-bob]}
links:
  - endpoints: [alice, r1]
    length_km: 25            # required
  - endpoints: [r1, bob]
    length_km: 40
    eavesdrop_fraction: 0.1  # any channel or processing parameter overrides the defaults
key_delivery:                # optional: how the KMEs deliver keys (these are the defaults)
  key_size: 256
  pool_keys: 256             # keys relayed ahead of demand per SAE pair
  multipath: false           # XOR shares over node-disjoint routes
  key_ttl_s: 600             # a slave SAE has this long to fetch a key, then it is discarded
logs:                        # optional: size-rotated logs of the nodes and the broker (defaults)
  max_mb: 10                 # a log file is rotated when it reaches this size
  files: 3                   # files kept per log, the current one included
```

Node IDs, SAE IDs and the names the control plane keeps for itself (`orchestrator`, `broker`)
share one namespace, compared without regard to case: every certificate names one of them, and
a clash would let an application's certificate speak for a node or for the controller.

`load_topology(path)` validates the file into typed models. Every problem is reported as
`FILE:LINE: field.path: message`, and the loader refuses duplicate keys (YAML itself would keep
the last one silently) and unknown fields (naming the closest known one). It also refuses what
is well-formed but cannot work: a link on which the analytic model (`node/core/channel_model.py`)
distils no key with the link's parameters (the message gives the model's cut-off length), and
an SAE that no other SAE can reach (no other SAE on its node or on any node linked to it,
directly or through relays). `topology_json_schema()` is the JSON schema editors can use.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from qkdnet.node.config import (
    ChannelConfig,
    PqcBridgeConfig,
    ProcessingConfig,
    RoutingConfig,
    RoutingPolicy,
)
from qkdnet.node.errors import ConfigError
from qkdnet.node.identity import RESERVED_NAMES

__all__ = [
    "EXTERNAL_KME",
    "INTERWORKING",
    "DomainSpec",
    "ExternalKmeEnd",
    "ExternalKmeSpec",
    "KeyDeliverySpec",
    "LinkSpec",
    "LogSpec",
    "NodeSpec",
    "ResolvedLink",
    "RoutingSpec",
    "TelemetrySpec",
    "Topology",
    "load_topology",
    "topology_json_schema",
]

Identifier = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
]

Path_ = tuple[str | int, ...]  # a field path: ("links", 0, "endpoints")

_CHANNEL_FIELDS = {k for k in ChannelConfig.model_fields if k != "length_km"}
_PROCESSING_FIELDS = {k for k in ProcessingConfig.model_fields if k != "seed"}


def _optional(model: type[BaseModel], names: set[str]) -> dict[str, Any]:
    """The fields `names` of `model`, with their types and limits, but all optional."""
    fields: dict[str, Any] = {}
    for name in sorted(names):
        info = model.model_fields[name]
        assert info.annotation is not None
        fields[name] = (info.annotation | None, FieldInfo.merge_field_infos(info, default=None))
    return fields


# The link parameters a topology may set, in `defaults` or on a link: every channel and
# processing parameter of a node's link configuration, each optional.
LinkParameters: type[BaseModel] = create_model(
    "LinkParameters",
    __config__=ConfigDict(extra="forbid", frozen=True),
    **_optional(ChannelConfig, _CHANNEL_FIELDS),
    **_optional(ProcessingConfig, _PROCESSING_FIELDS),
)


class NodeSpec(BaseModel):
    """One node. Every node relays; one that serves applications lists its SAE IDs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    saes: list[Identifier] = Field(default_factory=list, description="SAE IDs served here")
    domain: Identifier | None = Field(
        None, description="the domain the node belongs to (required when `domains` is given)"
    )
    border_url: str | None = Field(
        None,
        pattern=r"^https://[^/]+:[0-9]{1,5}$",
        description="a border node: https://host:port where the peer domain reaches its ETSI "
        "GS QKD 020 API (default: the node's address in its domain's block, port 8020); "
        "needed when the peer domain is deployed apart and cannot work it out",
    )

    @field_validator("saes")
    @classmethod
    def _unique(cls, saes: list[str]) -> list[str]:
        for sae in saes:
            if saes.count(sae) > 1:
                raise ValueError(f"SAE {sae!r} listed twice")
        return saes


class ExternalKmeEnd(BaseModel):
    """One end of an external-KME link: the ETSI GS QKD 014 KME it draws on, as which SAE:
    given by its URL and the SAE's files, or (`qkdnet`) a qkdnet deployment on this machine
    whose KME serves the SAE (its URL and files are looked up when the link is deployed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sae_id: Identifier = Field(description="the node's SAE ID at that KME")
    url: str | None = Field(
        None, pattern=r"^https://[^/]+$", description="https://host:port of the KME"
    )
    ca: Path | None = Field(
        None, description="CA of the KME's certificate (relative to the topology file)"
    )
    cert: Path | None = Field(None, description="the node's client certificate at the KME")
    key: Path | None = Field(None, description="its private key")
    qkdnet: Identifier | None = Field(
        None,
        description="instead of url, ca, cert and key: a qkdnet deployment on this machine "
        "whose KME serving sae_id feeds the link",
    )

    @model_validator(mode="after")
    def _one_way(self) -> ExternalKmeEnd:
        given = [name for name in ("url", "ca", "cert", "key") if getattr(self, name)]
        if self.qkdnet is not None and given:
            raise ValueError(f"qkdnet names the KME: give no {', '.join(given)} with it")
        if self.qkdnet is None and len(given) < 4:
            missing = sorted({"url", "ca", "cert", "key"} - set(given))
            raise ValueError(
                f"give url, ca, cert and key (missing: {', '.join(missing)}), or qkdnet"
            )
        return self


class ExternalKmeSpec(BaseModel):
    """Where an `external-kme` link's key comes from: a pair of KMEs outside the deployment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ends: dict[Identifier, ExternalKmeEnd] = Field(description="both endpoints, by node ID")
    keys_per_pull: int = Field(16, ge=1, le=1024, description="keys per enc_keys call")
    key_bits: int = Field(256, ge=64, le=8192, multiple_of=8, description="bits per key")
    pull_interval_s: float = Field(1.0, ge=0.01, le=3600.0, description="seconds between pulls")


EXTERNAL_KME = "external-kme"  # the link kind whose key comes from a pair of external KMEs
PQC_BRIDGE = "pqc-bridge"  # the link kind whose key comes from ML-KEM-768 exchanges


class LinkSpec(LinkParameters):
    """One QKD link: its two endpoints, its length and any parameter overriding the defaults."""

    endpoints: tuple[Identifier, Identifier]
    length_km: float = Field(ge=0.0, le=1000.0, description="fibre length in km")
    kind: str = Field(
        "bb84",
        pattern=r"^[a-z][a-z0-9-]*$",
        description="the link's protocol: a link kind the nodes have installed (bb84); "
        "`interworking` joins the border nodes of two domains over ETSI GS QKD 020; "
        "`external-kme` draws key from a pair of ETSI GS QKD 014 KMEs outside the deployment; "
        "`pqc-bridge` makes key by ML-KEM-768 exchanges (no quantum channel)",
    )
    external_kme: ExternalKmeSpec | None = Field(
        None, description="kind external-kme: the two KMEs the link's key comes from"
    )
    pqc_bridge: PqcBridgeConfig | None = Field(
        None,
        description="kind pqc-bridge (key from ML-KEM-768 exchanges, no quantum channel): "
        "block_bits per exchange (8192) and interval_s between exchanges (0.5)",
    )


INTERWORKING = "interworking"  # the link kind that joins two domains' borders (ETSI 020)


class DomainSpec(BaseModel):
    """A trust domain: its nodes (those naming it), its own CA and routing; joined to other
    domains by `interworking` links between border nodes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str | None = Field(None, max_length=200, description="what the domain is")
    subnet: str | None = Field(
        None,
        description="the domain's address block, as the topology's `subnet` (each domain is a "
        "deployment of its own; default: a free block)",
    )


class TelemetrySpec(BaseModel):
    """Where telemetry goes: the embedded broker (default) or one given by URL."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    broker: str | None = Field(
        None,
        pattern=r"^mqtt://[^/:]+:[0-9]{1,5}$",
        description="external MQTT broker as mqtt://host:port (default: embedded)",
    )
    interval_s: float = Field(1.0, ge=0.1, le=3600.0, description="seconds between reports")


class RoutingSpec(BaseModel):
    """How every node's routes treat links of some kinds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kinds: dict[str, RoutingPolicy] = Field(
        default_factory=lambda: dict(RoutingConfig().kinds),
        description="link kind -> allow, prefer, avoid (used only where nothing else reaches) "
        "or exclude; pqc-bridge links (computational security) are avoided by default",
    )


class KeyDeliverySpec(BaseModel):
    """How every KME of the network delivers keys (ETSI GS QKD 014)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_size: int = Field(256, ge=64, le=8192, multiple_of=8, description="default key size, bits")
    pool_keys: int = Field(
        256,
        ge=0,
        le=100_000,
        description="keys relayed ahead of demand per SAE pair on different nodes (0: none)",
    )
    multipath: bool = Field(
        False, description="split keys into XOR shares over node-disjoint routes by default"
    )
    key_ttl_s: float = Field(
        600.0,
        ge=1.0,
        le=30 * 86400.0,
        description="seconds a slave SAE has to fetch a key once its master got it; the key is "
        "then discarded at both ends",
    )


class LogSpec(BaseModel):
    """Size-rotated logs: every node's log and the embedded broker's (process runtime)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_mb: float = Field(
        10.0, ge=0.1, le=100_000.0, description="a log file is rotated when it reaches this size"
    )
    files: int = Field(
        3,
        ge=2,
        le=100,
        description="files kept per log, the current one included (the oldest is deleted)",
    )

    @property
    def max_bytes(self) -> int:
        """`max_mb` in bytes (MB = 10^6 bytes)."""
        return int(self.max_mb * 1_000_000)


class Topology(BaseModel):
    """A whole network."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Identifier
    runtime: Literal["process", "docker"] = Field(
        "process",
        description="where nodes run: process (local processes, the default) or docker "
        "(a container per node; images from `qkdnet image build`)",
    )
    subnet: str | None = Field(
        None,
        description="the deployment's address block, a /16: 127.X.0.0/16 on the process runtime, "
        "10.X.0.0/16 on docker (X in 1..254); default: the lowest block no other deployment on "
        "this machine holds",
    )
    defaults: LinkParameters = Field(default_factory=LinkParameters)
    domains: dict[Identifier, DomainSpec] = Field(
        default_factory=dict,
        description="trust domains, each with its own CA, joined by interworking links "
        "(default: the network is one domain)",
    )
    nodes: dict[Identifier, NodeSpec] = Field(min_length=1)
    links: list[LinkSpec] = Field(default_factory=list)
    telemetry: TelemetrySpec = Field(default_factory=TelemetrySpec)
    key_delivery: KeyDeliverySpec = Field(default_factory=KeyDeliverySpec)
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    logs: LogSpec = Field(default_factory=LogSpec)

    @model_validator(mode="after")
    def _check_graph(self) -> Topology:
        seen: dict[frozenset[str], int] = {}
        for index, link in enumerate(self.links):
            a, b = link.endpoints
            for end in (a, b):
                if end not in self.nodes:
                    raise _PathError(("links", index, "endpoints"), f"unknown node {end!r}")
            if a == b:
                raise _PathError(("links", index, "endpoints"), f"link from {a!r} to itself")
            pair = frozenset((a, b))
            if pair in seen:
                raise _PathError(
                    ("links", index, "endpoints"),
                    f"second link between {a!r} and {b!r} (first: links[{seen[pair]}])",
                )
            seen[pair] = index
        owner: dict[str, str] = {}
        for node_id, node in self.nodes.items():
            for sae in node.saes:
                if sae in owner:
                    raise _PathError(
                        ("nodes", node_id, "saes"),
                        f"SAE {sae!r} is already served by node {owner[sae]!r}",
                    )
                owner[sae] = node_id
        self._check_namespace()
        self._check_domains()
        return self

    def _check_domains(self) -> None:
        """Every node in a declared domain (or none declared); one link across domains per
        border node (a QKD link of any kind, or an interworking link), and an interworking
        link crosses domains."""
        for node_id, node in self.nodes.items():
            if self.domains and node.domain is None:
                raise _PathError(
                    ("nodes", node_id),
                    f"node {node_id!r} names no domain (the topology declares domains: "
                    f"{', '.join(self.domains)})",
                )
            if node.domain is not None and node.domain not in self.domains:
                known = ", ".join(self.domains) or "none are declared"
                raise _PathError(
                    ("nodes", node_id, "domain"), f"unknown domain {node.domain!r} ({known})"
                )
        for index, link in enumerate(self.links):
            external = link.external_kme
            if (link.kind == EXTERNAL_KME) != (external is not None):
                raise _PathError(
                    ("links", index, "external_kme" if external else "kind"),
                    f"external_kme goes with kind {EXTERNAL_KME!r}, and that kind needs it",
                )
            if link.pqc_bridge is not None and link.kind != PQC_BRIDGE:
                raise _PathError(
                    ("links", index, "pqc_bridge"), f"pqc_bridge goes with kind {PQC_BRIDGE!r}"
                )
            if external is not None and set(external.ends) != set(link.endpoints):
                raise _PathError(
                    ("links", index, "external_kme", "ends"),
                    f"name the link's two endpoints, {link.endpoints[0]} and "
                    f"{link.endpoints[1]} (not {', '.join(external.ends) or 'none'})",
                )
        borders: dict[str, int] = {}
        for index, link in enumerate(self.links):
            a, b = link.endpoints
            across = self.nodes[a].domain != self.nodes[b].domain
            if link.kind == INTERWORKING and not across:
                raise _PathError(
                    ("links", index, "kind"),
                    f"an {INTERWORKING!r} link joins two domains; {a} and {b} are in the same one",
                )
            for end in (a, b) if across else ():
                if end in borders:
                    raise _PathError(
                        ("links", index, "endpoints"),
                        f"node {end!r} is a border already (links[{borders[end]}]): one "
                        "link across domains per border node",
                    )
                borders[end] = index
        for node_id, node in self.nodes.items():
            if node.border_url is not None and node_id not in borders:
                raise _PathError(
                    ("nodes", node_id, "border_url"),
                    f"node {node_id!r} is not a border (no interworking link ends at it)",
                )
        if self.domains and self.subnet is not None:
            raise _PathError(
                ("subnet",),
                "a topology with domains deploys each domain in its own block: give `subnet` "
                "to the domains",
            )
        subnets: dict[str, str] = {}
        for name, domain in self.domains.items():
            if domain.subnet is None:
                continue
            if domain.subnet in subnets:
                raise _PathError(
                    ("domains", name, "subnet"),
                    f"{domain.subnet} is domain {subnets[domain.subnet]!r}'s block already",
                )
            subnets[domain.subnet] = name

    def _check_namespace(self) -> None:
        """Node IDs, SAE IDs and reserved names: each at most once, whatever its case."""
        taken: dict[str, tuple[str, Path_ | None]] = {
            name: (f"the reserved name of {why}", None) for name, why in RESERVED_NAMES.items()
        }
        uses: list[tuple[str, str, Path_]] = [
            (node_id, f"node {node_id!r}", ("nodes", node_id)) for node_id in self.nodes
        ]
        for node_id, node in self.nodes.items():
            uses += [
                (sae, f"SAE {sae!r} of node {node_id!r}", ("nodes", node_id, "saes", index))
                for index, sae in enumerate(node.saes)
            ]
        for name, what, path in uses:
            first = taken.get(name.casefold())
            if first is not None:
                other, where = first
                raise _PathError(
                    path,
                    f"{what} clashes with {other}{_OTHER}: node IDs, SAE IDs and the reserved "
                    f"names ({', '.join(sorted(RESERVED_NAMES))}) share one namespace, without "
                    "regard to case",
                    other=where,
                )
            taken[name.casefold()] = (what, path)

    def resolved_links(self) -> list[ResolvedLink]:
        """Every QKD link (not the interworking ones) with its defaults applied, as node link
        configurations."""
        defaults = self.defaults.model_dump(exclude_none=True)
        out = []
        for index, link in enumerate(self.links):
            if link.kind == INTERWORKING:
                continue  # no QKD link: two KMSs joined by ETSI GS QKD 020
            merged = {
                **defaults,
                **link.model_dump(
                    exclude_none=True,
                    exclude={"endpoints", "kind", "external_kme", "pqc_bridge"},
                ),
            }
            channel = {k: v for k, v in merged.items() if k in _CHANNEL_FIELDS | {"length_km"}}
            processing = {k: v for k, v in merged.items() if k in _PROCESSING_FIELDS}
            try:
                resolved = ResolvedLink(
                    index=index,
                    endpoints=(link.endpoints[0], link.endpoints[1]),
                    channel=ChannelConfig.model_validate(channel),
                    processing=ProcessingConfig.model_validate(processing),
                    kind=link.kind,
                    external_kme=link.external_kme,
                    pqc_bridge=link.pqc_bridge,
                )
            except ValidationError as exc:
                detail = exc.errors()[0]["msg"].removeprefix("Value error, ")
                raise _PathError(("links", index), detail) from None
            out.append(resolved)
        return out


@dataclass(frozen=True)
class ResolvedLink:
    """A link with its defaults applied."""

    index: int
    endpoints: tuple[str, str]
    channel: ChannelConfig
    processing: ProcessingConfig
    kind: str = "bb84"
    external_kme: ExternalKmeSpec | None = None
    pqc_bridge: PqcBridgeConfig | None = None


_OTHER = "\x00other"  # where a message names the other field of a clash


class _PathError(ValueError):
    """A validation problem that knows its field path (and that of another field it concerns)."""

    def __init__(
        self, path: tuple[str | int, ...], message: str, other: tuple[str | int, ...] | None = None
    ) -> None:
        super().__init__(message.replace(_OTHER, f" ({_dotted(other)})" if other else ""))
        self.path = path
        self.message = message
        self.other = other

    def located(self, lines: dict[Path_, int]) -> str:
        """The message, with the other field and its line where it says `_OTHER`."""
        where = (
            ""
            if self.other is None
            else f" ({_dotted(self.other)}, line {_line(lines, self.other)})"
        )
        return self.message.replace(_OTHER, where)


# -- YAML with line numbers ------------------------------------------------------------------


def _compose(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML into plain data and a map from field path to 1-based line number."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}:{line}: YAML syntax: {problem}") from None
    lines: dict[Path_, int] = {}
    if root is None:
        return None, lines
    constructor = yaml.SafeLoader("")

    def walk(node: yaml.Node, path: Path_) -> Any:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node, deep=True)
                if not isinstance(key, str | int | float | bool):
                    raise ConfigError(
                        f"{source}:{key_node.start_mark.line + 1}: {_dotted(path)}: "
                        "keys must be plain names"
                    )
                if key in result:
                    raise ConfigError(
                        f"{source}:{key_node.start_mark.line + 1}: "
                        f"{_dotted((*path, str(key)))}: duplicate key {key!r}"
                    )
                child = (*path, str(key))
                result[key] = walk(value_node, child)
                lines[child] = key_node.start_mark.line + 1
            return result
        if isinstance(node, yaml.SequenceNode):
            return [walk(item, (*path, i)) for i, item in enumerate(node.value)]
        return constructor.construct_object(node, deep=True)

    return walk(root, ()), lines


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _model_at(path: Path_) -> type[BaseModel] | None:
    """The model that validates the mapping at `path` of a topology file (None: not one)."""
    if not path:
        return Topology
    if len(path) == 1:
        sections: dict[str | int, type[BaseModel]] = {
            "defaults": LinkParameters,
            "telemetry": TelemetrySpec,
            "key_delivery": KeyDeliverySpec,
            "routing": RoutingSpec,
            "logs": LogSpec,
        }
        return sections.get(path[0])
    if len(path) == 2:
        items: dict[str | int, type[BaseModel]] = {
            "links": LinkSpec,
            "nodes": NodeSpec,
            "domains": DomainSpec,
        }
        return items.get(path[0])
    return None


def _unknown_field(path: Path_) -> str:
    """'unknown field', with the closest known field of its mapping (or all, when few)."""
    model = _model_at(path[:-1])
    if model is None:
        return "unknown field"
    known = sorted(model.model_fields)
    close = difflib.get_close_matches(str(path[-1]), known, n=1, cutoff=0.6)
    if close:
        return f"unknown field (did you mean {close[0]!r}?)"
    if len(known) <= 8:
        return f"unknown field (the fields here: {', '.join(known)})"
    return "unknown field (`qkdnet schema` lists the fields)"


def _line(lines: dict[Path_, int], path: Path_) -> int:
    """The line of the deepest part of `path` that exists in the file."""
    for cut in range(len(path), -1, -1):
        found = lines.get(tuple(path[:cut]))
        if found is not None:
            return found
    return 1


def load_topology(path: Path, *, check_workable: bool = True) -> Topology:
    """Read and validate a topology file; ConfigError says FILE:LINE: field: problem.

    `check_workable=False` skips the checks of what is well-formed but cannot work (links the
    model gives no key, unreachable SAEs): for a network that was checked when it was deployed,
    which saves the verbs that read it the channel model (and numpy)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    from .topology_checks import unworkable  # beside this module: it imports its models

    data, lines = _compose(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: (top level): expected a mapping with name, nodes, links")
    try:
        topology = Topology.model_validate(data)
        problems = unworkable(topology, topology.resolved_links()) if check_workable else []
    except ValidationError as exc:
        messages = []
        for item in exc.errors():
            loc: Path_ = tuple(item["loc"])
            message = item["msg"].removeprefix("Value error, ")
            error = item.get("ctx", {}).get("error")
            if isinstance(error, _PathError):
                loc, message = error.path, error.located(lines)
            elif item["type"] == "extra_forbidden":
                message = _unknown_field(loc)
            elif item["type"] == "missing":
                message = "required field missing"
            messages.append(f"{path}:{_line(lines, loc)}: {_dotted(loc)}: {message}")
        raise ConfigError("\n".join(messages)) from None
    except _PathError as exc:
        problems = [exc]
    if not problems:
        topology, problems = _external_files(topology, path.parent)
    if problems:
        problems.sort(key=lambda problem: _line(lines, problem.path))
        raise ConfigError(
            "\n".join(
                f"{path}:{_line(lines, p.path)}: {_dotted(p.path)}: {p.located(lines)}"
                for p in problems
            )
        ) from None
    return topology


def _external_files(topology: Topology, base: Path) -> tuple[Topology, list[_PathError]]:
    """`topology` with the files of its external-KME links made absolute (relative ones are
    relative to the topology file), and a problem for each file that does not exist."""
    problems: list[_PathError] = []
    links = list(topology.links)
    for index, link in enumerate(links):
        if link.external_kme is None:
            continue
        ends = {}
        for node, end in link.external_kme.ends.items():
            files = {}
            if end.qkdnet is not None:  # looked up at deploy time
                continue
            for name in ("ca", "cert", "key"):
                where = base / getattr(end, name)
                if not where.is_file():
                    problems.append(
                        _PathError(
                            ("links", index, "external_kme", "ends", node, name),
                            f"no such file: {where}",
                        )
                    )
                files[name] = where.absolute()
            ends[node] = end.model_copy(update=files)
        ends = {node: ends.get(node, end) for node, end in link.external_kme.ends.items()}
        external = link.external_kme.model_copy(update={"ends": ends})
        links[index] = link.model_copy(update={"external_kme": external})
    return topology.model_copy(update={"links": links}), problems


def topology_json_schema() -> str:
    """The JSON schema of topology files (for editors), as text."""
    schema = Topology.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "qkdnet topology"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
