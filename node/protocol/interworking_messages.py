"""What two Key Management Systems of different domains say to each other (ETSI GS QKD 020).

Domain types of the KMS-to-KMS interoperability API, V1.1.1: a transfer of keys to the peer
domain (`ext_keys`), an acknowledgement (`ext_keys/ack`), a void (`ext_keys/void`), and the
refusal every one of them may end in (a problem-details answer). The JSON of the standard is
written and read by `qkdnet.node.edge.etsi020`; nothing here knows HTTP.

Key IDs are UUIDs in their lower-case 8-4-4-4-12 form (`key_id` in 020, `key_ID` in 014).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..errors import QkdnetError

__all__ = [
    "PROBLEM_TYPE_PREFIX",
    "Ack",
    "AckStatus",
    "ExtKey",
    "InterworkingRefusal",
    "KeyTransfer",
    "VoidRequest",
]

PROBLEM_TYPE_PREFIX = "https://qkd.etsi.org/gs020-interop-kms/"


class AckStatus(StrEnum):
    """`ack_status`: what became of a group of keys (exact strings, spaces included)."""

    RELAYED = "relayed"  # delivered to the KMEs of every target SAE
    FAILED = "failed"  # the relay could not finish; nothing is kept
    VOIDED = "voided"  # discarded; will never reach an SAE
    FAILED_TO_VOID = "failed to void"  # e.g. a KME offline, or already handed to an SAE
    KEY_NOT_PRESENT = "key not present"  # unknown key IDs


@dataclass(frozen=True)
class ExtKey:
    """One key of a transfer: its ID and value (`extension`: passed on unchanged)."""

    key_id: str
    value: bytes = field(repr=False)
    extension: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class KeyTransfer:
    """`ext_key_container`: keys the initiator SAE has (or will have), for every target SAE.

    Without `callback_url` the transfer is synchronous: the receiver answers with the acks.
    """

    keys: tuple[ExtKey, ...]
    initiator: str
    targets: tuple[str, ...]
    callback_url: str | None = None
    extension_mandatory: Mapping[str, Any] | None = None
    extension_optional: Mapping[str, Any] | None = None

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(key.key_id for key in self.keys)


@dataclass(frozen=True)
class Ack:
    """`ack_container`: one status for a group of keys of one initiator and its targets."""

    key_ids: tuple[str, ...]
    status: AckStatus
    initiator: str
    targets: tuple[str, ...]
    message: str = ""


@dataclass(frozen=True)
class VoidRequest:
    """`void_container`: discard these keys (all between the SAEs: empty `key_ids` and
    `all_confirmation`)."""

    key_ids: tuple[str, ...]
    initiator: str
    targets: tuple[str, ...]
    callback_url: str | None = None
    all_confirmation: bool = False


class InterworkingRefusal(QkdnetError):
    """A 020 request refused, as the standard's problem details say it.

    `status` 400 and 401 are promises: the refusing KMS kept no association for any key of the
    request. Anything else (408, 503, no answer) leaves the caller unsure whether the keys went
    on, so it must retry or void them.
    """

    def __init__(self, status: int, problem: str, detail: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem  # the `type` suffix: key-routing-error, ...
        self.detail = detail  # the `details` entry: no_known_route, ...
        self.message = message

    @property
    def nothing_kept(self) -> bool:
        """Whether the refusal promises that no key of the request went on."""
        return self.status in (400, 401)

    @property
    def type_uri(self) -> str:
        return PROBLEM_TYPE_PREFIX + self.problem
