"""Fixtures of the container tests: a Docker engine, and the images built once per session.

Every test here is skipped, with the reason, when no Docker engine answers.

The images are built before the first test that needs them, never inside a test (nor its
timeout): a cold build makes the base image with debootstrap (as root) and the wheelhouse,
minutes. When the selected tests include one that uses `built_images` and an engine answers,
`qkdnet image build` starts as a child process as soon as collection ends and runs in the
background while the other tests run; the container tests are moved to the end of the session
(hooks below), and the session waits for the build before the first of them, outside its
timeout. Every line the build prints (one per step) appears on the terminal, prefixed
`[image build]`, whatever pytest captures. The build has its own budget,
QKDNET_TEST_IMAGE_BUILD_TIMEOUT seconds (default 1200); QKDNET_TEST_IMAGE_BUILD=foreground waits
for it before any test. A build that fails or runs out of time removes what it made, and every
test that needs the images errors with its message (skipped instead when it cannot run here:
not root for debootstrap). Later sessions find everything up to date in seconds.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from qkdnet.node.errors import QkdnetError
from qkdnet.orchestrator.runtime.images import (
    BaseImageUnavailable,
    DockerUnavailable,
    ImageBuilder,
    ImageEvent,
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
    for container in client.containers.list(
        all=True, ignore_removed=True, filters={"label": TEST_LABEL}
    ):
        container.remove(force=True)
    for volume in client.volumes.list(filters={"label": TEST_LABEL}):
        volume.remove(force=True)
    client.close()


@pytest.fixture(scope="session")
def source_tree() -> SourceTree:
    return SourceTree.find()


@pytest.fixture(scope="session")
def built_images(
    docker_engine: Any, source_tree: SourceTree, request: pytest.FixtureRequest
) -> dict[str, ImageResult]:
    """Base, wheelhouse, node and broker images, built before the session's first container
    test (see the module's docstring); built here only when no session build ran."""
    build = request.config.stash.get(_BUILD, None)
    if build is None:
        build = _SessionBuild(request.config, docker_engine)
        build.check(source_tree)
    if build.skip_reason:
        pytest.skip(build.skip_reason)
    if build.failure:
        pytest.fail(build.failure, pytrace=False)
    assert build.results is not None
    return build.results


# -- the session's image build -----------------------------------------------------------------

_BUDGET = float(os.environ.get("QKDNET_TEST_IMAGE_BUILD_TIMEOUT", "1200"))
_PREFIX = "[image build]"


def _needs_images(item: pytest.Item) -> bool:
    return "built_images" in getattr(item, "fixturenames", ())


def _write(config: pytest.Config, line: str) -> None:
    """A line on the terminal, between tests or during one, whatever pytest captures."""
    capture = config.pluginmanager.getplugin("capturemanager")
    terminal = config.pluginmanager.getplugin("terminalreporter")
    disabled = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with disabled:
        if terminal is not None:
            terminal.write_line(f"{_PREFIX} {line}")
        else:
            print(f"{_PREFIX} {line}", file=sys.__stderr__, flush=True)


class _SessionBuild:
    """`qkdnet image build` in a child process of its own process group, and what became of it."""

    def __init__(self, config: pytest.Config, client: Any) -> None:
        self.config = config
        self.client = client
        self.process: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self.started = time.monotonic()
        self.waited = False
        self.ended = False  # the build's output ended
        self.results: dict[str, ImageResult] | None = None
        self.skip_reason = ""
        self.failure = ""

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "qkdnet.orchestrator", "image", "build"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,  # stopped (and cleaning up) on our signal only
            env=dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200"),
        )
        threading.Thread(target=self._read, name="image-build-output", daemon=True).start()
        _write(self.config, f"started in the background (budget {_BUDGET:g} s)")

    def _read(self) -> None:
        process = self.process
        assert process is not None
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.put(line.rstrip())
        self.lines.put(None)

    def _take(self, line: str | None) -> bool:
        """Print one line of the build's output; whether it was the end of it."""
        if line is None:
            self.ended = True
        else:
            self.output.append(line)
            if line.strip():
                _write(self.config, line)
        return self.ended

    def flush(self) -> None:
        """Print what the build printed since the last call (between tests)."""
        with contextlib.suppress(queue.Empty):
            while not self._take(self.lines.get_nowait()):
                pass

    def wait(self) -> None:
        """Wait for the build within its budget, printing its lines; record the outcome."""
        if self.waited or self.process is None:
            return
        self.waited = True
        self.flush()
        if not self.ended:
            _write(self.config, "waiting for it before the first container test")
        deadline = self.started + _BUDGET
        while not self.ended and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                self._take(self.lines.get(timeout=min(1.0, deadline - time.monotonic())))
        if not self.ended:
            self.stop(f"ran out of its budget of {_BUDGET:g} s")
            return
        status = self.process.wait()
        elapsed = time.monotonic() - self.started
        last = next((line for line in reversed(self.output) if line.strip()), "")
        if status == 0:
            _write(self.config, f"done in {elapsed:.0f} s")
            self.check(SourceTree.find())
        elif status == 2:  # cannot run here (not root for debootstrap, ...): skipped, saying why
            self.skip_reason = f"the images cannot be built here: {last}"
        else:
            tail = "\n".join(self.output[-15:])
            self.failure = (
                f"qkdnet image build failed (exit status {status}) after {elapsed:.0f} s; "
                f"logs in build/images/logs/; its last lines:\n{tail}"
            )

    def stop(self, why: str) -> None:
        """Stop a build still running (it removes what it made on SIGTERM); record why."""
        if self.process is None or self.process.poll() is not None:
            return
        _write(self.config, f"stopping it: {why}")
        outcome = "stopped; it removed what it had made"
        for sig, grace in ((signal.SIGTERM, 120.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(grace)
                break
            except subprocess.TimeoutExpired:
                outcome = "killed after 120 s without ending on SIGTERM"
        self.flush()
        _write(self.config, outcome)
        self.failure = f"qkdnet image build {why}: {outcome}"

    def check(self, source: SourceTree) -> None:
        """The build's results, made in this process: seconds when everything is up to date
        (a source edited meanwhile rebuilds the node image, its steps printed)."""

        def show(event: ImageEvent) -> None:
            if event.kind == "progress" and (event.total is not None or event.milestone):
                _write(self.config, f"{event.component}: {' '.join(event.detail.split())}")

        try:
            results = ImageBuilder(source, self.client, on_event=show).build()
        except BaseImageUnavailable as exc:  # e.g. not root: debootstrap cannot run
            self.skip_reason = f"{exc}; make it once with: sudo deploy/make-base-image.sh"
        except QkdnetError as exc:
            self.failure = f"qkdnet image build failed: {exc}"
        else:
            self.results = {result.component: result for result in results}


_BUILD = pytest.StashKey[_SessionBuild]()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Container tests last (stable otherwise): the image build overlaps the others."""
    items.sort(key=lambda item: item.get_closest_marker("container") is not None)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the image build when a selected test needs the images and an engine answers."""
    config = session.config
    if config.option.collectonly or not any(_needs_images(item) for item in session.items):
        return
    try:
        client = docker_client()
    except DockerUnavailable:
        return  # docker_engine skips those tests, saying why
    build = _SessionBuild(config, client)
    config.stash[_BUILD] = build
    build.start()
    if os.environ.get("QKDNET_TEST_IMAGE_BUILD") == "foreground":
        build.wait()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Before the first test that needs the images: wait for the build, outside the test's
    timeout (pytest-timeout starts its timer inside this wrapper)."""
    build = item.config.stash.get(_BUILD, None)
    if build is not None and _needs_images(item):
        build.wait()
    yield
    if build is not None and not build.waited:
        build.flush()  # what the background build printed during this test


def pytest_unconfigure(config: pytest.Config) -> None:
    """A build still running when the session ends (-x, Ctrl-C) is stopped; it cleans up."""
    build = config.stash.get(_BUILD, None)
    if build is not None:
        build.stop("was still running when the session ended")
