"""An ETSI GS QKD 014 client: what an application (SAE) does to get keys from its node's KME.

`KeyApiClient` talks HTTPS with mutual TLS to one KME as one SAE (its client certificate's CN
is the SAE ID) and offers the three calls of the standard: `status`, `enc_keys` (the master's
call) and `dec_keys` (a slave's call). Every failure, whether an HTTP error with its Error body
or no answer at all, is raised as `KeyApiError`.

```python
async with KeyApiClient.for_sae(plan, "sae-a") as master:
    container = await master.enc_keys("sae-b", number=4, size=256)
```
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp

from qkdnet.node.errors import ConfigError, QkdnetError

from .network_plan import KEY_API_PREFIX, NetworkPlan, NodePlan
from .pki import CertificatePaths

__all__ = [
    "API_PREFIX",
    "DeliveredKey",
    "KeyApiClient",
    "KeyApiError",
    "KeyContainer",
    "fingerprint",
    "node_of_sae",
    "sae_credentials",
]

API_PREFIX = KEY_API_PREFIX


class KeyApiError(QkdnetError):
    """A KME call failed: `status` is the HTTP status (None when no answer came at all) and
    `message` the Error body's message (or what went wrong on the way)."""

    def __init__(
        self, url: str, status: int | None, message: str, details: list[Any] | None = None
    ) -> None:
        self.url = url
        self.status = status
        self.message = message
        self.details = details or []
        where = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(f"{where} from {url}: {message}")


@dataclass(frozen=True)
class DeliveredKey:
    """One key of a Key container: its ID and the key itself (kept out of `repr`)."""

    key_id: str
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class KeyContainer:
    """The Key container of ETSI GS QKD 014 clause 6.3."""

    keys: list[DeliveredKey]
    extension: dict[str, Any] | None = None  # key_container_extension, when the KME sent one


def fingerprint(key: bytes, length: int = 16) -> str:
    """A short SHA-256 fingerprint of a key: safe to show, says nothing useful about the key."""
    return hashlib.sha256(key).hexdigest()[:length]


def node_of_sae(plan: NetworkPlan, sae: str) -> NodePlan:
    """The node serving `sae` (ConfigError naming the SAE and the known ones otherwise)."""
    return plan.node_of_sae(sae)


def sae_credentials(plan: NetworkPlan, sae: str) -> CertificatePaths:
    """Where the deployment's PKI keeps the client certificate of `sae` (see `provision_pki`)."""
    return plan.sae_credentials(sae)


def client_ssl_context(credentials: CertificatePaths) -> ssl.SSLContext:
    """Verify the KME against the deployment's CA; present the SAE's client certificate."""
    context = ssl.create_default_context(cafile=str(credentials.ca))
    context.load_cert_chain(str(credentials.cert), str(credentials.key))
    return context


def _decode(url: str, body: Any) -> KeyContainer:
    if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
        raise KeyApiError(url, 200, "the answer is not a Key container")
    keys = []
    for entry in body["keys"]:
        try:
            keys.append(DeliveredKey(str(entry["key_ID"]), base64.b64decode(entry["key"])))
        except (KeyError, TypeError, binascii.Error):
            raise KeyApiError(url, 200, "a key of the Key container is malformed") from None
    extension = body.get("key_container_extension")
    return KeyContainer(keys, extension if isinstance(extension, dict) else None)


class KeyApiClient:
    """One SAE talking to one KME's ETSI GS QKD 014 API; use as an async context manager."""

    def __init__(
        self,
        base_url: str,
        credentials: CertificatePaths,
        *,
        timeout: float = 30.0,
    ) -> None:
        """`base_url` is the KME's https://host:port; `credentials` the SAE's certificate."""
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials
        self._ssl = client_ssl_context(credentials)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def for_sae(cls, plan: NetworkPlan, sae: str, *, timeout: float = 30.0) -> KeyApiClient:
        """A client for `sae` of a deployed topology, at the node that serves it.

        ConfigError when the topology has no such SAE or its credentials do not exist (the
        topology was never deployed).
        """
        node = node_of_sae(plan, sae)
        credentials = sae_credentials(plan, sae)
        for path in (credentials.cert, credentials.key, credentials.ca):
            if not path.exists():
                raise ConfigError(
                    f"{plan.name} is not deployed under {plan.state_dir}: no {path.name} for "
                    f"SAE {sae}"
                )
        if node.key_api_url is None:  # cannot happen: a node with SAEs serves the key API
            raise ConfigError(f"node {node.node_id} serves no key API")
        return cls(node.key_api_url, credentials, timeout=timeout)

    async def __aenter__(self) -> KeyApiClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session (connections are kept open between calls until then)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"{self.base_url}{API_PREFIX}/{path}"
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.request(method, url, json=body, ssl=self._ssl) as response:
                text = await response.text()
                status = response.status
        except TimeoutError as exc:  # before OSError, of which it is a subclass
            raise KeyApiError(url, None, "the KME did not answer in time") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise KeyApiError(url, None, f"cannot reach the KME: {exc}") from exc
        try:
            answer = json.loads(text) if text.strip() else None
        except ValueError:
            answer = None
        if status != 200:
            message = answer.get("message") if isinstance(answer, dict) else None
            details = answer.get("details") if isinstance(answer, dict) else None
            raise KeyApiError(
                url,
                status,
                str(message) if message else (text.strip()[:200] or "no Error body"),
                details if isinstance(details, list) else None,
            )
        if answer is None:
            raise KeyApiError(url, status, "the answer is not JSON")
        return answer

    async def status(self, slave: str) -> dict[str, Any]:
        """Get status (clause 5.1): the KME's figures for keys shared with `slave`."""
        answer = await self._call("GET", f"{slave}/status")
        if not isinstance(answer, dict):
            raise KeyApiError(f"{self.base_url}{API_PREFIX}/{slave}/status", 200, "not a Status")
        return answer

    async def enc_keys(
        self,
        slave: str,
        number: int,
        size: int,
        additional_slaves: Sequence[str] = (),
        extension_mandatory: Iterable[dict[str, Any]] | None = None,
        extension_optional: Iterable[dict[str, Any]] | None = None,
    ) -> KeyContainer:
        """Get key (clause 5.2, POST): `number` new keys of `size` bits shared with `slave`
        (and every SAE of `additional_slaves`)."""
        body: dict[str, Any] = {"number": number, "size": size}
        if additional_slaves:
            body["additional_slave_SAE_IDs"] = list(additional_slaves)
        if extension_mandatory is not None:
            body["extension_mandatory"] = list(extension_mandatory)
        if extension_optional is not None:
            body["extension_optional"] = list(extension_optional)
        answer = await self._call("POST", f"{slave}/enc_keys", body)
        return _decode(f"{self.base_url}{API_PREFIX}/{slave}/enc_keys", answer)

    async def dec_keys(self, master: str, key_ids: Iterable[str]) -> KeyContainer:
        """Get key with key IDs (clause 5.3, POST): the keys `master` was given with these IDs."""
        body = {"key_IDs": [{"key_ID": key_id} for key_id in key_ids]}
        answer = await self._call("POST", f"{master}/dec_keys", body)
        return _decode(f"{self.base_url}{API_PREFIX}/{master}/dec_keys", answer)
