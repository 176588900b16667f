"""What the images are called and how the node image is laid out: tags, labels, the paths
and user the docker runtime relies on.
"""

from __future__ import annotations

import importlib.metadata

from ...plan.container_layout import (
    BROKER_PORT,
    NODE_CONFIG,
    NODE_CONFIG_DIR,
    NODE_STATE_DIR,
    NODE_UID,
)
from .events import Component

__all__ = [
    "BASE_IMAGE",
    "BROKER_PORT",
    "BROKER_REPOSITORY",
    "LABEL_COMPONENT",
    "LABEL_INPUT_HASH",
    "NODE_CONFIG",
    "NODE_CONFIG_DIR",
    "NODE_REPOSITORY",
    "NODE_STATE_DIR",
    "NODE_UID",
    "image_tags",
    "installed_version",
]

BASE_IMAGE = "qkdnet-base:bookworm"
NODE_REPOSITORY = "qkdnet-node"
BROKER_REPOSITORY = "qkdnet-broker"

LABEL_COMPONENT = "org.qkdnet.component"  # base, node or broker
LABEL_INPUT_HASH = "org.qkdnet.input-hash"
LABEL_VERSION = "org.qkdnet.version"
LABEL_BASE = "org.qkdnet.base-image"
LABEL_BASE_ID = "org.qkdnet.base-image-id"
LABEL_WHEELHOUSE = "org.qkdnet.wheelhouse"


def installed_version() -> str:
    """The version of the installed qkdnet package: the tag of the images it runs."""
    try:
        return importlib.metadata.version("qkdnet")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


def image_tags(version: str) -> dict[Component, str]:
    """The tags of the node and broker images of this version."""
    return {"node": f"{NODE_REPOSITORY}:{version}", "broker": f"{BROKER_REPOSITORY}:{version}"}
