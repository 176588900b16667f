"""What an image build reports: events as it goes, a result per component, and its errors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from qkdnet.node.errors import ConfigError, QkdnetError

Component = Literal["project", "base", "wheelhouse", "node", "broker", "venv"]
Status = Literal["built", "up to date"]
EventKind = Literal["start", "progress", "log", "done"]


class ImageBuildError(QkdnetError):
    """A step of an image build failed; the message names the step and the log to read."""


class DockerUnavailable(ConfigError):
    """No Docker engine answers (a user error: exit status 2, with what to do)."""


class BaseImageUnavailable(ConfigError):
    """The base image is missing and cannot be made here (not root, no apt-get): exit 2."""


@dataclass(frozen=True)
class ImageEvent:
    """Progress of one component: "start", "progress" (a step, maybe `completed` of `total`),
    "log" (one line of output), "done" (with its `result`).

    `milestone` marks a progress event worth a line of its own when the output is not a
    terminal (as are those with a `total`); the others only update a live display.
    """

    component: Component
    kind: EventKind
    detail: str = ""
    completed: int | None = None
    total: int | None = None
    result: ImageResult | None = None
    milestone: bool = False


@dataclass(frozen=True)
class ImageResult:
    """What became of one component: an image (with ID and size) or the wheelhouse."""

    component: Component
    reference: str
    status: Status
    seconds: float
    image_id: str | None = None
    size_bytes: int | None = None
    detail: str = ""


EventSink = Callable[[ImageEvent], None]
