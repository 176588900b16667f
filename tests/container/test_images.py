"""The container images: built without a registry, runnable without a network, reused warm."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from docker.errors import ContainerError

from qkdnet.node.edge.tls import client_tls_context
from qkdnet.node.identity import Role
from qkdnet.orchestrator.plan.mosquitto import mosquitto_conf
from qkdnet.orchestrator.plan.pki import CertificateAuthority
from qkdnet.orchestrator.plan.telemetry_access import TelemetryAccess
from qkdnet.orchestrator.runtime.images import (
    BROKER_PORT,
    LABEL_COMPONENT,
    LABEL_INPUT_HASH,
    NODE_CONFIG_DIR,
    NODE_STATE_DIR,
    NODE_UID,
    ImageBuilder,
    ImageBuildError,
    ImageEvent,
    ImageResult,
    SourceTree,
)
from qkdnet.orchestrator.runtime.venv_volume import (
    LABEL_IMAGE_ID,
    VENV_DIR,
    ensure_venv_volume,
    venv_volume_for,
)

from .conftest import TEST_LABEL

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

DEV_ONLY = {"mypy", "ruff", "pytest", "pytest-asyncio", "pytest-timeout", "grpcio-tools"}


def run(client: Any, image: str, command: list[str], **options: Any) -> str:
    """Run a throw-away container with the network disabled; its output."""
    output = client.containers.run(
        image,
        command,
        network_mode="none",
        remove=True,
        labels={TEST_LABEL: "1"},
        **options,
    )
    return bytes(output).decode()


def test_images_are_built_and_labelled(
    docker_engine: Any, built_images: dict[str, ImageResult]
) -> None:
    assert set(built_images) >= {"base", "node", "broker"}
    for component in ("node", "broker"):
        image = docker_engine.images.get(built_images[component].reference)
        assert image.labels[LABEL_COMPONENT] == component
        assert len(image.labels[LABEL_INPUT_HASH]) == 64
        assert image.labels["org.qkdnet.base-image-id"] == built_images["base"].image_id


def test_wheelhouse_holds_the_runtime_closure_only(
    built_images: dict[str, ImageResult], source_tree: SourceTree, docker_engine: Any
) -> None:
    # Images that were up to date did not need the wheelhouse: make sure it is there (cached).
    wheelhouse, _ = ImageBuilder(source_tree, docker_engine).ensure_wheelhouse()
    manifest = json.loads((wheelhouse / "wheelhouse.json").read_text())
    names = {pin.partition("==")[0].lower() for pin in manifest["requirements"]}
    assert {"grpcio", "numpy", "pydantic", "aiomqtt", "docker", "urllib3"} <= names
    assert not names & DEV_ONLY
    assert not {name for name in names if name.startswith(("types-", "mypy"))}


def test_node_image_runs_offline_as_an_unprivileged_user(
    docker_engine: Any, built_images: dict[str, ImageResult]
) -> None:
    image = built_images["node"].reference
    assert "usage: qkdnet" in run(docker_engine, image, ["--help"])
    probe = "import os, qkdnet.node.agent; print(os.getuid())"
    output = run(docker_engine, image, ["-c", probe], entrypoint="python")
    assert output.strip() == str(NODE_UID)


def test_node_image_has_the_tools_of_a_user_who_execs_into_it(
    docker_engine: Any, built_images: dict[str, ImageResult]
) -> None:
    # As the node's own user (docker exec's default), with no network but loopback.
    script = "curl --version | head -n 1; ping -c 1 -W 5 127.0.0.1 | grep -c ' 0% packet loss'"
    output = run(docker_engine, built_images["node"].reference, ["-c", script], entrypoint="sh")
    assert output.startswith("curl "), output
    assert output.split("\n")[1] == "1", output
    tools = run(
        docker_engine, built_images["node"].reference, ["-c", "ip -V; tc -V"], entrypoint="sh"
    )
    assert "iproute2" in tools
    # Lean: the base grows by curl's and ping's libraries only (README: 128 MB without them).
    assert (built_images["base"].size_bytes or 0) < 160e6


def _failing_context(directory: Path, base: str, last_step: str) -> tuple[Path, str]:
    """A build context whose steps commit two images, then `last_step`; its unique label."""
    label = f"{TEST_LABEL}.build={uuid.uuid4().hex[:12]}"
    directory.mkdir()
    (directory / "Dockerfile").write_text(
        f"FROM {base}\nLABEL {label}\nRUN echo made > /made\n{last_step}\n"
    )
    return directory, label


def _images_labelled(client: Any, label: str) -> list[Any]:
    return list(client.images.list(all=True, filters={"label": label}))


def test_a_failed_build_leaves_no_image_behind(
    docker_engine: Any,
    built_images: dict[str, ImageResult],
    source_tree: SourceTree,
    tmp_path: Path,
) -> None:
    context, label = _failing_context(
        tmp_path / "ctx", built_images["base"].reference, "RUN exit 3"
    )
    builder = ImageBuilder(source_tree, docker_engine)
    builder.log_dir = tmp_path
    with pytest.raises(ImageBuildError, match="RUN exit 3"):
        builder._docker_build("broker", context, "qkdnet-test-failed:1", {}, network_mode="none")
    assert _images_labelled(docker_engine, label) == []


class _Interrupt(BaseException):
    """What a Ctrl-C or a timeout raises in the middle of a build."""


def test_an_interrupted_build_leaves_no_image_behind(
    docker_engine: Any,
    built_images: dict[str, ImageResult],
    source_tree: SourceTree,
    tmp_path: Path,
) -> None:
    base = built_images["base"].reference
    context, label = _failing_context(tmp_path / "ctx", base, "RUN sleep 2")

    def interrupt_at_the_sleep(event: ImageEvent) -> None:
        if event.kind == "progress" and event.detail.startswith("RUN sleep"):
            raise _Interrupt

    builder = ImageBuilder(source_tree, docker_engine, on_event=interrupt_at_the_sleep)
    builder.log_dir = tmp_path
    with pytest.raises(_Interrupt):
        builder._docker_build("broker", context, "qkdnet-test-stopped:1", {}, network_mode="none")
    time.sleep(4)  # the engine would have committed the sleep step by now, had it gone on
    assert _images_labelled(docker_engine, label) == []


def test_node_image_reports_a_bad_configuration(
    docker_engine: Any, built_images: dict[str, ImageResult]
) -> None:
    with pytest.raises(ContainerError) as failure:
        run(docker_engine, built_images["node"].reference, [], stderr=True)
    assert failure.value.exit_status == 2
    assert f"{NODE_CONFIG_DIR}/node.yaml: no such file" in bytes(failure.value.stderr).decode()


def _node_config(directory: Path) -> Path:
    """A one-node configuration with its PKI, laid out as the node image expects it."""
    ca = CertificateAuthority(directory / "ca")
    config_dir = directory / "config"
    paths = ca.issue(Role.NODE, "n1", config_dir / "pki")
    (config_dir / "pki" / "ca.pem").write_bytes(paths.ca.read_bytes())
    config = {
        "node_id": "n1",
        "listen": "0.0.0.0:50051",
        "state_dir": NODE_STATE_DIR,
        "tls": {"ca": "pki/ca.pem", "cert": "pki/cert.pem", "key": "pki/key.pem"},
    }
    (config_dir / "node.yaml").write_text(yaml.safe_dump(config))
    # The node runs as NODE_UID: its private key must be readable by that user.
    for path in [config_dir, *config_dir.rglob("*")]:
        if os.geteuid() == 0:
            os.chown(path, NODE_UID, -1)
        else:
            path.chmod(0o755 if path.is_dir() else 0o644)
    return config_dir


def test_node_starts_from_a_mounted_config_and_stops_cleanly(
    docker_engine: Any, built_images: dict[str, ImageResult], tmp_path: Path
) -> None:
    config_dir = _node_config(tmp_path)
    volume = docker_engine.volumes.create(labels={TEST_LABEL: "1"})
    container = docker_engine.containers.run(
        built_images["node"].reference,  # the image's default command: qkdnet node --config
        detach=True,
        network_mode="none",
        labels={TEST_LABEL: "1"},
        volumes={
            str(config_dir): {"bind": NODE_CONFIG_DIR, "mode": "ro"},
            volume.name: {"bind": NODE_STATE_DIR, "mode": "rw"},
        },
    )
    try:
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline:
            container.reload()
            assert container.status in ("created", "running"), container.logs().decode()
            result = container.exec_run(["cat", f"{NODE_STATE_DIR}/ready.json"])
            if result.exit_code == 0:
                ready = json.loads(result.output)
                break
            time.sleep(0.2)
        assert ready is not None, container.logs().decode()
        assert ready["node_id"] == "n1"
        container.stop(timeout=20)
        assert container.wait()["StatusCode"] == 0
        assert b"node_stopped" in container.logs()
    finally:
        container.remove(force=True)
        volume.remove(force=True)


def _wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _broker_files(directory: Path) -> tuple[Path, dict[str, Path]]:
    """A deployment's broker configuration for one node n1: the files the docker runtime
    mounts (mosquitto.py), and the certificates of n1, the controller and an application."""
    ca = CertificateAuthority(directory / "ca", trust_domain="test.qkdnet")
    config = directory / "broker"
    config.mkdir()
    broker = ca.issue(Role.BROKER, "broker", directory / "b", hosts=["127.0.0.1"])
    access = TelemetryAccess.for_network("qkdnet/test", ["n1"], [])
    (config / "mosquitto.conf").write_text(mosquitto_conf(NODE_CONFIG_DIR))
    (config / "acl").write_text(access.mosquitto_acl())
    for source, name in ((broker.ca, "ca.pem"), (broker.cert, "cert.pem"), (broker.key, "key.pem")):
        (config / name).write_bytes(source.read_bytes())
    for path in [config, *config.iterdir()]:  # readable by the broker's user (the nodes')
        if os.geteuid() == 0:
            os.chown(path, NODE_UID, -1)
        else:
            path.chmod(0o755 if path.is_dir() else 0o644)
    clients = {
        "n1": ca.issue(Role.NODE, "n1", directory / "n1"),
        "orchestrator": ca.issue(Role.CONTROLLER, "orchestrator", directory / "c"),
        "sae": ca.issue(Role.SAE, "sae", directory / "s"),
    }
    return config, {who: paths.cert.parent for who, paths in clients.items()}


async def _mqtt_connect(port: int, tls: ssl.SSLContext | None) -> None:
    async with aiomqtt.Client("127.0.0.1", port, timeout=5, tls_context=tls):
        pass


def _tls(where: Path, ca: Path) -> Any:
    return client_tls_context(ca, where / "cert.pem", where / "key.pem")


async def test_broker_image_admits_only_a_deployment_s_certificates(
    docker_engine: Any, built_images: dict[str, ImageResult], tmp_path: Path
) -> None:
    def run(**options: Any) -> Any:
        return docker_engine.containers.run(
            built_images["broker"].reference,
            detach=True,
            labels={TEST_LABEL: "1"},
            ports={f"{BROKER_PORT}/tcp": ("127.0.0.1", None)},
            **options,
        )

    async def started(container: Any) -> int:
        deadline = time.monotonic() + 30
        while b"running" not in container.logs():  # "mosquitto version 2.0.11 running"
            container.reload()
            assert container.status in ("created", "running"), container.logs().decode()
            assert time.monotonic() < deadline, "mosquitto did not start in 30 s"
            await asyncio.sleep(0.1)
        container.reload()
        return int(container.ports[f"{BROKER_PORT}/tcp"][0]["HostPort"])

    # As shipped, the image listens on its own loopback only: nobody gets in.
    shipped = run()
    try:
        port = await started(shipped)
        with pytest.raises(aiomqtt.MqttError):
            await _mqtt_connect(port, None)
    finally:
        shipped.remove(force=True)

    config, clients = _broker_files(tmp_path)
    ca = tmp_path / "ca" / "ca.pem"
    container = run(
        command=["-c", f"{NODE_CONFIG_DIR}/mosquitto.conf"],
        user=f"{NODE_UID}:{NODE_UID}",
        volumes={str(config): {"bind": NODE_CONFIG_DIR, "mode": "ro"}},
    )
    try:
        port = await started(container)
        await asyncio.to_thread(_wait_for_port, "127.0.0.1", port, 30)
        anonymous = ssl.create_default_context(cafile=str(ca))
        with pytest.raises(aiomqtt.MqttError):  # TLS, but no certificate
            await _mqtt_connect(port, anonymous)
        topic, other = "qkdnet/test/node/n1/status", "qkdnet/test/node/n2/status"
        async with aiomqtt.Client("127.0.0.1", port, tls_context=_tls(clients["n1"], ca)) as node:
            await node.publish(other, b'{"state": "lost"}', qos=1, retain=True)  # not its own
            await node.publish(topic, b'{"state": "up"}', qos=1, retain=True)
        async with aiomqtt.Client(
            "127.0.0.1", port, tls_context=_tls(clients["sae"], ca)
        ) as application:
            await application.publish(topic, b'{"state": "forged"}', qos=1, retain=True)
        async with aiomqtt.Client(
            "127.0.0.1", port, tls_context=_tls(clients["orchestrator"], ca)
        ) as controller:
            await controller.subscribe("qkdnet/test/#", qos=1)
            received = {}
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(3):
                    async for message in controller.messages:
                        received[str(message.topic)] = message.payload
        assert received == {topic: b'{"state": "up"}'}
    finally:
        container.remove(force=True)


def _qkdnet_image(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`qkdnet image ARGS` in a child process; it must succeed."""
    result = subprocess.run(
        [sys.executable, "-m", "qkdnet.orchestrator", "image", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_second_build_is_up_to_date(built_images: dict[str, ImageResult]) -> None:
    result = _qkdnet_image("build", timeout=600)
    assert "node image: up to date" in result.stdout
    assert "broker image: up to date" in result.stdout
    assert "node environment volume: up to date" in result.stdout
    assert "built" not in result.stdout


def test_node_environment_volume_matches_the_node_image(
    docker_engine: Any, built_images: dict[str, ImageResult]
) -> None:
    node = docker_engine.images.get(built_images["node"].reference)
    name = built_images["venv"].reference
    assert venv_volume_for(docker_engine, node) == name
    volume = docker_engine.volumes.get(name)
    assert volume.attrs["Labels"][LABEL_IMAGE_ID] == node.id
    # It holds the image's environment, as the node runs it: the same files, read-only.
    listing = docker_engine.containers.run(
        node.id,
        entrypoint=["/bin/sh", "-c", f"ls {VENV_DIR}/bin; touch {VENV_DIR}/x || echo read-only"],
        volumes={name: {"bind": VENV_DIR, "mode": "ro"}},
        user="root",  # only the read-only mount keeps it from writing
        remove=True,
    ).decode()
    assert "qkdnet" in listing.split()
    assert "read-only" in listing
    # Not made again while it matches, and never taken for another image's.
    assert ensure_venv_volume(docker_engine, node) == (name, False)
    base = docker_engine.images.get(built_images["base"].reference)
    assert venv_volume_for(docker_engine, base) is None


def test_image_list_shows_current_images(built_images: dict[str, ImageResult]) -> None:
    result = _qkdnet_image("list", "--json")
    rows = json.loads(result.stdout)
    for component in ("node", "broker"):
        tag = built_images[component].reference
        [row] = [row for row in rows if tag in row["tags"]]
        assert row["component"] == component
        assert row["current"] is True
    table = _qkdnet_image("list")
    venv, node_id = built_images["venv"].reference, built_images["node"].image_id or ""
    short = node_id.removeprefix("sha256:")[:12]
    assert f"node environment volume: {venv} (of node image {short})" in table.stdout


# -- the test session's own image build (tests/container/conftest.py) --------------------------

ROOT = Path(__file__).resolve().parents[2]
IMAGE_TEST = "tests/container/test_images.py::test_images_are_built_and_labelled"
UNIT_TEST = (
    "tests/unit/test_wheelhouse_closure.py::"
    "test_closure_without_the_extra_leaves_its_requirements_out"
)


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A pytest session of its own over `args`: its output."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "-v", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | env,
    )


def _line(lines: list[str], *parts: str) -> int:
    """The index of the first line holding every one of `parts`."""
    return next(i for i, line in enumerate(lines) if all(part in line for part in parts))


def test_a_session_builds_the_images_before_its_container_tests(
    built_images: dict[str, ImageResult],
) -> None:
    result = _pytest(IMAGE_TEST, UNIT_TEST)  # asked for in this order
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    started = _line(lines, "[image build] started in the background")
    node = _line(lines, "[image build] ✓ node image: ")  # up to date, or built after an edit
    unit = _line(lines, "test_closure_without_the_extra", "PASSED")
    container = _line(lines, "test_images_are_built_and_labelled", "PASSED")
    assert started < unit < container  # container tests last, the build running meanwhile
    assert node < container


def test_a_session_without_tests_that_need_images_builds_none() -> None:
    result = _pytest("tests/container/test_images.py", UNIT_TEST, "-k", "closure_without")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert "[image build]" not in result.stdout


def test_a_build_that_outruns_its_budget_is_stopped_and_the_tests_error(
    docker_engine: Any, built_images: dict[str, ImageResult]
) -> None:
    def dangling() -> set[str]:
        filters = {"dangling": True, "label": LABEL_COMPONENT}
        return {image.id for image in docker_engine.images.list(filters=filters)}

    before = dangling()
    result = _pytest(IMAGE_TEST, QKDNET_TEST_IMAGE_BUILD_TIMEOUT="0.2")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[image build] stopping it: ran out of its budget of 0.2 s" in result.stdout
    assert "1 error" in result.stdout
    assert "qkdnet image build ran out of its budget of 0.2 s" in result.stdout
    assert dangling() <= before
