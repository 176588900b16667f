"""The node image's Python environment, copied once into a named volume the nodes mount.

Where the engine stores image layers through fuse-overlayfs (rootless engines, engines inside
VMs without overlay support), every file a container reads goes through a user-space daemon,
and no two containers share page cache: each node process spent about 3.5 s importing its
modules, 30 nodes starting at once kept two cores busy for a minute. A named volume lives on
the host's own file system: the same imports take half as long, and the containers share one
page cache for the environment.

`qkdnet image build` makes the volume right after the node image (`ensure_venv_volume`),
named and labelled after the image's ID; those of earlier images go when no container uses
them. The docker runtime mounts it read-only over the image's own copy when there is one for
the image it runs (`venv_volume_for`), and otherwise runs the image as it is. Deployments never
create or remove it: it belongs to the image, as its cache.
"""

from __future__ import annotations

import contextlib
from typing import Any

from docker.errors import APIError, NotFound

from qkdnet.node.errors import QkdnetError

__all__ = ["LABEL_IMAGE_ID", "VENV_DIR", "ensure_venv_volume", "venv_volume_for", "venv_volumes"]

VENV_DIR = "/opt/qkdnet"  # the node image's virtual environment (node.Dockerfile)
LABEL_IMAGE_ID = "org.qkdnet.image-id"
_LABEL_COMPONENT = "org.qkdnet.component"
_COMPONENT = "node-venv"


def _name(image: Any) -> str:
    return "qkdnet-venv-" + str(image.id).removeprefix("sha256:")[:12]


def venv_volumes(client: Any) -> dict[str, str]:
    """Every node environment volume on the engine: name -> ID of the image it was made from."""
    return {
        str(volume.name): str((volume.attrs.get("Labels") or {}).get(LABEL_IMAGE_ID, ""))
        for volume in client.volumes.list(filters={"label": f"{_LABEL_COMPONENT}={_COMPONENT}"})
    }


def venv_volume_for(client: Any, image: Any) -> str | None:
    """The name of the volume holding `image`'s environment, if one was made from it."""
    try:
        volume = client.volumes.get(_name(image))
    except NotFound:
        return None
    labels = volume.attrs.get("Labels") or {}
    return str(volume.name) if labels.get(LABEL_IMAGE_ID) == image.id else None


def ensure_venv_volume(client: Any, image: Any) -> tuple[str, bool]:
    """Make the volume of `image`'s environment unless it exists: its name, and whether it was
    made now.

    The volumes of earlier node images go, except those containers still use.
    """
    name = _name(image)
    if venv_volume_for(client, image) == name:
        return name, False
    for old in client.volumes.list(filters={"label": f"{_LABEL_COMPONENT}={_COMPONENT}"}):
        with contextlib.suppress(APIError):
            old.remove()
    volume = client.volumes.create(
        name, labels={_LABEL_COMPONENT: _COMPONENT, LABEL_IMAGE_ID: image.id}
    )
    try:
        # An empty named volume mounted over a directory of the image is filled with that
        # directory's content by the engine, once, when a container is created with it.
        container = client.containers.create(
            image.id,
            entrypoint=["/bin/true"],
            command=[],
            volumes={name: {"bind": VENV_DIR, "mode": "rw"}},
            labels={_LABEL_COMPONENT: _COMPONENT},
        )
        container.remove()
    except APIError as exc:
        with contextlib.suppress(APIError):
            volume.remove(force=True)
        raise QkdnetError(
            f"cannot fill volume {name} from {image.id[:19]}: {exc.explanation or exc}"
        ) from None
    return name, True
