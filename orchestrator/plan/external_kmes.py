"""Where an external-KME link's end finds its KME: its URL and the SAE's credentials.

A topology gives them outright (`url`, `ca`, `cert`, `key`) or names a qkdnet deployment on this
machine (`qkdnet: NAME`) whose KME serves the end's SAE: that deployment's record says which
node serves the SAE (its ETSI 014 URL) and where its PKI keeps the SAE's certificate. The lookup
happens when the link is deployed, so the topology validates before that deployment exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qkdnet.node.errors import ConfigError

__all__ = ["KmeEnd", "resolve_end"]


@dataclass(frozen=True)
class KmeEnd:
    """An end's KME and its credentials there."""

    url: str
    ca: Path
    cert: Path
    key: Path


def resolve_end(end: Any, where: str) -> KmeEnd:
    """`end` (a topology's `ExternalKmeEnd`, or its JSON) as a URL and files; ConfigError
    naming `where` when it names a deployment that is not deployed here or has no such SAE."""
    data = end if isinstance(end, dict) else end.model_dump()
    name = data.get("qkdnet")
    if name is None:
        return KmeEnd(str(data["url"]), Path(data["ca"]), Path(data["cert"]), Path(data["key"]))
    from .network_plan import NetworkPlan
    from .registry import Registry

    entry = Registry().get(name)
    plan = NetworkPlan.load(entry.state_dir) if entry is not None else None
    if plan is None:
        raise ConfigError(
            f"{where}: its KME is qkdnet deployment {name!r}, which is not deployed on this "
            f"machine: deploy it first"
        )
    sae = str(data["sae_id"])
    try:
        node = plan.node_of_sae(sae)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    assert node.key_api_url is not None  # a node with SAEs serves ETSI 014
    paths = plan.sae_credentials(sae)
    return KmeEnd(node.key_api_url, paths.ca, paths.cert, paths.key)
