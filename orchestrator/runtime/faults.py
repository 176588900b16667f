"""Faults injected into a running deployment: paused nodes, cut links, shaped traffic, changed
quantum channels.

A *cut* link carries nothing between its two nodes, in both directions, as a cut fibre (and the
classical channel beside it) would; the rest of the network keeps going and relays around it.
On Docker the kernel drops every packet between the two containers (a blackhole route in each);
on the process runtime, where every node shares one network namespace, the two nodes do it
themselves (qkdnet.node.edge.peer_faults: the link stops its session and shows "cut", each node
refuses the other's link, relay and routing calls and fails its own).

An *impairment* shapes what a node sends: delay, jitter, loss and a rate limit. Node-wide, it is
kernel netem on the node's interface on Docker when the kernel has sch_netem, and otherwise the
node's own shaping of its classical channels (qkdnet.node.edge.channel_shaping, which says what is
emulated: a loss on a reliable stream costs a retransmission timeout); toward one peer it is
always the node's own. `set` replaces an impairment as a whole (containerlab's `tools netem
set`); an all-zero impairment is the same as `reset`.

A *channel change* alters a link's quantum channel live at both ends: the intercept-resend
eavesdropper's fraction and the misalignment (optical error probability) replace the configured
ones, extra loss in dB adds to the fibre's; the next frames are emulated with it and the link's
model figures follow it.

The live state is read from the nodes (their routes and qdiscs, their NodeControl service); what
was asked for is also recorded in `<state dir>/faults.json`, so that a node that restarts gets
its faults back, as a cut fibre would still be cut.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qkdnet.node.core.channel_change import ChannelChange
from qkdnet.node.errors import ConfigError, QkdnetError
from qkdnet.node.file_modes import write_private

__all__ = [
    "FAULTS_FILE",
    "FaultRecord",
    "FaultReport",
    "FaultUnsupported",
    "Impairment",
    "change_as_json",
    "change_from_json",
    "channel_change",
    "describe_change",
    "link_pair",
    "netem_from_tc",
    "parse_duration_ms",
    "parse_percent",
    "parse_rate_kbit",
]

FAULTS_FILE = "faults.json"


class FaultUnsupported(QkdnetError):
    """This runtime, or the machine under it, cannot inject that fault (the message says why)."""


def link_pair(a: str, b: str) -> tuple[str, str]:
    """The two ends of a link in a canonical order."""
    return (a, b) if a < b else (b, a)


_MAX_RATE_KBIT = 100e6


@dataclass(frozen=True)
class Impairment:
    """What a node's traffic suffers: delay and jitter in milliseconds, loss in percent, a rate
    limit in kbit/s (0: none)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_percent: float = 0.0
    rate_kbit: float = 0.0

    def __post_init__(self) -> None:
        for name in ("delay_ms", "jitter_ms"):
            value = getattr(self, name)
            if not 0 <= value <= 60_000:
                raise ConfigError(f"{name.removesuffix('_ms')}: must be 0..60 s, not {value:g} ms")
        if not 0 <= self.loss_percent <= 100:
            raise ConfigError(f"loss: must be 0..100 %, not {self.loss_percent:g} %")
        if not 0 <= self.rate_kbit <= _MAX_RATE_KBIT:
            raise ConfigError(f"rate: must be 0..100 Gbit/s, not {self.rate_kbit:g} kbit/s")
        if self.jitter_ms and not self.delay_ms:
            raise ConfigError("jitter: needs a delay to vary around (--delay)")

    @property
    def is_none(self) -> bool:
        return not (self.delay_ms or self.jitter_ms or self.loss_percent or self.rate_kbit)

    def tc_netem_args(self) -> list[str]:
        """The netem options of `tc qdisc replace ... netem`, e.g. delay 50ms 10ms loss 1%."""
        args: list[str] = []
        if self.delay_ms:
            args += ["delay", f"{self.delay_ms:g}ms"]
            if self.jitter_ms:
                args.append(f"{self.jitter_ms:g}ms")
        if self.loss_percent:
            args += ["loss", f"{self.loss_percent:g}%"]
        if self.rate_kbit:
            args += ["rate", f"{self.rate_kbit:g}kbit"]
        return args

    def describe(self) -> str:
        if self.is_none:
            return "none"
        parts = []
        if self.delay_ms:
            parts.append(
                f"delay {self.delay_ms:g} ms"
                + (f" ± {self.jitter_ms:g} ms" if self.jitter_ms else "")
            )
        if self.loss_percent:
            parts.append(f"loss {self.loss_percent:g} %")
        if self.rate_kbit:
            parts.append(f"rate {self.rate_kbit:g} kbit/s")
        return ", ".join(parts)

    def as_json(self) -> dict[str, float]:
        return {
            "delay_ms": self.delay_ms,
            "jitter_ms": self.jitter_ms,
            "loss_percent": self.loss_percent,
            "rate_kbit": self.rate_kbit,
        }

    @classmethod
    def from_json(cls, data: Any) -> Impairment:
        if not isinstance(data, dict):
            raise ValueError("an impairment is an object")
        return cls(
            float(data.get("delay_ms", 0)),
            float(data.get("jitter_ms", 0)),
            float(data.get("loss_percent", 0)),
            float(data.get("rate_kbit", 0)),
        )


def channel_change(
    *,
    eavesdrop_fraction: float | None = None,
    extra_loss_db: float = 0.0,
    misalignment_error: float | None = None,
    where: str = "",
) -> ChannelChange:
    """A ChannelChange, ConfigError (prefixed with `where`) when a value is out of range."""
    try:
        return ChannelChange(eavesdrop_fraction, extra_loss_db, misalignment_error)
    except ValueError as exc:
        text = str(exc)
        for field, option in _CHANGE_OPTIONS.items():
            text = text.replace(field, option)
        raise ConfigError(f"{where}{text}") from None


_CHANGE_OPTIONS = {
    "eavesdrop_fraction": "eavesdrop",
    "extra_loss_db": "extra-loss-db",
    "misalignment_error": "misalignment",
}


def change_as_json(change: ChannelChange) -> dict[str, float]:
    """The fields a change sets (unset ones left out)."""
    data: dict[str, float] = {}
    if change.eavesdrop_fraction is not None:
        data["eavesdrop_fraction"] = change.eavesdrop_fraction
    if change.extra_loss_db:
        data["extra_loss_db"] = change.extra_loss_db
    if change.misalignment_error is not None:
        data["misalignment_error"] = change.misalignment_error
    return data


def change_from_json(data: Any) -> ChannelChange:
    if not isinstance(data, dict) or set(data) - set(_CHANGE_OPTIONS):
        raise ValueError("a channel change is an object of " + ", ".join(_CHANGE_OPTIONS))
    eve, misalignment = data.get("eavesdrop_fraction"), data.get("misalignment_error")
    return ChannelChange(
        None if eve is None else float(eve),
        float(data.get("extra_loss_db", 0)),
        None if misalignment is None else float(misalignment),
    )


def describe_change(change: ChannelChange) -> str:
    """'eavesdropper 50 %, extra loss 3 dB, misalignment 2 %'."""
    parts = []
    if change.eavesdrop_fraction is not None:
        parts.append(f"eavesdropper {change.eavesdrop_fraction:.3g} of the pulses")
    if change.extra_loss_db:
        parts.append(f"extra loss {change.extra_loss_db:g} dB")
    if change.misalignment_error is not None:
        parts.append(f"misalignment {change.misalignment_error:.3g}")
    return ", ".join(parts) or "as configured"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s)?\s*$")
_UNIT_MS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3, None: 1.0}


def parse_duration_ms(text: str, option: str) -> float:
    """'50ms', '0.2s', '250us' or a bare number of milliseconds, in milliseconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ConfigError(f"{option}: expected a duration such as 50ms or 0.2s, not {text!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_percent(text: str, option: str) -> float:
    """'1%', '0.5%' or a bare number, in percent."""
    try:
        return float(text.strip().removesuffix("%"))
    except ValueError:
        raise ConfigError(f"{option}: expected a percentage such as 1% , not {text!r}") from None


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?bit)?\s*$", re.IGNORECASE)
_UNIT_KBIT = {"bit": 1e-3, "kbit": 1.0, "mbit": 1e3, "gbit": 1e6, None: 1.0}


def parse_rate_kbit(text: str, option: str) -> float:
    """'1mbit', '500kbit', '2gbit' (tc's units) or a bare number of kbit/s, in kbit/s."""
    match = _RATE.match(text)
    if match is None:
        raise ConfigError(f"{option}: expected a rate such as 500kbit or 1mbit, not {text!r}")
    unit = match.group(2).lower() if match.group(2) else None
    return float(match.group(1)) * _UNIT_KBIT[unit]


def netem_from_tc(qdiscs: Any) -> Impairment | None:
    """The root netem qdisc in `tc -j qdisc show dev IFACE` output, if there is one.

    iproute2 reports netem's delay and jitter in seconds and loss as a fraction
    ({"kind": "netem", "root": true, "options": {"delay": {"delay": 0.05, "jitter": 0.01},
    "loss-random": {"loss": 0.01}}}).
    """
    if not isinstance(qdiscs, list):
        return None
    for qdisc in qdiscs:
        if not isinstance(qdisc, dict) or qdisc.get("kind") != "netem" or not qdisc.get("root"):
            continue
        options = qdisc.get("options") or {}
        delay = options.get("delay") or {}
        loss = options.get("loss-random") or {}
        rate = options.get("rate") or {}  # bytes per second, as tc keeps it
        return Impairment(
            delay_ms=round(float(delay.get("delay", 0)) * 1e3, 6),
            jitter_ms=round(float(delay.get("jitter", 0)) * 1e3, 6),
            loss_percent=round(float(loss.get("loss", 0)) * 100, 6),
            rate_kbit=round(float(rate.get("rate", 0)) * 8 / 1e3, 6),
        )
    return None


@dataclass
class FaultRecord:
    """The faults asked for, kept in the state directory to re-apply after a node restarts.

    `impairments` are node-wide (kernel netem or the node's own shaping), `peer_impairments`
    shape what a node sends to one peer (`(node, peer)`), `channels` change links (by pair).
    `kernel_netem` is False once a Docker host was found without netem (the node's own shaping
    stands in for it from then on)."""

    cuts: set[tuple[str, str]] = field(default_factory=set)
    impairments: dict[str, Impairment] = field(default_factory=dict)
    peer_impairments: dict[tuple[str, str], Impairment] = field(default_factory=dict)
    channels: dict[tuple[str, str], ChannelChange] = field(default_factory=dict)
    kernel_netem: bool | None = None

    @classmethod
    def load(cls, state_dir: Path) -> FaultRecord:
        path = state_dir / FAULTS_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{path}: unreadable ({exc}); remove it to forget the faults"
            ) from None
        try:
            cuts = {link_pair(str(a), str(b)) for a, b in data.get("cuts", [])}
            impairments = {
                str(node): Impairment.from_json(value)
                for node, value in (data.get("impairments") or {}).items()
            }
            peer_impairments = {
                (str(node), str(peer)): Impairment.from_json(value)
                for node, peers in (data.get("peer_impairments") or {}).items()
                for peer, value in peers.items()
            }
            channels = {}
            for link_id, value in (data.get("channels") or {}).items():
                a, sep, b = str(link_id).partition("--")
                if not sep:
                    raise ValueError(f"{link_id!r} is no link ID")
                channels[link_pair(a, b)] = change_from_json(value)
            kernel_netem = data.get("kernel_netem")
            if kernel_netem is not None and not isinstance(kernel_netem, bool):
                raise ValueError("kernel_netem is true, false or null")
        except (TypeError, ValueError, AttributeError, ConfigError) as exc:
            raise ConfigError(
                f"{path}: malformed ({exc}); remove it to forget the faults"
            ) from None
        return cls(cuts, impairments, peer_impairments, channels, kernel_netem)

    def save(self, state_dir: Path) -> None:
        path = state_dir / FAULTS_FILE
        peers: dict[str, dict[str, Any]] = {}
        for (node, peer), impairment in sorted(self.peer_impairments.items()):
            peers.setdefault(node, {})[peer] = impairment.as_json()
        data = {
            "cuts": sorted(list(pair) for pair in self.cuts),
            "impairments": {n: i.as_json() for n, i in sorted(self.impairments.items())},
            "peer_impairments": peers,
            "channels": {
                f"{a}--{b}": change_as_json(c) for (a, b), c in sorted(self.channels.items())
            },
            "kernel_netem": self.kernel_netem,
        }
        write_private(path, json.dumps(data, indent=2))

    def cuts_of(self, node: str) -> list[str]:
        """The peers `node` is cut off from."""
        return sorted(b if a == node else a for a, b in self.cuts if node in (a, b))

    def peer_impairments_of(self, node: str) -> dict[str, Impairment]:
        """What `node` sends to each peer it shapes traffic to."""
        return {peer: imp for (n, peer), imp in self.peer_impairments.items() if n == node}

    def channels_of(self, node: str) -> dict[tuple[str, str], ChannelChange]:
        """The changed channels of `node`'s links."""
        return {pair: change for pair, change in self.channels.items() if node in pair}

    @property
    def is_empty(self) -> bool:
        return not (self.cuts or self.impairments or self.peer_impairments or self.channels)


@dataclass(frozen=True)
class FaultReport:
    """The faults in force: paused nodes (and the broker, as `BROKER`), cut links, node-wide
    impairments (by node, with `mechanism` "netem" or "in-node"), impairments toward one peer
    (by node, then peer) and changed quantum channels (by link pair)."""

    paused: list[str]
    cuts: list[tuple[str, str]]
    impairments: dict[str, Impairment]
    mechanism: dict[str, str] = field(default_factory=dict)
    peer_impairments: dict[str, dict[str, Impairment]] = field(default_factory=dict)
    channels: dict[tuple[str, str], ChannelChange] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not (
            self.paused or self.cuts or self.impairments or self.peer_impairments or self.channels
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "paused": self.paused,
            "cuts": [list(pair) for pair in self.cuts],
            "impairments": {
                node: imp.as_json() | {"mechanism": self.mechanism.get(node, "netem")}
                for node, imp in self.impairments.items()
            },
            "peer_impairments": {
                node: {peer: imp.as_json() for peer, imp in peers.items()}
                for node, peers in self.peer_impairments.items()
            },
            "channels": {f"{a}--{b}": change_as_json(c) for (a, b), c in self.channels.items()},
        }
