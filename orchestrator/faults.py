"""Faults a runtime injects into a running deployment: paused nodes, cut links, impaired interfaces.

A *cut* link drops every packet between its two nodes, in both directions, as a cut fibre (and
the classical channel beside it) would; the rest of the network keeps going and relays around it.
An *impairment* is netem on a node's network interface: delay, jitter and loss on everything it
sends. `set` replaces a node's impairments as a whole (containerlab's `tools netem set`), an
all-zero impairment is the same as `reset`.

The live state is read from the nodes themselves (routes and qdiscs in their containers); what was
asked for is also recorded in `<state dir>/faults.json`, so that a node that restarts (a fresh
network namespace) gets its cuts and impairments back, as a cut fibre would still be cut.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qkdnet.node.errors import ConfigError, QkdnetError
from qkdnet.node.file_modes import write_private

__all__ = [
    "FAULTS_FILE",
    "FaultRecord",
    "FaultReport",
    "FaultUnsupported",
    "Impairment",
    "link_pair",
    "netem_from_tc",
    "parse_duration_ms",
    "parse_percent",
]

FAULTS_FILE = "faults.json"


class FaultUnsupported(QkdnetError):
    """This runtime, or the machine under it, cannot inject that fault (the message says why)."""


def link_pair(a: str, b: str) -> tuple[str, str]:
    """The two ends of a link in a canonical order."""
    return (a, b) if a < b else (b, a)


@dataclass(frozen=True)
class Impairment:
    """netem on one interface: delay and jitter in milliseconds, loss in percent."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_percent: float = 0.0

    def __post_init__(self) -> None:
        for name in ("delay_ms", "jitter_ms"):
            value = getattr(self, name)
            if not 0 <= value <= 60_000:
                raise ConfigError(f"{name.removesuffix('_ms')}: must be 0..60 s, not {value:g} ms")
        if not 0 <= self.loss_percent <= 100:
            raise ConfigError(f"loss: must be 0..100 %, not {self.loss_percent:g} %")
        if self.jitter_ms and not self.delay_ms:
            raise ConfigError("jitter: needs a delay to vary around (--delay)")

    @property
    def is_none(self) -> bool:
        return not (self.delay_ms or self.jitter_ms or self.loss_percent)

    def tc_netem_args(self) -> list[str]:
        """The netem options of `tc qdisc replace ... netem`, e.g. delay 50ms 10ms loss 1%."""
        args: list[str] = []
        if self.delay_ms:
            args += ["delay", f"{self.delay_ms:g}ms"]
            if self.jitter_ms:
                args.append(f"{self.jitter_ms:g}ms")
        if self.loss_percent:
            args += ["loss", f"{self.loss_percent:g}%"]
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
        return ", ".join(parts)

    def as_json(self) -> dict[str, float]:
        return {
            "delay_ms": self.delay_ms,
            "jitter_ms": self.jitter_ms,
            "loss_percent": self.loss_percent,
        }

    @classmethod
    def from_json(cls, data: Any) -> Impairment:
        if not isinstance(data, dict):
            raise ValueError("an impairment is an object")
        return cls(
            float(data.get("delay_ms", 0)),
            float(data.get("jitter_ms", 0)),
            float(data.get("loss_percent", 0)),
        )


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
        return Impairment(
            delay_ms=round(float(delay.get("delay", 0)) * 1e3, 6),
            jitter_ms=round(float(delay.get("jitter", 0)) * 1e3, 6),
            loss_percent=round(float(loss.get("loss", 0)) * 100, 6),
        )
    return None


@dataclass
class FaultRecord:
    """The faults asked for, kept in the state directory to re-apply after a node restarts."""

    cuts: set[tuple[str, str]] = field(default_factory=set)
    impairments: dict[str, Impairment] = field(default_factory=dict)

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
        except (TypeError, ValueError, ConfigError) as exc:
            raise ConfigError(
                f"{path}: malformed ({exc}); remove it to forget the faults"
            ) from None
        return cls(cuts, impairments)

    def save(self, state_dir: Path) -> None:
        path = state_dir / FAULTS_FILE
        data = {
            "cuts": sorted(list(pair) for pair in self.cuts),
            "impairments": {n: i.as_json() for n, i in sorted(self.impairments.items())},
        }
        write_private(path, json.dumps(data, indent=2))

    def cuts_of(self, node: str) -> list[str]:
        """The peers `node` is cut off from."""
        return sorted(b if a == node else a for a, b in self.cuts if node in (a, b))


@dataclass(frozen=True)
class FaultReport:
    """The faults in force: paused nodes, cut links, impaired interfaces (by node)."""

    paused: list[str]
    cuts: list[tuple[str, str]]
    impairments: dict[str, Impairment]

    def as_json(self) -> dict[str, Any]:
        return {
            "paused": self.paused,
            "cuts": [list(pair) for pair in self.cuts],
            "impairments": {node: imp.as_json() for node, imp in self.impairments.items()},
        }
