"""Node configuration: the YAML file of `qkdnet node --config FILE`, validated into typed models.

Every error names the file and the field path (for example `links[0].channel.length_km`), so a
user sees exactly what to fix; unknown fields are errors too, because a misspelt option that is
silently ignored is worse than a refusal.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .addresses import parse_address
from .errors import ConfigError

if TYPE_CHECKING:  # the model imports numpy: only the methods that need it load it
    from .core.channel_model import ChannelParameters

__all__ = [
    "ChannelConfig",
    "ExternalKmeConfig",
    "InterworkingConfig",
    "KeyApiConfig",
    "LinkConfig",
    "NodeConfig",
    "PqcBridgeConfig",
    "ProcessingConfig",
    "RoutingConfig",
    "TelemetryConfig",
    "TlsConfig",
    "format_validation_error",
    "load_node_config",
    "parse_address",
]

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
_DECOY_MU = 0.48  # GYS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChannelConfig(_Strict):
    """The physical link: fibre, detectors, source intensities, an optional eavesdropper.

    Defaults are the GYS parameter set (Gobby, Yuan, Shields, APL 84, 3762 (2004)).
    """

    length_km: float = Field(ge=0.0, le=1000.0, description="fibre length in km")
    fiber_loss_db_per_km: float = Field(0.21, ge=0.0, le=10.0)
    detector_efficiency: float = Field(0.045, gt=0.0, le=1.0, description="eta_Bob")
    dark_count_yield: float = Field(1.7e-6, ge=0.0, lt=0.5, description="Y0 per pulse")
    misalignment_error: float = Field(0.033, ge=0.0, le=0.5, description="e_det")
    pulse_rate_hz: float = Field(1e9, gt=0.0, le=1e11)
    mu: float | None = Field(
        None,
        gt=0.0,
        le=10.0,
        description="signal mean photon number; default 0.48 with decoys, and without decoys the "
        "value that maximises the GLLP key rate at this length (of the order of the transmittance)",
    )
    nu: float = Field(0.1, gt=0.0, le=10.0, description="weak decoy mean photon number")
    p_signal: Probability = 0.8
    p_decoy: Probability = 0.15
    p_vacuum: Probability = 0.05
    decoy: bool = Field(True, description="send decoy and vacuum pulses; GLLP when off")
    eavesdrop_fraction: Probability = Field(0.0, description="intercept-resend on this fraction")

    @model_validator(mode="after")
    def _check_intensities(self) -> ChannelConfig:
        if self.decoy:
            if self.nu >= (self.mu if self.mu is not None else _DECOY_MU):
                raise ValueError("nu (decoy intensity) must be below mu (signal intensity)")
            total = self.p_signal + self.p_decoy + self.p_vacuum
            if abs(total - 1.0) > 1e-9:
                raise ValueError(
                    f"p_signal + p_decoy + p_vacuum must be 1 (they add up to {total:g})"
                )
            if self.p_signal <= 0.0:
                raise ValueError("p_signal must be above 0")
        return self

    def parameters(self) -> ChannelParameters:
        """The physics view of this configuration, with the signal intensity resolved."""
        from .core.channel_model import (
            GYS_RECONCILIATION_EFFICIENCY,
            ChannelParameters,
            optimal_gllp_mu,
        )

        fields = self.model_dump()
        if self.mu is not None:
            return ChannelParameters(**fields)
        if self.decoy:
            return ChannelParameters(**{**fields, "mu": _DECOY_MU})
        probe = ChannelParameters(**{**fields, "mu": _DECOY_MU})
        best = optimal_gllp_mu(probe, GYS_RECONCILIATION_EFFICIENCY)
        return ChannelParameters(**{**fields, "mu": best})


class ProcessingConfig(_Strict):
    """Post-processing and pacing of the link."""

    frame_bits: int = Field(
        200_000, ge=1_000, le=4_000_000, description="target sifted signal bits per frame"
    )
    speedup: float = Field(1.0, gt=0.0, le=1e6, description="emulated seconds per wall second")
    qber_abort: float = Field(0.11, gt=0.0, lt=0.5, description="abort above this QBER")
    pe_sample_fraction: float = Field(0.05, gt=0.0, lt=0.5)
    epsilon_pa: float = Field(1e-10, gt=0.0, lt=1.0)
    max_frame_seconds: float = Field(
        30.0, gt=0.0, description="emulated time a frame may take at most (long links)"
    )
    auth_reserve_pads: int = Field(
        1024, ge=64, description="authentication pads kept available per direction"
    )
    store_max_bits: int = Field(
        8_000_000,
        ge=100_000,
        le=10**12,
        description="key the link's store holds at most (unconsumed bits): the transmitter "
        "starts no frame at this level (the frames in flight, three at most, still land) and "
        "goes on once applications have taken an eighth of it; stored key is never discarded",
    )
    seed: int | None = Field(None, description="seed the emulation RNGs (tests only)")


class TlsConfig(_Strict):
    """Files for gRPC mutual TLS: the CA, this node's certificate and its private key."""

    ca: Path
    cert: Path
    key: Path


class ExternalKmeConfig(_Strict):
    """Where an `external-kme` link's key comes from at this end: an ETSI GS QKD 014 KME
    outside the deployment (a vendor device, another KMS, another qkdnet), of which this node
    is an SAE. The transmitter's end calls enc_keys for the peer's SAE, the receiver's end
    dec_keys with the key IDs it is sent over the link's authenticated channel."""

    url: str = Field(pattern=r"^https://[^/]+$", description="https://host:port of the KME")
    sae_id: str = Field(min_length=1, description="this node's SAE ID at that KME")
    peer_sae_id: str = Field(min_length=1, description="the link's other end's SAE ID at its KME")
    ca: Path = Field(description="the CA the KME's certificate is checked against")
    cert: Path = Field(description="this node's client certificate at the KME")
    key: Path = Field(description="its private key")
    keys_per_pull: int = Field(16, ge=1, le=1024, description="keys asked for per enc_keys")
    key_bits: int = Field(256, ge=64, le=8192, multiple_of=8, description="bits per key")
    pull_interval_s: float = Field(
        1.0, ge=0.01, le=3600.0, description="seconds between pulls (the link's key rate)"
    )


class PqcBridgeConfig(_Strict):
    """A `pqc-bridge` link: its key comes from ML-KEM-768 exchanges over the authenticated
    classical channel (no quantum channel; computational security)."""

    block_bits: int = Field(
        8192, ge=1024, le=1_048_576, multiple_of=8, description="key bits per exchange"
    )
    interval_s: float = Field(
        0.5, ge=0.001, le=3600.0, description="seconds between exchanges (the link's key rate)"
    )


RoutingPolicy = Literal["allow", "prefer", "avoid", "exclude"]
_DEFAULT_KIND_POLICIES: dict[str, RoutingPolicy] = {"pqc-bridge": "avoid"}


class RoutingConfig(_Strict):
    """How routes treat links of a kind: `avoid` (used only where nothing else reaches),
    `prefer`, `exclude` (never used for relays), or `allow` (like any link)."""

    kinds: dict[str, RoutingPolicy] = Field(
        default_factory=lambda: dict(_DEFAULT_KIND_POLICIES),
        description="link kind -> policy; pqc-bridge links (computational security) are "
        "avoided by default",
    )


class LinkConfig(_Strict):
    """One QKD link of this node. The node whose ID sorts first transmits (is Alice)."""

    peer: str = Field(min_length=1)
    kind: str = Field(
        "bb84",
        pattern=r"^[a-z][a-z0-9-]*$",
        description="the link's protocol: a registered link kind (qkdnet.node.link_kinds)",
    )
    address: str | None = Field(None, description="host:port of the peer (transmitter side)")
    psk_file: Path = Field(description="pre-shared authentication secret of this link")
    channel: ChannelConfig
    processing: ProcessingConfig = ProcessingConfig()
    external_kme: ExternalKmeConfig | None = Field(
        None, description="kind external-kme: the KME outside the deployment this end draws on"
    )
    pqc_bridge: PqcBridgeConfig = Field(
        default_factory=PqcBridgeConfig, description="kind pqc-bridge: block size and pace"
    )

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_address(value)
        return value


class TelemetryConfig(_Strict):
    """Where the node publishes its state and link figures (MQTT); see node/edge/telemetry.py."""

    broker: str = Field(description="MQTT broker as host:port")
    tls: bool = Field(
        False,
        description="MQTT over TLS, the node authenticating with its own certificate (the "
        "files of `tls`) and checking the broker's against the CA",
    )
    topic_prefix: str = Field(
        min_length=1, pattern=r"^[^#+]+[^/#+]$", description="e.g. qkdnet/<topology>"
    )
    interval_s: float = Field(1.0, ge=0.1, le=3600.0, description="seconds between reports")

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        parse_address(value)
        return value


class KeyApiConfig(_Strict):
    """The node's ETSI GS QKD 014 server (HTTPS, mutual TLS with SAE certificates)."""

    listen: str = Field(description="host:port of the HTTPS server")
    key_size: int = Field(256, ge=8, multiple_of=8, description="default key size (bits)")
    min_key_size: int = Field(64, ge=8, multiple_of=8)
    max_key_size: int = Field(8192, ge=8, multiple_of=8)
    max_key_per_request: int = Field(1024, ge=1)
    max_key_count: int = Field(100_000, ge=1)
    max_sae_id_count: int = Field(4, ge=0, description="additional slaves per request")
    pool_keys: int = Field(
        256, ge=0, description="keys relayed ahead of demand per SAE pair (0: none)"
    )
    pool_batch: int = Field(128, ge=1, le=1024, description="keys per pool fill")
    multipath: bool = Field(False, description="XOR shares over node-disjoint routes by default")
    key_ttl_s: float = Field(
        600.0,
        ge=1.0,
        le=30 * 86400.0,
        description="seconds a slave SAE has to fetch a key once its master got it; then the "
        "key is discarded at both ends",
    )
    header_timeout_s: float = Field(
        15.0, gt=0.0, le=3600.0, description="a request's head must arrive within this time"
    )
    body_timeout_s: float = Field(
        15.0, gt=0.0, le=3600.0, description="a request's body must arrive within this time"
    )
    max_connections: int = Field(
        512, ge=1, le=100_000, description="HTTPS connections held at once at most"
    )
    stream_listen: str | None = Field(
        None,
        description="host:port of the ETSI GS QKD 004 server (key streams over TLS, QUBIP's "
        "binary framing); none when absent",
    )
    stream_local_max_bps: int = Field(
        10_000_000, ge=1, description="rate a 004 stream between two SAEs of this node may take"
    )
    max_streams: int = Field(1024, ge=1, le=100_000, description="004 streams held at once")

    @field_validator("listen", "stream_listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_address(value)
        return value

    @model_validator(mode="after")
    def _check_sizes(self) -> KeyApiConfig:
        if not self.min_key_size <= self.key_size <= self.max_key_size:
            raise ValueError("key sizes: need min_key_size <= key_size <= max_key_size")
        if self.pool_keys > self.max_key_count:
            raise ValueError("pool_keys: at most max_key_count")
        return self


class InterworkingConfig(_Strict):
    """This node is a border: ETSI GS QKD 020 towards the border node of another domain (one
    with its own CA), whose SAEs it serves inside this domain (qkdnet.node.protocol.interworking).
    """

    listen: str = Field(description="host:port of this node's 020 HTTPS server")
    url: str = Field(
        pattern=r"^https://[^/]+$",
        description="https://host:port the peer border reaches that server by (its callbacks)",
    )
    peer_node: str = Field(min_length=1, description="the peer border's node ID")
    peer_trust_domain: str = Field(
        min_length=1, description="the peer domain's SPIFFE trust domain (its CA's)"
    )
    peer_url: str = Field(
        pattern=r"^https://[^/]+$", description="https://host:port of the peer border's 020 API"
    )
    peer_ca: Path = Field(
        description="the peer domain's CA certificate (the trust bundle exchanged at deploy "
        "time): the only CA the 020 server and client trust"
    )
    peer_saes: list[str] = Field(
        description="SAE IDs of other domains reached through the peer border (none: the "
        "border only receives keys for SAEs of its own domain)"
    )
    shared_link: bool = Field(
        False,
        description="the two borders share a QKD link (`links` has one to peer_node): keys "
        "cross padded with its key",
    )
    ack_timeout_s: float = Field(
        6.0, gt=0.0, le=60.0, description="how long a transfer waits for the peer's ack"
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_address(value)
        return value


class NodeConfig(_Strict):
    """The whole node."""

    node_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    listen: str = Field(description="host:port for the gRPC server")
    advertise: str | None = Field(
        None,
        description="host:port peers reach this node by, as telemetry shows it (default: listen)",
    )
    state_dir: Path
    tls: TlsConfig
    links: list[LinkConfig] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    controllers: list[str] = Field(
        default_factory=lambda: ["orchestrator"],
        description="certificate CNs allowed to call NodeControl",
    )
    telemetry: TelemetryConfig | None = Field(None, description="publish telemetry over MQTT")
    saes: list[str] = Field(default_factory=list, description="SAE IDs this node's KME serves")
    key_api: KeyApiConfig | None = Field(None, description="serve ETSI GS QKD 014")
    routing: RoutingConfig = Field(
        default_factory=RoutingConfig, description="how routes treat links of some kinds"
    )
    nodes: dict[str, str] = Field(
        default_factory=dict, description="gRPC host:port of every node (relay and settling)"
    )
    sae_directory: dict[str, str] = Field(
        default_factory=dict, description="SAE ID -> ID of the node that serves it"
    )
    interworking: InterworkingConfig | None = Field(
        None, description="this node is a border towards another domain (ETSI GS QKD 020)"
    )
    restconf_listen: str | None = Field(
        None,
        description="host:port of the RESTCONF server (ETSI GS QKD 015, HTTPS, the controller's "
        "certificate only); none when absent",
    )
    location: str = Field("", description="qkdn_location_id in the ETSI 015 view")

    @field_validator("listen", "advertise", "restconf_listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_address(value)
        return value

    @model_validator(mode="after")
    def _check_links(self) -> NodeConfig:
        peers = [link.peer for link in self.links]
        for peer in peers:
            if peer == self.node_id:
                raise ValueError(f"link to itself ({peer})")
            if peers.count(peer) > 1:
                raise ValueError(f"two links to the same peer ({peer})")
        border = self.interworking
        if border is not None:
            if border.shared_link and border.peer_node not in peers:
                raise ValueError(
                    f"interworking.shared_link: no link to the peer border {border.peer_node}"
                )
            mine = set(self.saes) & set(border.peer_saes)
            if mine:
                raise ValueError(
                    f"interworking.peer_saes: {sorted(mine)[0]} is served by this node already"
                )
        for index, link in enumerate(self.links):
            if self.node_id < link.peer and link.address is None:
                raise ValueError(
                    f"links[{index}].address is required: this node transmits to {link.peer}"
                )
        return self


def format_validation_error(error: ValidationError, source: str) -> str:
    """One readable line per problem: `source: field.path: message`."""
    lines = []
    for item in error.errors():
        path = ""
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"{source}: {path or '(top level)'}: {message}")
    return "\n".join(lines)


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Relative file paths in a config file are relative to the file itself."""

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return str(base / value)
        return value

    if "state_dir" in data:
        data["state_dir"] = fix(data["state_dir"])
    tls = data.get("tls")
    if isinstance(tls, dict):
        for key in ("ca", "cert", "key"):
            if key in tls:
                tls[key] = fix(tls[key])
    border = data.get("interworking")
    if isinstance(border, dict) and "peer_ca" in border:
        border["peer_ca"] = fix(border["peer_ca"])
    links = data.get("links")
    if isinstance(links, list):
        for link in links:
            if isinstance(link, dict) and "psk_file" in link:
                link["psk_file"] = fix(link["psk_file"])


def node_config_yaml(config: NodeConfig) -> str:
    """`config` as the file `load_node_config` reads back: YAML, with the fields that hold
    their defaults left out."""
    return yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=True), sort_keys=False)


def load_node_config(path: Path) -> NodeConfig:
    """Read and validate a node configuration file; ConfigError names the file and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "syntax"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: {where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: (top level): expected a mapping of fields")
    _resolve_paths(data, path.parent.resolve())
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
