"""The one exception tree of qkdnet.

    QkdnetError                  root: everything qkdnet raises on purpose derives from it
    ├── ConfigError              bad configuration or input file; names the file and the field
    ├── LinkError                a QKD link session or round could not go on
    │   ├── AuthenticationError  a classical message failed Wegman-Carter authentication
    │   ├── ProtocolError        a malformed, unexpected or out-of-order message
    │   └── RoundAborted         the round ended without key (QBER too high, verification, ...)
    ├── KeyStoreError            the key store refused an operation
    │   ├── KeyExhausted         not enough key for what was asked
    │   ├── KeyRejected          link key was refused by a check (a wrong relay tag)
    │   ├── FrameReplayed        a relay frame ID that was accepted before
    │   └── StoreUnavailable     the storage failed (disk full, locked, I/O): nothing changed
    └── RelayError               a key relay could not be completed (no route, a hop refused)

Messages never contain key material, pads or private keys.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "FrameReplayed",
    "KeyExhausted",
    "KeyRejected",
    "KeyStoreError",
    "LinkError",
    "ProtocolError",
    "QkdnetError",
    "Reason",
    "RelayError",
    "RoundAborted",
    "StoreUnavailable",
]


class Reason(StrEnum):
    """Why a link session, a round or a relay failed: the machine-readable code a `LinkError`
    or `RelayError` carries, counted in statistics and telemetry and sent across gRPC as the
    `reason` of a typed error detail (`qkdnet.node.edge.grpc_errors`)."""

    # A link session or its transport.
    LINK_ERROR = "link_error"
    CLOSED = "closed"
    TIMEOUT = "timeout"
    CUT = "cut"
    TRANSPORT = "transport"
    KEY_SOURCE = "key_source"  # the KME outside the deployment an external-KME link draws on
    # A classical message refused.
    BAD_TAG = "bad_tag"
    REPLAY = "replay"
    MALFORMED = "malformed"
    NO_PAD = "no_pad"
    # A round that ended without key.
    ABORTED = "aborted"
    QBER = "qber"
    TOO_FEW_BITS = "too_few_bits"
    NO_KEY = "no_key"
    VERIFICATION = "verification"
    # Relay and routing.
    RELAY_FAILED = "relay_failed"
    UNREACHABLE = "unreachable"
    UNKNOWN_ROUTE = "unknown_route"
    NO_ROUTE = "no_route"
    NO_DISJOINT_ROUTES = "no_disjoint_routes"
    SETTLE_FAILED = "settle_failed"
    VOID_FAILED = "void_failed"
    PEER_FAILED = "peer_failed"
    ADVERT_FAILED = "advert_failed"
    NOT_THE_ORIGIN = "not_the_origin"
    # Key streams (ETSI GS QKD 004) between two KMEs.
    KSID_IN_USE = "ksid_in_use"
    UNKNOWN_STREAM = "unknown_stream"
    # Hybrid keys (ML-KEM between two KMEs).
    UNKNOWN_KEM_KEY = "unknown_kem_key"
    NOT_REPLACED = "not_replaced"

    @classmethod
    def of(cls, code: str, default: Reason) -> Reason:
        """The reason `code` names, or `default` for a code this version does not know (from
        a peer of another version)."""
        try:
            return cls(code)
        except ValueError:
            return default


class QkdnetError(Exception):
    """Root of every error qkdnet raises on purpose."""


class ConfigError(QkdnetError):
    """A configuration or input file is wrong; the message names the file and the field."""


class LinkError(QkdnetError):
    """A link session or round cannot go on.

    `reason` is a short machine-readable code used for counters and telemetry.
    """

    reason: Reason = Reason.LINK_ERROR

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = Reason(reason)  # ValueError for a code that is not a Reason


class AuthenticationError(LinkError):
    """A classical message failed authentication (wrong tag, replayed, no pad left)."""

    reason = Reason.BAD_TAG


class ProtocolError(LinkError):
    """A classical message was malformed, truncated or out of order."""

    reason = Reason.MALFORMED


class RoundAborted(LinkError):
    """A round ended without distilling key; nothing from it is stored."""

    reason = Reason.ABORTED


class KeyStoreError(QkdnetError):
    """The key store refused an operation."""


class KeyExhausted(KeyStoreError):
    """The store holds less key than asked for."""


class KeyRejected(KeyStoreError):
    """Link key was read but refused by the caller's check; nothing was consumed."""


class FrameReplayed(KeyStoreError):
    """A relay frame ID that was accepted before; nothing was consumed."""


class StoreUnavailable(KeyStoreError):
    """The storage itself failed (disk full, database locked, I/O error); the transaction was
    rolled back, so nothing stored changed. Worth trying again later."""


class RelayError(QkdnetError):
    """A relay could not be completed. `reason` is a short code for counters and telemetry."""

    reason: Reason = Reason.RELAY_FAILED

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = Reason(reason)  # ValueError for a code that is not a Reason
