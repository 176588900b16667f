"""The edge adapter of the external-KME link kind: its key source speaks ETSI GS QKD 014.

`Etsi014KeySource` is this end of the link as an SAE of its KME (the `external_kme` section of
the link's configuration): enc_keys for the peer's SAE at the transmitter, dec_keys at the
receiver, over HTTPS with mutual TLS. `EXTERNAL_KME` is the kind (the `external-kme` entry
point of `qkdnet.link_kinds`): the ends of `protocol/external_kme_link.py` over the link
codec, each given its key source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..config import ExternalKmeConfig, LinkConfig
from ..errors import ConfigError
from ..link_kinds import LinkKind
from ..protocol.external_kme_link import (
    ExternalKmeReceiver,
    ExternalKmeTransmitter,
    KeySourceError,
)
from .etsi014_client import Etsi014Client, KeyApiError, KeyContainer
from .link_codec import LINK_CODEC

__all__ = ["EXTERNAL_KME", "Etsi014KeySource"]


class Etsi014KeySource:
    """One end of an external-KME link as an SAE of its KME."""

    def __init__(self, settings: ExternalKmeConfig, *, timeout: float = 10.0) -> None:
        self._settings = settings
        self._timeout = timeout
        self._client: Etsi014Client | None = None

    @property
    def description(self) -> str:
        return f"external KME {self._settings.url} (as SAE {self._settings.sae_id})"

    def _kme(self) -> Etsi014Client:
        if self._client is None:  # credentials read at first use: a missing file is a fault
            try:
                self._client = Etsi014Client(
                    self._settings.url, self._settings, timeout=self._timeout
                )
            except OSError as exc:
                raise KeySourceError(f"cannot load the SAE credentials: {exc}") from None
        return self._client

    @staticmethod
    def _pairs(container: KeyContainer) -> list[tuple[str, bytes]]:
        return [(key.key_id, key.key) for key in container.keys]

    async def enc_keys(self, number: int, size: int) -> list[tuple[str, bytes]]:
        try:
            container = await self._kme().enc_keys(self._settings.peer_sae_id, number, size)
        except KeyApiError as exc:
            raise KeySourceError(f"enc_keys at the external KME: {exc}") from None
        return self._pairs(container)

    async def dec_keys(self, key_ids: Sequence[str]) -> list[tuple[str, bytes]]:
        try:
            container = await self._kme().dec_keys(self._settings.peer_sae_id, key_ids)
        except KeyApiError as exc:
            raise KeySourceError(f"dec_keys at the external KME: {exc}") from None
        return self._pairs(container)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _ports(config: LinkConfig) -> dict[str, Any]:
    if config.external_kme is None:
        raise ConfigError(f"link to {config.peer}: kind external-kme needs external_kme")
    return {"key_source": Etsi014KeySource(config.external_kme)}


EXTERNAL_KME = LinkKind(
    "external-kme", ExternalKmeTransmitter, ExternalKmeReceiver, LINK_CODEC, ports=_ports
)
"""Key from a pair of ETSI GS QKD 014 KMEs outside the deployment: the `external-kme` entry
point of `qkdnet.link_kinds`."""
