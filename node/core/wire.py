"""Bulk arrays on the wire: packed bits and slot deltas, decoded with strict length checks.

Every decoder takes the element count the message claims and refuses bytes that do not match,
so a truncated or garbled message becomes a ProtocolError instead of a numpy exception.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ..errors import ProtocolError

__all__ = [
    "decode_bits",
    "decode_classes",
    "decode_slots",
    "encode_bits",
    "encode_slots",
]

_MAX_DELTA = np.iinfo(np.uint32).max


def encode_bits(bits: NDArray[np.uint8]) -> bytes:
    """0/1 uint8 array -> np.packbits bytes (big-endian bit order)."""
    return np.packbits(bits).tobytes()


def decode_bits(data: bytes, count: int, what: str) -> NDArray[np.uint8]:
    """Packed bytes -> `count` 0/1 values; ProtocolError when the size does not match."""
    if len(data) != (count + 7) // 8:
        raise ProtocolError(f"{what}: {len(data)} bytes cannot hold exactly {count} bits")
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count)


def decode_classes(data: bytes, count: int) -> NDArray[np.uint8]:
    """One uint8 intensity class (0, 1 or 2) per detection."""
    if len(data) != count:
        raise ProtocolError(f"intensity classes: {len(data)} bytes for {count} detections")
    classes = np.frombuffer(data, dtype=np.uint8)
    if classes.size and int(classes.max()) > 2:
        raise ProtocolError("intensity classes: unknown class")
    return classes


def encode_slots(slots: NDArray[np.uint64], first_slot: int) -> bytes:
    """Sorted detected slots -> uint32 little-endian deltas (the first from `first_slot`)."""
    if slots.size == 0:
        return b""
    deltas = np.diff(slots, prepend=np.uint64(first_slot))
    if int(deltas.max()) > _MAX_DELTA:
        raise ValueError("gap between detections exceeds 2^32 slots; use shorter chunks")
    return deltas.astype("<u4").tobytes()


def decode_slots(data: bytes, count: int, first_slot: int) -> NDArray[np.uint64]:
    """Inverse of encode_slots; ProtocolError on a size mismatch or non-increasing slots."""
    if len(data) != 4 * count:
        raise ProtocolError(f"slot deltas: {len(data)} bytes for {count} detections")
    deltas = np.frombuffer(data, dtype="<u4").astype(np.uint64)
    if count > 1 and not bool(np.all(deltas[1:] > 0)):
        raise ProtocolError("slot deltas: detected slots are not strictly increasing")
    return np.cumsum(deltas, dtype=np.uint64) + np.uint64(first_slot)
