"""An ETSI GS QKD 014 client: what an application (SAE) does to get keys from its node's KME.

`KeyApiClient` talks HTTPS with mutual TLS to one KME as one SAE (its client certificate's CN
is the SAE ID) and offers the three calls of the standard: `status`, `enc_keys` (the master's
call) and `dec_keys` (a slave's call). Every failure, whether an HTTP error with its Error body
or no answer at all, is raised as `KeyApiError`.

```python
async with KeyApiClient.for_sae(plan, "sae-a") as master:
    container = await master.enc_keys("sae-b", number=4, size=256)
```

`BlockingKeyApiClient` makes the same calls, with the same answers and errors, from code that
has no event loop (the CLI's `key get`): it speaks through the standard library's http.client,
so a one-shot command does not pay for importing aiohttp (about 0.2 s of CPU).
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
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from qkdnet.node.errors import ConfigError, QkdnetError

from ..plan.credentials import CertificatePaths
from ..plan.network_plan import KEY_API_PREFIX, NetworkPlan, NodePlan

if TYPE_CHECKING:
    import http.client

    import aiohttp

__all__ = [
    "API_PREFIX",
    "BlockingKeyApiClient",
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


@dataclass(frozen=True)
class _Call:
    """One call of the API: method, path below the prefix, JSON body; how to read the answer."""

    method: str
    path: str
    body: dict[str, Any] | None = None

    def url(self, base_url: str) -> str:
        return f"{base_url}{API_PREFIX}/{self.path}"


def _status_call(slave: str) -> _Call:
    return _Call("GET", f"{slave}/status")


def _enc_keys_call(
    slave: str,
    number: int,
    size: int,
    additional_slaves: Sequence[str],
    extension_mandatory: Iterable[dict[str, Any]] | None,
    extension_optional: Iterable[dict[str, Any]] | None,
) -> _Call:
    body: dict[str, Any] = {"number": number, "size": size}
    if additional_slaves:
        body["additional_slave_SAE_IDs"] = list(additional_slaves)
    if extension_mandatory is not None:
        body["extension_mandatory"] = list(extension_mandatory)
    if extension_optional is not None:
        body["extension_optional"] = list(extension_optional)
    return _Call("POST", f"{slave}/enc_keys", body)


def _dec_keys_call(master: str, key_ids: Iterable[str]) -> _Call:
    return _Call("POST", f"{master}/dec_keys", {"key_IDs": [{"key_ID": k} for k in key_ids]})


def _answer(url: str, status: int, text: str) -> Any:
    """The JSON of a 200 answer; KeyApiError with the Error body's message otherwise."""
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


def _status(url: str, answer: Any) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise KeyApiError(url, 200, "not a Status")
    return answer


def _credentials_for(plan: NetworkPlan, sae: str) -> tuple[str, CertificatePaths]:
    """(the KME's base URL, the SAE's credentials) for `sae` of a deployed topology.

    ConfigError when the topology has no such SAE or its credentials do not exist (the
    topology was never deployed)."""
    node = node_of_sae(plan, sae)
    credentials = sae_credentials(plan, sae)
    for path in (credentials.cert, credentials.key, credentials.ca):
        if not path.exists():
            raise ConfigError(
                f"{plan.name} is not deployed under {plan.state_dir}: no {path.name} for SAE {sae}"
            )
    if node.key_api_url is None:  # cannot happen: a node with SAEs serves the key API
        raise ConfigError(f"node {node.node_id} serves no key API")
    return node.key_api_url, credentials


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
        import aiohttp

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
        return cls(*_credentials_for(plan, sae), timeout=timeout)

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

    async def _call(self, call: _Call) -> Any:
        import aiohttp

        url = call.url(self.base_url)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.request(
                call.method, url, json=call.body, ssl=self._ssl
            ) as response:
                text = await response.text()
                status = response.status
        except TimeoutError as exc:  # before OSError, of which it is a subclass
            raise KeyApiError(url, None, "the KME did not answer in time") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise KeyApiError(url, None, f"cannot reach the KME: {exc}") from exc
        return _answer(url, status, text)

    async def status(self, slave: str) -> dict[str, Any]:
        """Get status (clause 5.1): the KME's figures for keys shared with `slave`."""
        call = _status_call(slave)
        return _status(call.url(self.base_url), await self._call(call))

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
        call = _enc_keys_call(
            slave, number, size, additional_slaves, extension_mandatory, extension_optional
        )
        return _decode(call.url(self.base_url), await self._call(call))

    async def dec_keys(self, master: str, key_ids: Iterable[str]) -> KeyContainer:
        """Get key with key IDs (clause 5.3, POST): the keys `master` was given with these IDs."""
        call = _dec_keys_call(master, key_ids)
        return _decode(call.url(self.base_url), await self._call(call))


class BlockingKeyApiClient:
    """`KeyApiClient`'s calls without an event loop (http.client, one kept-alive connection);
    use as a context manager."""

    def __init__(
        self, base_url: str, credentials: CertificatePaths, *, timeout: float = 30.0
    ) -> None:
        """`base_url` is the KME's https://host:port; `credentials` the SAE's certificate."""
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials
        self._ssl = client_ssl_context(credentials)
        self._timeout = timeout
        self._connection: http.client.HTTPSConnection | None = None

    @classmethod
    def for_sae(cls, plan: NetworkPlan, sae: str, *, timeout: float = 30.0) -> BlockingKeyApiClient:
        """A client for `sae` of a deployed topology (as `KeyApiClient.for_sae`)."""
        return cls(*_credentials_for(plan, sae), timeout=timeout)

    def __enter__(self) -> BlockingKeyApiClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (kept open between calls until then)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _call(self, call: _Call) -> Any:
        import http.client

        url = call.url(self.base_url)
        if self._connection is None:
            where = urlsplit(self.base_url)
            self._connection = http.client.HTTPSConnection(
                where.hostname or "", where.port, timeout=self._timeout, context=self._ssl
            )
        body = None if call.body is None else json.dumps(call.body).encode()
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            self._connection.request(call.method, urlsplit(url).path, body=body, headers=headers)
            response = self._connection.getresponse()
            text = response.read().decode("utf-8", errors="replace")
        except TimeoutError as exc:  # before OSError, of which it is a subclass
            self.close()
            raise KeyApiError(url, None, "the KME did not answer in time") from exc
        except (http.client.HTTPException, OSError) as exc:
            self.close()
            raise KeyApiError(url, None, f"cannot reach the KME: {exc}") from exc
        return _answer(url, response.status, text)

    def status(self, slave: str) -> dict[str, Any]:
        """Get status (clause 5.1): the KME's figures for keys shared with `slave`."""
        call = _status_call(slave)
        return _status(call.url(self.base_url), self._call(call))

    def enc_keys(
        self,
        slave: str,
        number: int,
        size: int,
        additional_slaves: Sequence[str] = (),
        extension_mandatory: Iterable[dict[str, Any]] | None = None,
        extension_optional: Iterable[dict[str, Any]] | None = None,
    ) -> KeyContainer:
        """Get key (clause 5.2, POST), as `KeyApiClient.enc_keys`."""
        call = _enc_keys_call(
            slave, number, size, additional_slaves, extension_mandatory, extension_optional
        )
        return _decode(call.url(self.base_url), self._call(call))

    def dec_keys(self, master: str, key_ids: Iterable[str]) -> KeyContainer:
        """Get key with key IDs (clause 5.3, POST), as `KeyApiClient.dec_keys`."""
        call = _dec_keys_call(master, key_ids)
        return _decode(call.url(self.base_url), self._call(call))
