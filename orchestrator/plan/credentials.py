"""Where a party's credentials are: its certificate, private key and the CA certificate.

A name for three paths, kept apart from the PKI that makes them (pki.py, which needs the
cryptography package) so that a verb that only hands paths to TLS does not import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["CertificatePaths"]


@dataclass(frozen=True)
class CertificatePaths:
    """Where a certificate, its key and the CA certificate are."""

    cert: Path
    key: Path
    ca: Path
