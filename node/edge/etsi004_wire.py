"""The binary framing of ETSI GS QKD 004 as QUBIP's implementation carries it (and the UC3M C
wrapper through it): both directions, for the node's server and for clients.

Every message is an 8-byte header (version 1.0.1 as three bytes, the service type as a signed
byte, the payload length as a big-endian uint32) and its payload; integers are big-endian.

| service | payload |
|---|---|
| 0x02 OPEN_CONNECT | source URI NUL, destination URI NUL, QoS (284 bytes), KSID (16) |
| 0x03 its answer | status uint32; with 0, 1 or 7: QoS, KSID |
| 0x04 GET_KEY | KSID, index uint32, metadata buffer size uint32 |
| 0x05 its answer | status; with 0: index, chunk size, key, metadata size, metadata; |
| | with 8: the metadata size needed |
| 0x08 CLOSE | KSID |
| 0x09 its answer | status |

The QoS block is seven uint32 (chunk size, Max_bps, Min_bps, jitter, priority, timeout, TTL)
and the metadata mimetype NUL-padded to 256 bytes. QUBIP's server sends QoS and KSID with 0
and 7 only; a qkdnet KME also sends them with 1, which is when a stream's KSID is allocated.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from enum import IntEnum

from ..protocol.key_stream_messages import StreamQos, StreamStatus

__all__ = [
    "HEADER",
    "MAX_REQUEST_BYTES",
    "CloseRequest",
    "GetKeyAnswer",
    "GetKeyRequest",
    "OpenAnswer",
    "OpenRequest",
    "Service",
    "WireError",
    "decode_close_answer",
    "decode_close_request",
    "decode_get_key_answer",
    "decode_get_key_request",
    "decode_header",
    "decode_open_answer",
    "decode_open_request",
    "encode_close_answer",
    "encode_close_request",
    "encode_get_key_answer",
    "encode_get_key_request",
    "encode_open_answer",
    "encode_open_request",
    "frame",
]

VERSION = (1, 0, 1)
HEADER = struct.Struct("!BBBbI")
_QOS = struct.Struct("!7I")
_MIMETYPE_BYTES = 256
QOS_BYTES = _QOS.size + _MIMETYPE_BYTES
_U32 = struct.Struct("!I")
# No request is longer than two URIs and a QoS block; URIs are capped at 1 KiB each.
MAX_REQUEST_BYTES = 2 * 1024 + 2 + QOS_BYTES + 16


class WireError(ValueError):
    """Bytes that are not a 004 message (what is wrong, for the log)."""


class Service(IntEnum):
    OPEN_CONNECT = 0x02
    OPEN_CONNECT_ANSWER = 0x03
    GET_KEY = 0x04
    GET_KEY_ANSWER = 0x05
    CLOSE = 0x08
    CLOSE_ANSWER = 0x09


def frame(service: Service, payload: bytes) -> bytes:
    """`payload` behind its header."""
    return HEADER.pack(*VERSION, service, len(payload)) + payload


def decode_header(data: bytes) -> tuple[Service, int]:
    """(service, payload length) of an 8-byte header."""
    major, _minor, _patch, service, length = HEADER.unpack(data)
    if major != VERSION[0]:
        raise WireError(f"version {major}.x (this KME speaks {VERSION[0]}.x)")
    try:
        return Service(service), length
    except ValueError:
        raise WireError(f"unknown service type {service}") from None


def _encode_qos(qos: StreamQos) -> bytes:
    mimetype = qos.metadata_mimetype.encode()
    if len(mimetype) >= _MIMETYPE_BYTES:
        raise WireError("the metadata mimetype is longer than 255 bytes")
    fields = (
        qos.key_chunk_size,
        qos.max_bps,
        qos.min_bps,
        qos.jitter,
        qos.priority,
        qos.timeout,
        qos.ttl,
    )
    if not all(0 <= value < 1 << 32 for value in fields):
        raise WireError("a QoS field is not a uint32")
    return _QOS.pack(*fields) + mimetype.ljust(_MIMETYPE_BYTES, b"\0")


def _decode_qos(data: bytes) -> StreamQos:
    if len(data) != QOS_BYTES:
        raise WireError(f"a QoS block is {QOS_BYTES} bytes, not {len(data)}")
    chunk, max_bps, min_bps, jitter, priority, timeout, ttl = _QOS.unpack_from(data)
    mimetype = data[_QOS.size :].split(b"\0", 1)[0]
    try:
        text = mimetype.decode()
    except UnicodeDecodeError:
        raise WireError("the metadata mimetype is not UTF-8") from None
    return StreamQos(chunk, max_bps, min_bps, jitter, priority, timeout, ttl, text)


def _ksid(data: bytes) -> uuid.UUID:
    if len(data) != 16:
        raise WireError(f"a Key_stream_ID is 16 bytes, not {len(data)}")
    return uuid.UUID(bytes=data)


@dataclass(frozen=True)
class OpenRequest:
    source: str
    destination: str
    qos: StreamQos
    ksid: uuid.UUID  # all zeros: the KME allocates one


def encode_open_request(request: OpenRequest) -> bytes:
    payload = (
        request.source.encode()
        + b"\0"
        + request.destination.encode()
        + b"\0"
        + _encode_qos(request.qos)
        + request.ksid.bytes
    )
    return frame(Service.OPEN_CONNECT, payload)


def decode_open_request(payload: bytes) -> OpenRequest:
    first = payload.find(b"\0")
    second = payload.find(b"\0", first + 1) if first >= 0 else -1
    if second < 0:
        raise WireError("OPEN_CONNECT: the source and destination URIs must end with NUL")
    rest = payload[second + 1 :]
    if len(rest) != QOS_BYTES + 16:
        raise WireError(f"OPEN_CONNECT: {len(rest)} bytes after the URIs, not {QOS_BYTES + 16}")
    try:
        source, destination = payload[:first].decode(), payload[first + 1 : second].decode()
    except UnicodeDecodeError:
        raise WireError("OPEN_CONNECT: a URI is not UTF-8") from None
    return OpenRequest(source, destination, _decode_qos(rest[:QOS_BYTES]), _ksid(rest[QOS_BYTES:]))


@dataclass(frozen=True)
class OpenAnswer:
    status: StreamStatus
    qos: StreamQos | None = None
    ksid: uuid.UUID | None = None


_WITH_QOS = (StreamStatus.SUCCESS, StreamStatus.PEER_NOT_CONNECTED, StreamStatus.QOS_NOT_MET)


def encode_open_answer(answer: OpenAnswer) -> bytes:
    payload = _U32.pack(answer.status)
    if answer.status in _WITH_QOS and answer.qos is not None:
        payload += _encode_qos(answer.qos) + (answer.ksid or uuid.UUID(int=0)).bytes
    return frame(Service.OPEN_CONNECT_ANSWER, payload)


def decode_open_answer(payload: bytes) -> OpenAnswer:
    status = _status(payload)
    if len(payload) == 4:
        return OpenAnswer(status)
    if len(payload) != 4 + QOS_BYTES + 16:
        raise WireError(f"OPEN_CONNECT answer of {len(payload)} bytes")
    ksid = _ksid(payload[4 + QOS_BYTES :])
    return OpenAnswer(status, _decode_qos(payload[4 : 4 + QOS_BYTES]), ksid if ksid.int else None)


def _status(payload: bytes) -> StreamStatus:
    if len(payload) < 4:
        raise WireError("an answer starts with a 4-byte status")
    code = _U32.unpack_from(payload)[0]
    try:
        return StreamStatus(code)
    except ValueError:
        raise WireError(f"unknown status {code}") from None


@dataclass(frozen=True)
class GetKeyRequest:
    ksid: uuid.UUID
    index: int
    metadata_size: int


def encode_get_key_request(request: GetKeyRequest) -> bytes:
    payload = request.ksid.bytes + struct.pack("!II", request.index, request.metadata_size)
    return frame(Service.GET_KEY, payload)


def decode_get_key_request(payload: bytes) -> GetKeyRequest:
    if len(payload) != 24:
        raise WireError(f"GET_KEY: {len(payload)} bytes, not 24")
    index, metadata_size = struct.unpack_from("!II", payload, 16)
    return GetKeyRequest(_ksid(payload[:16]), index, metadata_size)


@dataclass(frozen=True)
class GetKeyAnswer:
    status: StreamStatus
    index: int = 0
    key: bytes = b""
    metadata: bytes = b""
    metadata_size: int = 0  # with 8: the size the metadata needs


def encode_get_key_answer(answer: GetKeyAnswer) -> bytes:
    payload = _U32.pack(answer.status)
    if answer.status is StreamStatus.SUCCESS:
        payload += struct.pack("!II", answer.index, len(answer.key)) + answer.key
        payload += _U32.pack(len(answer.metadata)) + answer.metadata
    elif answer.status is StreamStatus.METADATA_TOO_SMALL:
        payload += _U32.pack(answer.metadata_size)
    return frame(Service.GET_KEY_ANSWER, payload)


def decode_get_key_answer(payload: bytes) -> GetKeyAnswer:
    status = _status(payload)
    if status is StreamStatus.METADATA_TOO_SMALL:
        if len(payload) != 8:
            raise WireError("a status 8 answer carries the metadata size needed")
        return GetKeyAnswer(status, metadata_size=_U32.unpack_from(payload, 4)[0])
    if status is not StreamStatus.SUCCESS:
        return GetKeyAnswer(status)
    if len(payload) < 12:
        raise WireError("GET_KEY answer too short")
    index, size = struct.unpack_from("!II", payload, 4)
    key = payload[12 : 12 + size]
    rest = payload[12 + size :]
    if len(key) != size or len(rest) < 4:
        raise WireError("GET_KEY answer shorter than its key")
    metadata_size = _U32.unpack_from(rest)[0]
    metadata = rest[4:]
    if len(metadata) != metadata_size:
        raise WireError("GET_KEY answer: metadata of the wrong size")
    return GetKeyAnswer(status, index, key, metadata, metadata_size)


@dataclass(frozen=True)
class CloseRequest:
    ksid: uuid.UUID


def encode_close_request(request: CloseRequest) -> bytes:
    return frame(Service.CLOSE, request.ksid.bytes)


def decode_close_request(payload: bytes) -> CloseRequest:
    return CloseRequest(_ksid(payload))


def encode_close_answer(status: StreamStatus) -> bytes:
    return frame(Service.CLOSE_ANSWER, _U32.pack(status))


def decode_close_answer(payload: bytes) -> StreamStatus:
    if len(payload) != 4:
        raise WireError(f"CLOSE answer of {len(payload)} bytes")
    return _status(payload)
