"""Container images of qkdnet, built without a registry: `qkdnet image build` and `image list`.

What `build` makes, in this order, each reused when it is already there:

0. a wheel of the checkout, first whenever the node image is to be built: pip builds it with
   build isolation, so with the build requirements pyproject's `[build-system]` declares, not
   with whatever setuptools the caller's environment holds; seconds, and what fails for a reason
   in the checkout or the environment fails before the long steps below start;
1. the base image: `qkdnet-base:bookworm` by default, a minimal Debian made with debootstrap from
   a package mirror and imported with `docker import` (deploy/make-base-image.sh), made when it
   is missing or was made with another package list than the script's; or any image named
   with `--base` (`python:3.11-slim` for users with a registry);
2. the wheelhouse: wheels of qkdnet's runtime dependencies - pyproject's `[project].dependencies`
   and their transitive closure at the versions requirements.lock pins; dev-only tools (mypy,
   ruff, pytest, grpcio-tools, ...) stay out - cached in `build/images/wheelhouse/<key>`, where
   the key hashes the lock, the dependencies and the interpreter;
3. `qkdnet-node:<version>` (deploy/node.Dockerfile) from the wheelhouse and a wheel of the
   checkout, built with network mode "none": nothing in the build uses the network;
4. `qkdnet-broker:<version>` (deploy/broker.Dockerfile): Mosquitto.

Every image built here carries the label `org.qkdnet.input-hash`, a hash of all it is made of
(its Dockerfile and files, the project's sources, the pinned dependencies, the base image's ID);
when the inputs hash to the label of the image already tagged, the build is skipped ("up to
date"). A docker build that fails or is interrupted removes the images its steps made, so
nothing dangles. The builder never prints: it reports `ImageEvent`s to a callback;
`qkdnet.orchestrator.cli.image_view` draws them for the CLI.

The layout of the node image, which the docker runtime relies on, is in the constants below:
the runtime starts `qkdnet node --config /etc/qkdnet/node.yaml` (the image's default command)
with the configuration and PKI mounted read-only on /etc/qkdnet and the node's state directory
on /var/lib/qkdnet; the node runs as uid 10001.
"""

from .builder import ImageBuilder
from .engine import docker_client
from .events import (
    BaseImageUnavailable,
    DockerUnavailable,
    ImageBuildError,
    ImageEvent,
    ImageResult,
)
from .layout import (
    BASE_IMAGE,
    BROKER_PORT,
    BROKER_REPOSITORY,
    LABEL_COMPONENT,
    LABEL_INPUT_HASH,
    NODE_CONFIG,
    NODE_CONFIG_DIR,
    NODE_REPOSITORY,
    NODE_STATE_DIR,
    NODE_UID,
    image_tags,
    installed_version,
)
from .listing import list_images
from .sources import SourceTree
from .wheelhouse import resolve_runtime_closure

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
    "BaseImageUnavailable",
    "DockerUnavailable",
    "ImageBuildError",
    "ImageBuilder",
    "ImageEvent",
    "ImageResult",
    "SourceTree",
    "docker_client",
    "image_tags",
    "installed_version",
    "list_images",
    "resolve_runtime_closure",
]
