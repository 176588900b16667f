"""The qkdnet images a Docker engine holds, and whether a build now would reuse each."""

from __future__ import annotations

import contextlib
from typing import Any

import docker

from qkdnet.node.errors import QkdnetError

from .builder import ImageBuilder
from .engine import _image_or_none
from .layout import LABEL_BASE, LABEL_BASE_ID, LABEL_COMPONENT, LABEL_INPUT_HASH, LABEL_VERSION
from .sources import SourceTree

__all__ = ["list_images"]


def list_images(client: docker.DockerClient) -> list[dict[str, Any]]:
    """Every qkdnet image on the engine (base, node, broker), with its labels, ID and size.

    `current` is True or False for node and broker images when a checkout is at hand (whether
    a build now would reuse it), None otherwise.
    """
    expected: dict[str, str] = {}
    with contextlib.suppress(QkdnetError, OSError):
        source = SourceTree.find()
        builder = ImageBuilder(source, client)
        for base in {
            image.labels.get(LABEL_BASE)
            for image in client.images.list(filters={"label": LABEL_COMPONENT})
            if image.labels.get(LABEL_BASE)
        }:
            found = _image_or_none(client, base)
            if found is not None:
                expected[f"node {found.id}"] = builder.node_input_hash(found.id)
                expected[f"broker {found.id}"] = builder.broker_input_hash(found.id)
    rows = []
    for image in client.images.list(filters={"label": LABEL_COMPONENT}):
        labels = image.labels
        component = labels.get(LABEL_COMPONENT, "")
        want = expected.get(f"{component} {labels.get(LABEL_BASE_ID)}")
        rows.append(
            {
                "tags": list(image.tags),
                "component": component,
                "id": image.id,
                "size_bytes": image.attrs.get("Size"),
                "created": image.attrs.get("Created", ""),
                "version": labels.get(LABEL_VERSION),
                "base": labels.get(LABEL_BASE),
                "input_hash": labels.get(LABEL_INPUT_HASH),
                "current": None if want is None else want == labels.get(LABEL_INPUT_HASH),
            }
        )
    order = {"base": 0, "node": 1, "broker": 2}
    rows.sort(key=lambda row: (order.get(row["component"], 3), row["tags"], row["created"]))
    return rows
