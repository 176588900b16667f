"""An ETSI GS QKD 014 client: what an SAE does to get keys from a KME, over HTTPS with mutual TLS.

`Etsi014Client` talks to one KME as one SAE (its client certificate names the SAE) and offers
the three calls of the standard: `status`, `enc_keys` (the master's call) and `dec_keys` (a
slave's call). Every failure, whether an HTTP error with its Error body or no answer at all, is
raised as `KeyApiError`. The node uses it where a link's key comes from a KME outside the
deployment (the external-KME link kind); the orchestrator's clients (`key get`, the demos)
build on the same calls and answers.
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from qkdnet.node.errors import QkdnetError

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "API_PREFIX",
    "Call",
    "DeliveredKey",
    "Etsi014Client",
    "KeyApiError",
    "KeyContainer",
    "SaeCredentials",
    "client_ssl_context",
    "dec_keys_call",
    "decode_container",
    "enc_keys_call",
    "read_answer",
    "read_status",
    "status_call",
]

API_PREFIX = "/api/v1/keys"  # ETSI GS QKD 014's path prefix of the key delivery API


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


class SaeCredentials(Protocol):
    """An SAE's client certificate and key, and the CA its KME's certificate is checked by."""

    @property
    def ca(self) -> Path: ...
    @property
    def cert(self) -> Path: ...
    @property
    def key(self) -> Path: ...


def client_ssl_context(credentials: SaeCredentials) -> ssl.SSLContext:
    """Verify the KME against the CA; present the SAE's client certificate."""
    context = ssl.create_default_context(cafile=str(credentials.ca))
    context.load_cert_chain(str(credentials.cert), str(credentials.key))
    return context


def decode_container(url: str, body: Any) -> KeyContainer:
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
class Call:
    """One call of the API: method, path below the prefix, JSON body; how to read the answer."""

    method: str
    path: str
    body: dict[str, Any] | None = None

    def url(self, base_url: str) -> str:
        return f"{base_url}{API_PREFIX}/{self.path}"


def status_call(slave: str) -> Call:
    return Call("GET", f"{slave}/status")


def enc_keys_call(
    slave: str,
    number: int,
    size: int,
    additional_slaves: Sequence[str],
    extension_mandatory: Iterable[dict[str, Any]] | None,
    extension_optional: Iterable[dict[str, Any]] | None,
) -> Call:
    body: dict[str, Any] = {"number": number, "size": size}
    if additional_slaves:
        body["additional_slave_SAE_IDs"] = list(additional_slaves)
    if extension_mandatory is not None:
        body["extension_mandatory"] = list(extension_mandatory)
    if extension_optional is not None:
        body["extension_optional"] = list(extension_optional)
    return Call("POST", f"{slave}/enc_keys", body)


def dec_keys_call(master: str, key_ids: Iterable[str]) -> Call:
    return Call("POST", f"{master}/dec_keys", {"key_IDs": [{"key_ID": k} for k in key_ids]})


def read_answer(url: str, status: int, text: str) -> Any:
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


def read_status(url: str, answer: Any) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise KeyApiError(url, 200, "not a Status")
    return answer


class Etsi014Client:
    """One SAE talking to one KME's ETSI GS QKD 014 API; use as an async context manager."""

    def __init__(
        self,
        base_url: str,
        credentials: SaeCredentials,
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

    async def __aenter__(self) -> Etsi014Client:
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

    async def _call(self, call: Call) -> Any:
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
        return read_answer(url, status, text)

    async def status(self, slave: str) -> dict[str, Any]:
        """Get status (clause 5.1): the KME's figures for keys shared with `slave`."""
        call = status_call(slave)
        return read_status(call.url(self.base_url), await self._call(call))

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
        call = enc_keys_call(
            slave, number, size, additional_slaves, extension_mandatory, extension_optional
        )
        return decode_container(call.url(self.base_url), await self._call(call))

    async def dec_keys(self, master: str, key_ids: Iterable[str]) -> KeyContainer:
        """Get key with key IDs (clause 5.3, POST): the keys `master` was given with these IDs."""
        call = dec_keys_call(master, key_ids)
        return decode_container(call.url(self.base_url), await self._call(call))
