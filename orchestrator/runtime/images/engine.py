"""The Docker engine: a client for it, or an error that says what to do, and the qkdnet
images it holds.
"""

from __future__ import annotations

import gc
import os
import warnings
from typing import Any

import docker
from docker.errors import DockerException, ImageNotFound

from .events import DockerUnavailable


def docker_client() -> docker.DockerClient:
    """A client of the local Docker engine; DockerUnavailable (exit 2) says what to do."""
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    reason = ""
    # A client that failed to connect leaves its socket to the garbage collector: no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=120)
            client.ping()
        except DockerException as exc:
            reason = _connection_failure(str(exc))
        gc.collect()
    if reason:
        raise DockerUnavailable(
            f"no Docker engine answers at {where} ({reason}); start the Docker daemon "
            "(e.g. systemctl start docker) or point DOCKER_HOST at one, as a user allowed to "
            "use it (root or the docker group)"
        )
    return client


def _connection_failure(message: str) -> str:
    """A short reason from the Docker SDK's (long, nested) connection error."""
    for pattern, reason in (
        ("FileNotFoundError", "no socket there"),
        ("Connection refused", "connection refused"),
        ("PermissionError", "permission denied on the socket"),
        ("Permission denied", "permission denied on the socket"),
        ("timed out", "timed out"),
        ("Name or service not known", "unknown host"),
    ):
        if pattern in message:
            return reason
    return message.split(": ", 1)[-1][:160]


def _image_or_none(client: docker.DockerClient, reference: str) -> Any:
    try:
        return client.images.get(reference)
    except ImageNotFound:
        return None
