"""Where a node's files are inside its container, and the ports it serves there: the node
image's layout, which the plan writes into node configurations and the docker runtime and the
Compose export mount and publish."""

from __future__ import annotations

__all__ = ["BROKER_PORT", "NODE_CONFIG", "NODE_CONFIG_DIR", "NODE_STATE_DIR", "NODE_UID"]

NODE_CONFIG_DIR = "/etc/qkdnet"  # node.yaml and the PKI, mounted read-only
NODE_CONFIG = f"{NODE_CONFIG_DIR}/node.yaml"
NODE_STATE_DIR = "/var/lib/qkdnet"  # the node's state_dir: key stores (a named volume)
NODE_UID = 10001  # the node's user; the mounted PKI must be readable by it
BROKER_PORT = 1883  # MQTT over TLS, inside the deployment's network
