"""Dialling a node: the one recipe for a mutual-TLS gRPC channel, for nodes and orchestrator.

Every channel to a node presents a certificate of the deployment's CA, checks the node's
certificate against that CA and against the node's name (its certificate names the node as a
DNS name, whatever address it is dialled at), and uses the settings of `grpc_options`.

```python
channel = dial("127.1.0.2:50051", "r1", credentials_from_files(ca, cert, key))
```
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from .grpc_options import CHANNEL_OPTIONS

__all__ = ["channel_options", "credentials", "credentials_from_files", "dial", "dial_blocking"]


def credentials(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> grpc.ChannelCredentials:
    """Client credentials: present `cert_pem` (with its key), trust `ca_pem` only."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )


def credentials_from_files(ca: Path, cert: Path, key: Path) -> grpc.ChannelCredentials:
    """`credentials` read from PEM files."""
    return credentials(ca.read_bytes(), cert.read_bytes(), key.read_bytes())


def channel_options(peer: str) -> list[tuple[str, Any]]:
    """The deployment's channel settings, with `peer`'s name as the name its certificate
    must carry."""
    return [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", peer)]


def dial(
    address: str,
    peer: str,
    creds: grpc.ChannelCredentials,
    *,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to node `peer` at `address` (host:port)."""
    return grpc.aio.secure_channel(address, creds, channel_options(peer), interceptors=interceptors)


def dial_blocking(address: str, peer: str, creds: grpc.ChannelCredentials) -> grpc.Channel:
    """A blocking channel to node `peer` at `address`, for code without an event loop."""
    return grpc.secure_channel(address, creds, channel_options(peer))
