"""The edge adapter of the pqc-bridge link kind: its messages over the link codec.

`PQC_BRIDGE` is the kind (the `pqc-bridge` entry point of `qkdnet.link_kinds`): the ends of
`protocol/pqc_bridge_link.py`, whose `KemOffer`, `KemCapsule` and `KemCommit` travel as the
messages of the same name in `link.proto`. It needs no port of its own: ML-KEM is computed in
the node (`core/pqc_kem.py`) and everything crosses the link's authenticated channel.
"""

from __future__ import annotations

from ..link_kinds import LinkKind
from ..protocol.pqc_bridge_link import PqcBridgeReceiver, PqcBridgeTransmitter
from .link_codec import LINK_CODEC

__all__ = ["PQC_BRIDGE"]

PQC_BRIDGE = LinkKind("pqc-bridge", PqcBridgeTransmitter, PqcBridgeReceiver, LINK_CODEC)
"""Key from ML-KEM-768 exchanges, no quantum channel: the `pqc-bridge` entry point."""
