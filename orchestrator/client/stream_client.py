"""ETSI GS QKD 004 clients for the SAEs of a deployment: the node's `KeyStreamClient` with the
address of the SAE's node and the SAE's client certificate."""

from __future__ import annotations

from qkdnet.node.edge.etsi004_client import KeyStreamClient
from qkdnet.node.edge.etsi014_client import client_ssl_context
from qkdnet.node.errors import ConfigError

from ..plan.network_plan import NetworkPlan

__all__ = ["stream_client_for"]


def stream_client_for(plan: NetworkPlan, sae: str, timeout_s: float = 90.0) -> KeyStreamClient:
    """A 004 client as `sae` to its node (ConfigError for an unknown or undeployed SAE)."""
    node = plan.node_of_sae(sae)
    credentials = plan.sae_credentials(sae)
    for path in (credentials.cert, credentials.key, credentials.ca):
        if not path.exists():
            raise ConfigError(
                f"{plan.name} is not deployed under {plan.state_dir}: no {path.name} for SAE {sae}"
            )
    address = node.stream_api_address
    if address is None:  # cannot happen: a node with SAEs serves the stream API
        raise ConfigError(f"node {node.node_id} serves no key streams")
    host, _, port = address.rpartition(":")
    return KeyStreamClient(host, int(port), client_ssl_context(credentials), timeout_s)
