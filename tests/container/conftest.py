"""Fixtures of the container tests: a Docker engine, and the images built once per session.

Every test here is skipped, with the reason, when no Docker engine answers. The first build on a
machine makes the base image with debootstrap (as root) and the wheelhouse: minutes, once; later
sessions find everything up to date.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from qkdnet.orchestrator.images import (
    BaseImageUnavailable,
    DockerUnavailable,
    ImageBuilder,
    ImageResult,
    SourceTree,
    docker_client,
)

TEST_LABEL = "org.qkdnet.test"  # on every container and volume a test makes


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    """A client of the local Docker engine; skips the test when none answers."""
    try:
        client = docker_client()
    except DockerUnavailable as exc:
        pytest.skip(str(exc))
    yield client
    for container in client.containers.list(all=True, filters={"label": TEST_LABEL}):
        container.remove(force=True)
    for volume in client.volumes.list(filters={"label": TEST_LABEL}):
        volume.remove(force=True)
    client.close()


@pytest.fixture(scope="session")
def source_tree() -> SourceTree:
    return SourceTree.find()


@pytest.fixture(scope="session")
def built_images(docker_engine: Any, source_tree: SourceTree) -> dict[str, ImageResult]:
    """Build (or find up to date) base, wheelhouse, node and broker images, once."""
    try:
        results = ImageBuilder(source_tree, docker_engine).build()
    except BaseImageUnavailable as exc:  # e.g. not root: debootstrap cannot run
        pytest.skip(f"{exc}; make it once with: sudo deploy/make-base-image.sh")
    return {result.component: result for result in results}
