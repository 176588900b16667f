"""Link kinds: which protocol a link speaks, found by name.

A link kind is a pair of protocol classes — a `SessionTransmitter` and a `SessionReceiver`
(`protocol/link.py`), which bring the kind's rounds — and the `MessageCodec` that puts their
messages on the wire (its edge adapter). The agent builds every link from the kind its
configuration names (`links[].kind`, `bb84` by default) and runs it over the same ports as
any other: the classical stream and the quantum channel of `link_transport`, the key store,
the authentication, the relay and the APIs above it stay as they are.

Kinds are found through the `qkdnet.link_kinds` entry points of the installed distributions
(the decoy-state BB84 of qkdnet itself is one: `bb84`), so a new kind ships as a protocol
module, an edge adapter and one entry point, and touches nothing else; `register` adds one at
run time (tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import LinkConfig
    from .protocol.link import SessionReceiver, SessionTransmitter
    from .protocol.link_messages import MessageCodec

__all__ = ["ENTRY_POINT_GROUP", "LinkKind", "available", "find", "register"]

ENTRY_POINT_GROUP = "qkdnet.link_kinds"


@dataclass(frozen=True)
class LinkKind:
    """A kind: its two ends, its codec, and (`ports`) the edge adapters its ends take beyond
    the common ones, made from the link's configuration (keyword arguments of both ends)."""

    name: str
    transmitter: type[SessionTransmitter]
    receiver: type[SessionReceiver]
    codec: MessageCodec
    ports: Callable[[LinkConfig], dict[str, Any]] | None = None


_registered: dict[str, LinkKind] = {}


def register(kind: LinkKind) -> None:
    """Make `kind` available by its name in this process."""
    _registered[kind.name] = kind


def available() -> list[str]:
    """The names of every kind: registered here or installed (without importing them)."""
    return sorted({*_registered, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})


def find(name: str, where: str = "kind") -> LinkKind:
    """The kind called `name`; ConfigError naming `where` when there is none."""
    kind = _registered.get(name)
    if kind is not None:
        return kind
    for point in entry_points(group=ENTRY_POINT_GROUP, name=name):
        loaded = point.load()
        if not isinstance(loaded, LinkKind):
            raise ConfigError(f"{where}: entry point {point.value} is not a LinkKind")
        _registered[name] = loaded
        return loaded
    raise ConfigError(f"{where}: no link kind {name!r} (have: {', '.join(available())})")
