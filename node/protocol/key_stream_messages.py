"""Key streams (ETSI GS QKD 004) as the protocols see them: statuses, QoS, what two KMEs say.

An application opens a stream (`OPEN_CONNECT`) towards a peer application at its own KME; the
stream is named by a Key_stream_ID (KSID, a UUID). The KME of the first application to open it
is the stream's *origin*: it tells the KME of the other application (`StreamPeers.announce`),
makes the stream's key chunks and relays them there (`key_streams.py`). The wire bindings
(`qkdnet.node.edge.etsi004`) map these onto bytes.

The status numbers are those of ETSI GS QKD 004 V2.1.1 as its public implementations carry
them (the UC3M C wrapper's `api.h`, QUBIP's server): never extended on the wire.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Protocol

__all__ = [
    "METADATA_MIMETYPE",
    "StreamAnnouncement",
    "StreamPeers",
    "StreamQos",
    "StreamStatus",
    "chunk_id",
]

METADATA_MIMETYPE = "application/json"


class StreamStatus(IntEnum):
    """The status of an ETSI GS QKD 004 call."""

    SUCCESS = 0
    PEER_NOT_CONNECTED = 1  # OPEN_CONNECT: opened; the peer application has not yet
    INSUFFICIENT_KEY = 2  # GET_KEY: that chunk is not there at the stream's rate
    NOT_CONNECTED = 3  # GET_KEY/CLOSE: no such open stream of the caller, or no peer yet
    NO_QKD_CONNECTION = 4  # OPEN_CONNECT: no route to the peer's KME, unknown destination
    KSID_IN_USE = 5  # OPEN_CONNECT: the KSID is taken (or was, and was closed)
    TIMEOUT = 6  # the call's Timeout elapsed
    QOS_NOT_MET = 7  # OPEN_CONNECT: refused; the QoS returned is what could be granted
    METADATA_TOO_SMALL = 8  # GET_KEY: the metadata buffer is smaller than the metadata


@dataclass(frozen=True, slots=True)
class StreamQos:
    """The QoS of a stream, as ETSI GS QKD 004 sizes it: chunks in bytes, rates in bit/s,
    timeout in milliseconds, time to live in seconds."""

    key_chunk_size: int = 32
    max_bps: int = 8192
    min_bps: int = 0
    jitter: int = 0
    priority: int = 0
    timeout: int = 5000
    ttl: int = 3600
    metadata_mimetype: str = METADATA_MIMETYPE

    @property
    def chunk_bits(self) -> int:
        return 8 * self.key_chunk_size

    def but(self, **changes: int | str) -> StreamQos:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class StreamAnnouncement:
    """What a stream's origin KME tells the KME of the peer application."""

    ksid: uuid.UUID
    origin: str  # the origin's node
    source: str  # the SAE that opened the stream (at the origin)
    destination: str  # the peer SAE (at the receiving node)
    qos: StreamQos
    hops: int  # links the stream's key crosses


def chunk_id(ksid: uuid.UUID, index: int) -> str:
    """The key ID under which chunk `index` of stream `ksid` is relayed (the same at both
    ends, so no table of IDs has to travel)."""
    return str(uuid.uuid5(ksid, str(index)))


class StreamPeers(Protocol):
    """What the KME of one end of a stream says to the KME of the other (by node ID). Every
    failure, a refusal as much as no answer, is a `RelayError`."""

    async def announce(self, node: str, announcement: StreamAnnouncement) -> None:
        """A new stream towards an SAE of `node`; refused (reason `ksid_in_use`) when `node`
        knows that KSID already."""
        ...

    async def connected(self, node: str, ksid: uuid.UUID) -> None:
        """The peer application opened the stream: both ends are connected."""
        ...

    async def progress(self, node: str, ksid: uuid.UUID, chunks: int) -> None:
        """Chunks 0 .. `chunks` - 1 of the stream are committed at `node`."""
        ...

    async def requalified(self, node: str, announcement: StreamAnnouncement) -> None:
        """The stream's origin changed its QoS (`announcement.qos`)."""
        ...

    async def closed(self, node: str, ksid: uuid.UUID, reason: str) -> None:
        """The stream ended at this end (closed by its application, or its time to live)."""
        ...
