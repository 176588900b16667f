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
    "RelayError",
    "RoundAborted",
    "StoreUnavailable",
]


class QkdnetError(Exception):
    """Root of every error qkdnet raises on purpose."""


class ConfigError(QkdnetError):
    """A configuration or input file is wrong; the message names the file and the field."""


class LinkError(QkdnetError):
    """A link session or round cannot go on.

    `reason` is a short machine-readable code used for counters and telemetry.
    """

    reason = "link_error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class AuthenticationError(LinkError):
    """A classical message failed authentication (wrong tag, replayed, no pad left)."""

    reason = "bad_tag"


class ProtocolError(LinkError):
    """A classical message was malformed, truncated or out of order."""

    reason = "malformed"


class RoundAborted(LinkError):
    """A round ended without distilling key; nothing from it is stored."""

    reason = "aborted"


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

    reason = "relay_failed"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
