"""An ETSI GS QKD 014 client: what an application (SAE) does to get keys from its node's KME.

`KeyApiClient` talks HTTPS with mutual TLS to one KME as one SAE (its client certificate's CN
is the SAE ID) and offers the three calls of the standard: `status`, `enc_keys` (the master's
call) and `dec_keys` (a slave's call). Every failure, whether an HTTP error with its Error body
or no answer at all, is raised as `KeyApiError`. It is the node's own client
(`qkdnet.node.edge.etsi014_client`, which external-KME links use) with `for_sae`: the KME and
credentials of an SAE of a deployment.

```python
async with KeyApiClient.for_sae(plan, "sae-a") as master:
    container = await master.enc_keys("sae-b", number=4, size=256)
```

`BlockingKeyApiClient` makes the same calls, with the same answers and errors, from code that
has no event loop (the CLI's `key get`): it speaks through the standard library's http.client,
so a one-shot command does not pay for importing aiohttp (about 0.2 s of CPU).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from qkdnet.node.edge.etsi014_client import (
    API_PREFIX,
    Call,
    DeliveredKey,
    Etsi014Client,
    KeyApiError,
    KeyContainer,
    client_ssl_context,
    dec_keys_call,
    decode_container,
    enc_keys_call,
    read_answer,
    read_status,
    status_call,
)
from qkdnet.node.errors import ConfigError

from ..plan.credentials import CertificatePaths
from ..plan.network_plan import NetworkPlan, NodePlan

if TYPE_CHECKING:
    import http.client


__all__ = [
    "API_PREFIX",
    "BlockingKeyApiClient",
    "Call",
    "DeliveredKey",
    "KeyApiClient",
    "KeyApiError",
    "KeyContainer",
    "fingerprint",
    "node_of_sae",
    "sae_credentials",
]


def fingerprint(key: bytes, length: int = 16) -> str:
    """A short SHA-256 fingerprint of a key: safe to show, says nothing useful about the key."""
    return hashlib.sha256(key).hexdigest()[:length]


def node_of_sae(plan: NetworkPlan, sae: str) -> NodePlan:
    """The node serving `sae` (ConfigError naming the SAE and the known ones otherwise)."""
    return plan.node_of_sae(sae)


def sae_credentials(plan: NetworkPlan, sae: str) -> CertificatePaths:
    """Where the deployment's PKI keeps the client certificate of `sae` (see `provision_pki`)."""
    return plan.sae_credentials(sae)


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


class KeyApiClient(Etsi014Client):
    """One SAE of a deployment talking to its KME; use as an async context manager."""

    @classmethod
    def for_sae(cls, plan: NetworkPlan, sae: str, *, timeout: float = 30.0) -> KeyApiClient:
        """A client for `sae` of a deployed topology, at the node that serves it.

        ConfigError when the topology has no such SAE or its credentials do not exist (the
        topology was never deployed).
        """
        return cls(*_credentials_for(plan, sae), timeout=timeout)

    async def __aenter__(self) -> KeyApiClient:
        return self


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

    def _call(self, call: Call) -> Any:
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
        return read_answer(url, response.status, text)

    def status(self, slave: str) -> dict[str, Any]:
        """Get status (clause 5.1): the KME's figures for keys shared with `slave`."""
        call = status_call(slave)
        return read_status(call.url(self.base_url), self._call(call))

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
        call = enc_keys_call(
            slave, number, size, additional_slaves, extension_mandatory, extension_optional
        )
        return decode_container(call.url(self.base_url), self._call(call))

    def dec_keys(self, master: str, key_ids: Iterable[str]) -> KeyContainer:
        """Get key with key IDs (clause 5.3, POST), as `KeyApiClient.dec_keys`."""
        call = dec_keys_call(master, key_ids)
        return decode_container(call.url(self.base_url), self._call(call))
