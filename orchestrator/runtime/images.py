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
`run_image_build` and `run_image_list` draw them for the CLI.

The layout of the node image, which the docker runtime relies on, is in the constants below:
the runtime starts `qkdnet node --config /etc/qkdnet/node.yaml` (the image's default command)
with the configuration and PKI mounted read-only on /etc/qkdnet and the node's state directory
on /var/lib/qkdnet; the node runs as uid 10001.
"""

from __future__ import annotations

import contextlib
import email.parser
import gc
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import docker
from docker.errors import APIError, DockerException, ImageNotFound
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from qkdnet.node.errors import ConfigError, QkdnetError

from .venv_volume import VENV_DIR, ensure_venv_volume, venv_volume_for, venv_volumes

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
    "run_image_build",
    "run_image_list",
]

BASE_IMAGE = "qkdnet-base:bookworm"
NODE_REPOSITORY = "qkdnet-node"
BROKER_REPOSITORY = "qkdnet-broker"
NODE_CONFIG_DIR = "/etc/qkdnet"  # node.yaml and the PKI, mounted read-only
NODE_CONFIG = f"{NODE_CONFIG_DIR}/node.yaml"
NODE_STATE_DIR = "/var/lib/qkdnet"  # the node's state_dir: key stores (a named volume)
NODE_UID = 10001  # the node's user; the mounted PKI must be readable by it
BROKER_PORT = 1883

LABEL_COMPONENT = "org.qkdnet.component"  # base, node or broker
LABEL_INPUT_HASH = "org.qkdnet.input-hash"
LABEL_VERSION = "org.qkdnet.version"
LABEL_BASE = "org.qkdnet.base-image"
LABEL_BASE_ID = "org.qkdnet.base-image-id"
LABEL_WHEELHOUSE = "org.qkdnet.wheelhouse"

_FORMAT = "1"  # part of every input hash: bump it when the way images are assembled changes
_CACHE = Path("build") / "images"  # under the checkout; build/ is ignored by git
_BASE_SCRIPT = Path("deploy") / "make-base-image.sh"
_NODE_DOCKERFILE = Path("deploy") / "node.Dockerfile"
_BASE_STEPS = (
    "check environment",
    "install debootstrap",
    "debootstrap",
    "trim",
    "import",
    "verify",
)
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_LAYER = re.compile(r"^ ---> ([0-9a-f]{12})$")
_INCLUDE = re.compile(r"^INCLUDE=(\S+)$", re.MULTILINE)  # make-base-image.sh's package list
_LABEL_BASE_INCLUDE = "org.qkdnet.base.include"  # the list a base image was made with
_BUILD_TIMEOUT = 3600  # seconds the engine may stay silent during a build step

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


# -- the checkout ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceTree:
    """A qkdnet checkout: what the node image is built from."""

    root: Path
    version: str
    dependencies: tuple[str, ...]
    readme: str | None
    package_dirs: tuple[tuple[str, Path], ...]  # (package, directory relative to root)
    package_data: tuple[tuple[str, tuple[str, ...]], ...]
    build_requires: tuple[str, ...] = ()  # [build-system] requires: what builds its wheel

    @classmethod
    def find(cls, start: Path | None = None) -> SourceTree:
        """The checkout this module belongs to, else the one holding `start` (default: cwd)."""
        here = Path(__file__).resolve().parent.parent
        candidates = [here]
        origin = (start or Path.cwd()).resolve()
        candidates += [origin, *origin.parents]
        for root in candidates:
            if (root / "pyproject.toml").is_file() and (root / _NODE_DOCKERFILE).is_file():
                return cls.load(root)
        raise ConfigError(
            "qkdnet image build needs a qkdnet checkout (pyproject.toml and deploy/): "
            "run it from the repository"
        )

    @classmethod
    def load(cls, root: Path) -> SourceTree:
        """Read the project's metadata from `root`/pyproject.toml."""
        path = root / "pyproject.toml"
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            project = data["project"]
            setuptools = data.get("tool", {}).get("setuptools", {})
            package_dir: dict[str, str] = setuptools.get("package-dir", {})
            packages: list[str] = setuptools.get("packages", list(package_dir))
            data_patterns: dict[str, list[str]] = setuptools.get("package-data", {})
            build_requires: list[str] = data.get("build-system", {}).get("requires", [])
        except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
            raise ConfigError(f"{path}: cannot read the project's metadata ({exc})") from None
        readme = project.get("readme")
        if isinstance(readme, dict):
            readme = readme.get("file")
        return cls(
            root=root,
            version=str(project["version"]),
            dependencies=tuple(project.get("dependencies", [])),
            readme=readme if isinstance(readme, str) else None,
            package_dirs=tuple((name, _package_directory(name, package_dir)) for name in packages),
            package_data=tuple((name, tuple(p)) for name, p in data_patterns.items()),
            build_requires=tuple(build_requires),
        )

    @property
    def cache_dir(self) -> Path:
        return self.root / _CACHE

    @property
    def lock_path(self) -> Path:
        return self.root / "requirements.lock"

    @property
    def deploy_dir(self) -> Path:
        return self.root / "deploy"

    def project_files(self) -> list[Path]:
        """Every file the project's wheel is made of, relative to the root: pyproject.toml, the
        readme, each package's modules and package data (what setuptools puts in the wheel)."""
        files = {Path("pyproject.toml")}
        if self.readme:
            files.add(Path(self.readme))
        patterns = dict(self.package_data)
        for package, directory in self.package_dirs:
            for pattern in ("*.py", *patterns.get(package, ())):
                for path in (self.root / directory).glob(pattern):
                    if path.is_file():
                        files.add(path.relative_to(self.root))
        return sorted(files)

    def wheelhouse_dir(self) -> Path:
        """Where the wheelhouse of the current lock is cached."""
        return self.cache_dir / "wheelhouse" / self.wheelhouse_key()

    def wheelhouse_key(self) -> str:
        """The wheelhouse's cache key: the lock, the direct dependencies, the interpreter."""
        try:
            lock = self.lock_path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{self.lock_path}: cannot read ({exc.strerror})") from None
        digest = hashlib.sha256()
        for part in (
            _FORMAT.encode(),
            lock,
            "\n".join(self.dependencies).encode(),
            sys.implementation.cache_tag.encode(),
            sysconfig.get_platform().encode(),
        ):
            digest.update(hashlib.sha256(part).digest())
        return digest.hexdigest()[:16]


def _package_directory(package: str, package_dir: dict[str, str]) -> Path:
    """Where setuptools finds `package`, relative to the root: its own `package-dir` entry, else
    the directory of its nearest mapped parent with the rest of its name below it (as
    `qkdnet.node.core` is node/core), else its name as a path."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        mapped = package_dir.get(".".join(parts[:cut]))
        if mapped is not None:
            return Path(mapped, *parts[cut:])
    return Path(package_dir.get("", ""), *parts)


def _hash_files(digest: Any, root: Path, files: Iterable[Path]) -> None:
    for relative in files:
        digest.update(str(relative).encode() + b"\0")
        digest.update(hashlib.sha256((root / relative).read_bytes()).digest())


def installed_version() -> str:
    """The version of the installed qkdnet package: the tag of the images it runs."""
    try:
        return importlib.metadata.version("qkdnet")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


def image_tags(version: str) -> dict[Component, str]:
    """The tags of the node and broker images of this version."""
    return {"node": f"{NODE_REPOSITORY}:{version}", "broker": f"{BROKER_REPOSITORY}:{version}"}


# -- Docker ------------------------------------------------------------------------------------


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


# -- the builder -------------------------------------------------------------------------------


class ImageBuilder:
    """Builds what is missing or stale of base, wheelhouse, node and broker images.

    `force` rebuilds the wheelhouse and both images without the Docker layer cache (not the
    base image: `deploy/make-base-image.sh --force` remakes that).
    """

    def __init__(
        self,
        source: SourceTree,
        client: docker.DockerClient,
        *,
        base: str = BASE_IMAGE,
        force: bool = False,
        on_event: EventSink | None = None,
    ) -> None:
        self.source = source
        self.client = client
        self.base = base
        self.force = force
        self._on_event = on_event
        self.tags = image_tags(source.version)
        self.log_dir = source.cache_dir / "logs"

    def _emit(self, component: Component, kind: EventKind, detail: str = "", **extra: Any) -> None:
        if self._on_event is not None:
            self._on_event(ImageEvent(component, kind, detail, **extra))

    def _done(self, result: ImageResult) -> ImageResult:
        self._emit(result.component, "done", result.status, result=result)
        return result

    # -- input hashes --------------------------------------------------------------------------

    def node_input_hash(self, base_id: str) -> str:
        """Everything the node image is made of: Dockerfile, sources, dependencies, base."""
        digest = hashlib.sha256(f"{_FORMAT}\0node\0{self.source.version}\0{base_id}\0".encode())
        digest.update(self.source.wheelhouse_key().encode() + b"\0")
        _hash_files(digest, self.source.root, [Path("deploy/node.Dockerfile")])
        _hash_files(digest, self.source.root, self.source.project_files())
        return digest.hexdigest()

    def broker_input_hash(self, base_id: str) -> str:
        """Everything the broker image is made of: Dockerfile, Mosquitto's config, base."""
        digest = hashlib.sha256(f"{_FORMAT}\0broker\0{self.source.version}\0{base_id}\0".encode())
        files = [Path("deploy/broker.Dockerfile"), Path("deploy/mosquitto.conf")]
        _hash_files(digest, self.source.root, files)
        return digest.hexdigest()

    # -- the whole build -----------------------------------------------------------------------

    def build(self) -> list[ImageResult]:
        """Make everything that is missing or stale; one result per component.

        The wheel of the checkout comes first whenever the node image is to be built: it takes
        seconds, and a checkout or an environment it cannot be built from fails the build before
        the base image and the wheelhouse (minutes) start.
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.source.cache_dir.mkdir(parents=True, exist_ok=True)
        results: list[ImageResult] = []
        with tempfile.TemporaryDirectory(prefix="project.", dir=self.source.cache_dir) as tmp:
            project: Path | None = None
            if self._node_may_need_building():
                project, result = self.project_wheel(Path(tmp))
                results.append(result)
            base_result = self.ensure_base()
            results.append(base_result)
            base_id = base_result.image_id or ""
            node_hash = self.node_input_hash(base_id)
            node_current = self._current("node", node_hash)
            wheelhouse: Path | None = None
            if node_current is None:
                if project is None:  # the base changed under the images meanwhile
                    project, result = self.project_wheel(Path(tmp))
                    results.append(result)
                wheelhouse, result = self.ensure_wheelhouse()
                results.append(result)
            node_result = self._build_node(base_id, node_hash, node_current, wheelhouse, project)
        results.append(node_result)
        results.append(self._ensure_venv(node_result))
        broker_hash = self.broker_input_hash(base_id)
        broker_current = self._current("broker", broker_hash)
        results.append(self._build_broker(base_id, broker_hash, broker_current))
        self._remove_replaced_bases(base_id)
        return results

    def _node_may_need_building(self) -> bool:
        """Whether the node image will be built: no base yet, a stale one, or stale inputs."""
        base = _image_or_none(self.client, self.base)
        if base is None or self._base_is_stale(base):
            return True
        return self._current("node", self.node_input_hash(base.id)) is None

    def _current(self, component: Literal["node", "broker"], input_hash: str) -> Any:
        """The image tagged for `component` when its inputs hash to `input_hash`, else None."""
        if self.force:
            return None
        image = _image_or_none(self.client, self.tags[component])
        if image is not None and image.labels.get(LABEL_INPUT_HASH) == input_hash:
            return image
        return None

    # -- base ----------------------------------------------------------------------------------

    def ensure_base(self) -> ImageResult:
        """The base image: found, pulled (a --base from a registry) or made with debootstrap."""
        started = time.monotonic()
        self._emit("base", "start", self.base)
        image = _image_or_none(self.client, self.base)
        status: Status = "up to date"
        if image is None or self._base_is_stale(image):
            status = "built"
            if self.base == BASE_IMAGE:
                self._make_base(replace=image is not None)
            else:
                self._pull_base()
            image = _image_or_none(self.client, self.base)
            if image is None:
                raise ImageBuildError(f"base image {self.base}: not found after it was made")
        return self._done(
            ImageResult(
                "base",
                self.base,
                status,
                time.monotonic() - started,
                image.id,
                image.attrs.get("Size"),
            )
        )

    def _base_is_stale(self, image: Any) -> bool:
        """Whether `image`, a base made by make-base-image.sh, holds another package list than
        the script installs now (e.g. made before curl and ping joined it): it is made again."""
        if self.base != BASE_IMAGE or image.labels.get(LABEL_COMPONENT) != "base":
            return False
        try:
            match = _INCLUDE.search((self.source.root / _BASE_SCRIPT).read_text(encoding="utf-8"))
        except OSError:
            return False
        return match is not None and image.labels.get(_LABEL_BASE_INCLUDE) != match[1]

    def _remove_replaced_bases(self, base_id: str) -> None:
        """Remove base images made here that another replaced once no image is built on them
        (the engine refuses while one is)."""
        if self.base != BASE_IMAGE:
            return
        for image in self.client.images.list(
            filters={"dangling": True, "label": f"{LABEL_COMPONENT}=base"}
        ):
            # Imported bases have no parent; images built on one inherit its labels.
            if image.id != base_id and not image.attrs.get("Parent"):
                with contextlib.suppress(APIError):
                    self.client.images.remove(image.id)

    def _pull_base(self) -> None:
        self._emit("base", "progress", f"pulling {self.base}")
        try:
            self.client.images.pull(self.base)
        except (DockerException, OSError) as exc:
            reason = exc.explanation if isinstance(exc, APIError) else None
            reason = str(reason or exc).strip() or type(exc).__name__
            raise ConfigError(
                f"--base: {self.base} is not on this machine and cannot be pulled ({reason}); "
                f"pull or load it first, or leave out --base to use {BASE_IMAGE}, which is "
                "made here with debootstrap"
            ) from None

    def _make_base(self, replace: bool = False) -> None:
        script = self.source.root / _BASE_SCRIPT
        log_path = self.log_dir / "base.log"
        error = ""
        command = ["bash", str(script), "--image", self.base, *(["--force"] if replace else [])]
        if replace:
            self._emit(
                "base", "progress", f"{self.base} holds other packages: made again", milestone=True
            )
        with log_path.open("w") as log:
            lines = self._run(command, log, "base")
            for line in lines:
                if line.startswith("==> step: "):
                    step = line.removeprefix("==> step: ")
                    index = _BASE_STEPS.index(step) if step in _BASE_STEPS else None
                    self._emit("base", "progress", step, completed=index, total=len(_BASE_STEPS))
                elif line.startswith("make-base-image: error: "):
                    error = line.removeprefix("make-base-image: error: ")
            status = lines.returncode
        if status == 0:
            return
        message = error or f"{_BASE_SCRIPT} exited with status {status}"
        if status == 2:
            raise BaseImageUnavailable(f"base image {self.base}: {message}")
        raise ImageBuildError(f"base image {self.base}: {message} (log: {log_path})")

    def _run(self, command: list[str], log: Any, component: Component) -> _Lines:
        """Run `command`, copying its output to `log` and reporting each line as an event."""
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONUNBUFFERED="1")
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        return _Lines(command, log, env, lambda line: self._emit(component, "log", line))

    # -- wheelhouse ----------------------------------------------------------------------------

    def ensure_wheelhouse(self) -> tuple[Path, ImageResult]:
        """Wheels of the runtime dependencies, from the cache or made with `pip wheel`."""
        started = time.monotonic()
        target = self.source.wheelhouse_dir()
        self._emit("wheelhouse", "start", str(target.relative_to(self.source.root)))
        status: Status = "up to date"
        if self.force or not (target / "wheelhouse.json").is_file():
            status = "built"
            self._make_wheelhouse(target)
        manifest = json.loads((target / "wheelhouse.json").read_text())
        size = sum(path.stat().st_size for path in target.glob("*.whl"))
        result = ImageResult(
            "wheelhouse",
            str(target.relative_to(self.source.root)),
            status,
            time.monotonic() - started,
            size_bytes=size,
            detail=f"{len(manifest['requirements'])} wheels",
        )
        return target, self._done(result)

    def _make_wheelhouse(self, target: Path) -> None:
        lock = _read_lock(self.source.lock_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / "wheelhouse.log"
        with (
            tempfile.TemporaryDirectory(prefix=f"{target.name}.", dir=target.parent) as tmp,
            log_path.open("w") as log,
        ):
            staging = Path(tmp)
            level = 0

            def fetch(pins: list[str]) -> dict[str, Path]:
                nonlocal level
                level += 1
                self._emit(
                    "wheelhouse",
                    "progress",
                    f"pip wheel: {len(pins)} requirements, level {level}",
                    milestone=True,
                )
                command = [sys.executable, "-m", "pip", "wheel", "--no-deps"]
                lines = self._run([*command, "--wheel-dir", str(staging), *pins], log, "wheelhouse")
                for line in lines:
                    if line.startswith(("Collecting ", "Saved ", "Building wheel")):
                        self._emit("wheelhouse", "progress", line.strip())
                if lines.returncode != 0:
                    raise ImageBuildError(
                        f"wheelhouse: pip wheel failed (exit status {lines.returncode}): "
                        f"{lines.last or 'no output'} (log: {log_path})"
                    )
                return _wheels_by_name(staging)

            pins = resolve_runtime_closure(self.source.dependencies, lock, fetch)
            wheels = _wheels_by_name(staging)
            for name in list(wheels):
                if name not in pins:  # never happens with --no-deps; keep the set exact anyway
                    wheels.pop(name).unlink()
            (staging / "requirements.txt").write_text("".join(f"{p}\n" for p in pins.values()))
            manifest = {
                "key": target.name,
                "python": sys.implementation.cache_tag,
                "platform": sysconfig.get_platform(),
                "requirements": list(pins.values()),
                "wheels": sorted(path.name for path in wheels.values()),
            }
            (staging / "wheelhouse.json").write_text(json.dumps(manifest, indent=2) + "\n")
            if target.exists():
                shutil.rmtree(target)
            staging.chmod(0o755)
            staging.rename(target)
            staging.mkdir()  # for TemporaryDirectory's cleanup
        for other in target.parent.iterdir():  # one wheelhouse is enough: drop stale ones
            if other.is_dir() and other != target and not other.name.startswith(f"{target.name}."):
                shutil.rmtree(other, ignore_errors=True)

    # -- node and broker -----------------------------------------------------------------------

    def _build_node(
        self,
        base_id: str,
        input_hash: str,
        current: Any,
        wheelhouse: Path | None,
        project: Path | None,
    ) -> ImageResult:
        tag = self.tags["node"]
        started = time.monotonic()
        self._emit("node", "start", tag)
        if current is not None:
            return self._done(self._image_result("node", tag, "up to date", started, current))
        assert wheelhouse is not None
        assert project is not None
        with tempfile.TemporaryDirectory(prefix="node.", dir=self.source.cache_dir) as tmp:
            context = Path(tmp) / "context"
            (context / "project").mkdir(parents=True)
            _link_or_copy(project, context / "project" / project.name)
            shutil.copyfile(self.source.deploy_dir / "node.Dockerfile", context / "Dockerfile")
            (context / "wheels").mkdir()
            for path in wheelhouse.iterdir():
                if path.suffix == ".whl" or path.name == "requirements.txt":
                    _link_or_copy(path, context / "wheels" / path.name)
            args = self._build_args(input_hash, base_id) | {"QKDNET_WHEELHOUSE": wheelhouse.name}
            image_id = self._docker_build("node", context, tag, args, network_mode="none")
        return self._done(self._replaced("node", tag, started, image_id))

    def _ensure_venv(self, node: ImageResult) -> ImageResult:
        """The volume the docker runtime mounts the node image's environment from."""
        started = time.monotonic()
        image = self.client.images.get(node.image_id)
        self._emit("venv", "start", f"from {node.reference}")
        if venv_volume_for(self.client, image) is None:
            self._emit("venv", "progress", f"copying {VENV_DIR} into a volume", milestone=True)
        name, made = ensure_venv_volume(self.client, image)
        status: Status = "built" if made else "up to date"
        seconds = time.monotonic() - started
        detail = f"{VENV_DIR} of {node.reference}, mounted read-only by the docker runtime"
        return self._done(ImageResult("venv", name, status, seconds, detail=detail))

    def _build_broker(self, base_id: str, input_hash: str, current: Any) -> ImageResult:
        tag = self.tags["broker"]
        started = time.monotonic()
        self._emit("broker", "start", tag)
        if current is not None:
            return self._done(self._image_result("broker", tag, "up to date", started, current))
        base = self.client.images.get(self.base)
        # The base made here holds mosquitto; another may need apt, hence the network.
        offline = base.labels.get(LABEL_COMPONENT) == "base"
        self.source.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="broker.", dir=self.source.cache_dir) as tmp:
            context = Path(tmp)
            shutil.copyfile(self.source.deploy_dir / "broker.Dockerfile", context / "Dockerfile")
            shutil.copyfile(self.source.deploy_dir / "mosquitto.conf", context / "mosquitto.conf")
            args = self._build_args(input_hash, base_id)
            network = "none" if offline else None
            image_id = self._docker_build("broker", context, tag, args, network_mode=network)
        return self._done(self._replaced("broker", tag, started, image_id))

    def _build_args(self, input_hash: str, base_id: str) -> dict[str, str]:
        """The Dockerfiles' ARGs; their last LABEL step turns them into the labels above (one
        step, where the build's `labels` option would add a step per label)."""
        return {
            "BASE_IMAGE": self.base,
            "QKDNET_VERSION": self.source.version,
            "QKDNET_INPUT_HASH": input_hash,
            "QKDNET_BASE_IMAGE_ID": base_id,
        }

    def project_wheel(self, workdir: Path) -> tuple[Path, ImageResult]:
        """The wheel of the checkout, made in `workdir`; its path and the "project" result.

        pip builds it with build isolation: in a fresh environment holding what pyproject's
        `[build-system] requires` names (fetched from the package index pip is configured
        with), never with the setuptools of the environment qkdnet runs from, which may be
        older than the project needs. It is built from a copy of exactly the hashed files (so a
        stale setuptools build/ directory can never slip a deleted module in). Seconds; an
        ImageBuildError names the reason when it fails.
        """
        started = time.monotonic()
        requires = ", ".join(self.source.build_requires) or "setuptools"
        self._emit("project", "start", f"qkdnet {self.source.version} with {requires}")
        source, out = workdir / "source", workdir / "wheel"
        out.mkdir(parents=True)
        for relative in self.source.project_files():
            (source / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.source.root / relative, source / relative)
        log_path = self.log_dir / "project-wheel.log"
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--use-pep517"]
        with log_path.open("w") as log:
            lines = self._run([*command, "--wheel-dir", str(out), str(source)], log, "project")
            # Set to any value, PIP_NO_BUILD_ISOLATION could turn the isolation off.
            lines.env.pop("PIP_NO_BUILD_ISOLATION", None)
            output = []
            for line in lines:
                output.append(line)
                if line.strip():
                    self._emit("project", "progress", line.strip())
        wheels = list(out.glob("*.whl"))
        if lines.returncode != 0 or len(wheels) != 1:
            reason = _pip_failure(output) or lines.last or "no output"
            raise ImageBuildError(
                f"the wheel of qkdnet did not build with the build requirements pyproject.toml "
                f"declares ([build-system] requires: {requires}): {reason} (log: {log_path}); "
                "nothing was built"
            )
        result = ImageResult(
            "project",
            wheels[0].name,
            "built",
            time.monotonic() - started,
            size_bytes=wheels[0].stat().st_size,
            detail=f"built with {requires}",
        )
        return wheels[0], self._done(result)

    def _docker_build(
        self,
        component: Component,
        context: Path,
        tag: str,
        build_args: dict[str, str],
        network_mode: str | None,
    ) -> str:
        """Run one `docker build`, streaming its log; returns the new image's ID.

        When the build fails or is interrupted, the images its steps committed go with it.
        """
        made: list[str] = []  # short IDs of the images this build's steps committed, in order
        try:
            return self._stream_build(component, context, tag, build_args, network_mode, made)
        except BaseException:
            self._remove_untagged(made)
            raise

    def _remove_untagged(self, short_ids: list[str]) -> None:
        """Remove the images of `short_ids` that no tag names, children first."""
        for short_id in reversed(short_ids):
            with contextlib.suppress(DockerException, OSError):
                image = self.client.images.get(short_id)
                if not image.tags:
                    self.client.images.remove(image.id, noprune=True)

    def _stream_build(
        self,
        component: Component,
        context: Path,
        tag: str,
        build_args: dict[str, str],
        network_mode: str | None,
        made: list[str],
    ) -> str:
        log_path = self.log_dir / f"{component}.log"
        image_id: str | None = None
        step = "sending the build context"
        tail: list[str] = []
        layers: set[str] = set()  # IDs of the images of every step, reused or made
        reused = False  # the step's image came from the layer cache (or is the FROM image)
        started = time.monotonic()
        self._emit(component, "progress", step)
        with log_path.open("w") as log:
            try:
                stream = self.client.api.build(
                    path=str(context),
                    tag=tag,
                    buildargs=build_args,
                    rm=True,
                    forcerm=True,
                    nocache=self.force,
                    pull=False,
                    network_mode=network_mode,
                    decode=True,
                    timeout=_BUILD_TIMEOUT,
                )
                pending = ""
                for chunk in stream:
                    if "error" in chunk:
                        log.write(f"ERROR: {chunk['error']}\n")
                        detail = "; ".join(line for line in tail[-4:] if line)
                        raise ImageBuildError(
                            f"{component} image {tag}: {step}: {str(chunk['error']).strip()}"
                            + (f" [{detail}]" if detail else "")
                            + f" (log: {log_path})"
                        )
                    aux = chunk.get("aux")
                    if isinstance(aux, dict) and "ID" in aux:
                        image_id = str(aux["ID"])
                    text = chunk.get("stream") or chunk.get("status")
                    if not isinstance(text, str):
                        continue
                    pending += text if text.endswith("\n") or "stream" in chunk else text + "\n"
                    *lines, pending = pending.split("\n")
                    for line in (line.rstrip() for line in lines):
                        match = _STEP.match(line)
                        layer = _LAYER.match(line)
                        if layer:
                            layers.add(layer[1])
                            if not reused:
                                made.append(layer[1])
                        elif line.strip() == "---> Using cache":
                            reused = True
                        if match:
                            reused = match[3].upper().startswith("FROM ")
                            log.write(f"[{time.monotonic() - started:7.1f} s] {line}\n")
                            step = f"step {match[1]}/{match[2]}: {match[3]}"
                            self._emit(
                                component,
                                "progress",
                                match[3],
                                completed=int(match[1]) - 1,
                                total=int(match[2]),
                            )
                            tail = []
                            continue
                        log.write(line + "\n")
                        if line.strip():
                            tail = [*tail[-9:], line.strip()]
                        self._emit(component, "log", line)
                log.write(f"[{time.monotonic() - started:7.1f} s] done\n")
            except (DockerException, OSError) as exc:
                if isinstance(exc, APIError):
                    reason = exc.explanation or str(exc)
                else:
                    reason = str(exc) or type(exc).__name__
                raise ImageBuildError(
                    f"{component} image {tag}: {step}: {reason} (log: {log_path})"
                ) from None
        if image_id is None:
            image_id = self.client.images.get(tag).id
        if component == "node":
            self._prune_build_stages(layers)
        return image_id

    def _prune_build_stages(self, keep: set[str]) -> None:
        """Remove the node's earlier dependency stages (untagged, labelled build-stage) that
        this build did not use: each holds a whole virtual environment."""
        stale = self.client.images.list(
            filters={"dangling": True, "label": f"{LABEL_COMPONENT}=build-stage"}
        )
        for image in stale:
            if image.id.removeprefix("sha256:")[:12] not in keep:
                with contextlib.suppress(APIError):
                    self.client.images.remove(image.id)

    def _replaced(self, component: Component, tag: str, started: float, image_id: str) -> Any:
        """The result of a fresh build; the image it replaced goes unless something uses it."""
        image = self.client.images.get(image_id)
        for old in self.client.images.list(
            filters={"dangling": True, "label": f"{LABEL_COMPONENT}={component}"}
        ):
            # Unlabelled ones are steps of an earlier build of ours whose image went.
            version = old.labels.get(LABEL_VERSION) or self.source.version
            if old.id != image.id and version == self.source.version:
                with contextlib.suppress(APIError):
                    self.client.images.remove(old.id)
        return self._image_result(component, tag, "built", started, image)

    @staticmethod
    def _image_result(
        component: Component, tag: str, status: Status, started: float, image: Any
    ) -> ImageResult:
        return ImageResult(
            component, tag, status, time.monotonic() - started, image.id, image.attrs.get("Size")
        )


def _stop_group(process: subprocess.Popen[str], grace: float = 60) -> None:
    """SIGTERM to `process`'s process group, SIGKILL when it has not ended after `grace` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)
            return


class _Lines:
    """A child process's output (stdout and stderr) line by line, copied to a log file."""

    def __init__(
        self,
        command: list[str],
        log: Any,
        env: dict[str, str],
        on_line: Callable[[str], None],
    ) -> None:
        self.command = command
        self.log = log
        self.env = env
        self.on_line = on_line
        self.returncode = -1
        self.last = ""

    def __iter__(self) -> Iterator[str]:
        try:
            process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self.env,
                text=True,
                errors="replace",
                bufsize=1,
                start_new_session=True,  # its own process group: stopped whole, below
            )
        except OSError as exc:
            raise ImageBuildError(f"cannot run {self.command[0]}: {exc.strerror}") from None
        assert process.stdout is not None
        with process:
            try:
                for raw in process.stdout:
                    line = raw.rstrip("\n")
                    self.log.write(raw)
                    if line.strip():
                        self.last = line.strip()
                    self.on_line(line)
                    yield line
            except BaseException:
                # Interrupted, or the reader gave up: stop the child and whatever it started
                # (debootstrap under make-base-image.sh, whose exit trap then cleans up).
                _stop_group(process)
                raise
        self.returncode = process.returncode
        self.log.flush()


# -- the runtime closure of pyproject's dependencies -------------------------------------------


def _read_lock(path: Path) -> dict[str, str]:
    """requirements.lock as {canonical name: "Name==version"}."""
    pins: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise ConfigError(f"{path}: line {number}: expected name==version, got {line!r}")
        pins[canonicalize_name(name.strip())] = f"{name.strip()}=={version.strip()}"
    return pins


def _wheels_by_name(directory: Path) -> dict[str, Path]:
    wheels = {}
    for path in directory.glob("*.whl"):
        with contextlib.suppress(InvalidWheelFilename):
            wheels[str(parse_wheel_filename(path.name)[0])] = path
    return wheels


def _requires_dist(wheel: Path) -> list[Requirement]:
    """The Requires-Dist entries of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            raise ImageBuildError(f"wheelhouse: {wheel.name} has no single METADATA file")
        metadata = email.parser.BytesParser().parsebytes(archive.read(names[0]), headersonly=True)
    requirements = []
    for text in metadata.get_all("Requires-Dist") or []:
        try:
            requirements.append(Requirement(text))
        except InvalidRequirement as exc:
            raise ImageBuildError(f"wheelhouse: {wheel.name}: {exc}") from None
    return requirements


def resolve_runtime_closure(
    dependencies: Iterable[str],
    lock: dict[str, str],
    fetch: Callable[[list[str]], dict[str, Path]],
) -> dict[str, str]:
    """The pins of `dependencies` and everything they need, transitively, on this interpreter.

    Versions come from `lock` ({canonical name: "Name==version"}); `fetch(pins)` makes wheels of
    the given pins and returns every wheel made so far by canonical name; their metadata names
    the next level of requirements (markers evaluated here, extras followed). Raises
    ImageBuildError when the lock misses a requirement or pins a version it does not allow.
    """
    pinned: dict[str, str] = {}
    requires: dict[str, list[Requirement]] = {}
    followed: set[tuple[str, str]] = set()
    try:
        pending = [(Requirement(text), "pyproject.toml") for text in dependencies]
    except InvalidRequirement as exc:
        raise ConfigError(f"pyproject.toml: [project].dependencies: {exc}") from None
    while pending:
        new = []
        for requirement, parent in pending:
            name = str(canonicalize_name(requirement.name))
            pin = lock.get(name)
            if pin is None:
                raise ImageBuildError(
                    f"requirements.lock pins no version of {requirement.name} (required by "
                    f"{parent}); add it to the lock"
                )
            version = pin.partition("==")[2]
            if not requirement.specifier.contains(version, prereleases=True):
                raise ImageBuildError(
                    f"requirements.lock pins {pin}, but {parent} requires {requirement}"
                )
            if name not in pinned:
                pinned[name] = pin
                new.append(name)
        if new:
            wheels = fetch([pinned[name] for name in new])
            for name in new:
                if name not in wheels:
                    raise ImageBuildError(f"wheelhouse: pip made no wheel of {pinned[name]}")
                requires[name] = _requires_dist(wheels[name])
        following = []
        for requirement, _parent in pending:
            name = str(canonicalize_name(requirement.name))
            for extra in ("", *sorted(requirement.extras)):
                if (name, extra) in followed:
                    continue
                followed.add((name, extra))
                for dependency in requires[name]:
                    marker = dependency.marker
                    # No marker: a requirement of the distribution itself, not of an extra.
                    applies = extra == "" if marker is None else marker.evaluate({"extra": extra})
                    if applies:
                        following.append((dependency, pinned[name]))
        pending = following
    return dict(sorted(pinned.items()))


_PIP_GENERIC = ("subprocess-exited-with-error", "metadata-generation-failed", "See above")


def _pip_failure(output: list[str]) -> str:
    """The line of a failed `pip wheel`'s output that says why (pip ends with generic ones)."""
    lines = [line.strip() for line in output if line.strip()]
    for line in lines:
        if "No module named pip" in line:
            return "this Python environment has no pip (python -m ensurepip installs it)"
    for line in lines:
        if "No matching distribution found for" in line or "Could not find a version" in line:
            return (
                f"{line.removeprefix('ERROR: ')}: the isolated build fetches the build "
                "requirements from the package index (PIP_INDEX_URL, PIP_FIND_LINKS)"
            )
    for prefix in ("configuration error:", "ERROR:", "error:"):
        for line in lines:
            if line.startswith(prefix) and not any(g in line for g in _PIP_GENERIC):
                return line
    return ""


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


# -- listing -----------------------------------------------------------------------------------


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


# -- the CLI -----------------------------------------------------------------------------------

_LABELS: dict[Component, str] = {
    "project": "project wheel",
    "base": "base image",
    "wheelhouse": "wheelhouse",
    "node": "node image",
    "broker": "broker image",
    "venv": "node environment volume",
}


def _megabytes(size: int | None) -> str:
    return "?" if size is None else f"{size / 1e6:,.0f} MB"


def _short(image_id: str | None) -> str:
    return (image_id or "").removeprefix("sha256:")[:12]


def _describe(result: ImageResult) -> str:
    if result.component == "wheelhouse":
        what = f"{result.reference}, {result.detail}, {_megabytes(result.size_bytes)}"
    elif result.component == "project" or result.component == "venv":
        what = f"{result.reference}, {result.detail}"
    else:
        what = f"{result.reference} {_short(result.image_id)}, {_megabytes(result.size_bytes)}"
    if result.status == "built":
        return f"built in {result.seconds:.1f} s ({what})"
    return f"up to date ({what})"


class _BuildView:
    """Draws `ImageEvent`s: live bars in a terminal, one line per step otherwise."""

    def __init__(self, console: Console, verbose: bool) -> None:
        self.console = console
        self.verbose = verbose
        self.live = console.is_terminal
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.fields[label]:<12}"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}", style="dim"),
            console=console,
            transient=True,
        )
        self.tasks: dict[Component, TaskID] = {}

    def __enter__(self) -> _BuildView:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def _plain(self, text: str, style: str | None = None) -> None:
        self.console.print(text, style=style, highlight=False, markup=False, soft_wrap=True)

    def __call__(self, event: ImageEvent) -> None:
        label = _LABELS[event.component]
        if event.kind == "start":
            if self.live:
                self.tasks[event.component] = self.progress.add_task(
                    label, total=None, label=label, detail=event.detail
                )
            return
        task = self.tasks.get(event.component)
        if event.kind == "progress":
            detail = " ".join(event.detail.split())
            detail = detail if len(detail) <= 70 else detail[:69] + "…"
            if task is not None:
                fields: dict[str, Any] = {"detail": detail}
                if event.total is not None:
                    fields |= {"total": event.total, "completed": event.completed or 0}
                self.progress.update(task, **fields)
            elif not self.live and (event.total is not None or event.milestone or self.verbose):
                where = ""
                if event.total is not None and event.completed is not None:
                    where = f" {event.completed + 1}/{event.total}"
                self._plain(f"  {label}{where}: {' '.join(event.detail.split())}")
        elif event.kind == "log":
            if self.verbose and event.detail.strip():
                self._plain(f"  {label} | {event.detail}", style="dim")
        elif event.kind == "done" and event.result is not None:
            if task is not None:
                self.progress.remove_task(task)
            mark = "[green]✓[/green]"
            self.console.print(
                f"{mark} {label}: {_describe(event.result)}", highlight=False, soft_wrap=True
            )


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a test session's budget running out, `kill`) interrupts the build as Ctrl-C
    does, so that it stops its children and removes what it made before exiting."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_image_build(
    console: Console, *, base: str | None = None, force: bool = False, verbose: bool = False
) -> int:
    """`qkdnet image build`: make what is missing or stale, show progress; the exit status."""
    source = SourceTree.find()
    client = docker_client()
    started = time.monotonic()
    with _BuildView(console, verbose) as view, _terminate_as_interrupt():
        builder = ImageBuilder(source, client, base=base or BASE_IMAGE, force=force, on_event=view)
        results = builder.build()
    built = [
        r for r in results if r.status == "built" and r.component in ("base", "node", "broker")
    ]
    elapsed = time.monotonic() - started
    if built:
        names = ", ".join(r.reference for r in built)
        console.print(
            f"qkdnet image build: built {names} in {elapsed:.1f} s", highlight=False, soft_wrap=True
        )
    else:
        console.print(
            f"qkdnet image build: {builder.tags['node']} and {builder.tags['broker']} "
            f"up to date ({elapsed:.1f} s)",
            highlight=False,
            soft_wrap=True,
        )
    return 0


def run_image_list(console: Console, *, as_json: bool = False) -> int:
    """`qkdnet image list`: the qkdnet images on the engine."""
    client = docker_client()
    rows = list_images(client)
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    images = [row for row in rows if row["component"] in ("base", "node", "broker")]
    cache = [row for row in rows if row["component"] == "build-stage"]
    if not images:
        console.print("no qkdnet images: qkdnet image build makes them")
    else:
        table = Table("image", "ID", "size", "created (UTC)", "state")
        state = {True: "[green]current[/green]", False: "[yellow]stale[/yellow]", None: ""}
        for row in images:
            table.add_row(
                ", ".join(row["tags"]) or f"<none> ({row['component']})",
                _short(row["id"]),
                _megabytes(row["size_bytes"]),
                str(row["created"])[:16].replace("T", " "),
                state[row["current"]],
            )
        for column in table.columns:
            column.no_wrap = True
        console.print(table)
    for name, image_id in sorted(venv_volumes(client).items()):
        console.print(
            f"node environment volume: {name} (of node image {_short(image_id)})",
            highlight=False,
            soft_wrap=True,
        )
    if cache:
        size = sum(row["size_bytes"] or 0 for row in cache)
        console.print(
            f"build cache: {len(cache)} dependency stage(s) of the node image, "
            f"{_megabytes(size)} (layers shared with the node image are counted again)",
            highlight=False,
        )
    return 0
