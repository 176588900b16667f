"""The image builder: base image, wheelhouse, node and broker images, each rebuilt only when
what it is made of changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import docker
from docker.errors import APIError, DockerException

from qkdnet.node.errors import ConfigError

from ..venv_volume import VENV_DIR, ensure_venv_volume, venv_volume_for
from .build_logs import _Lines
from .engine import _image_or_none
from .events import (
    BaseImageUnavailable,
    Component,
    EventKind,
    EventSink,
    ImageBuildError,
    ImageEvent,
    ImageResult,
    Status,
)
from .layout import BASE_IMAGE, LABEL_COMPONENT, LABEL_INPUT_HASH, LABEL_VERSION, image_tags
from .sources import _FORMAT, SourceTree, _hash_files
from .wheelhouse import (
    _link_or_copy,
    _pip_failure,
    _read_lock,
    _wheels_by_name,
    resolve_runtime_closure,
)

_BASE_SCRIPT = Path("deploy") / "make-base-image.sh"
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
