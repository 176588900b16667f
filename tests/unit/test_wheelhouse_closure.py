"""The wheelhouse's set of wheels: pyproject's dependencies and their closure, pinned by the lock;
and what `ImageBuilder.build` does before its long steps.

No Docker engine needed: wheels are small fakes that carry only their METADATA, and the engine a
fake that holds no image.
"""

from __future__ import annotations

import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from docker.errors import ImageNotFound

from qkdnet.orchestrator.runtime.images import (
    BASE_IMAGE,
    ImageBuilder,
    ImageBuildError,
    ImageEvent,
    SourceTree,
    resolve_runtime_closure,
    wheelhouse,
)

REQUIRES = {
    "app-core": ["helper>=1", "fastlib; extra == 'speed'", "winonly; sys_platform == 'win32'"],
    "helper": ["tiny", "old-backport; python_version < '3.8'"],
    "fastlib": [],
    "tiny": [],
    "web": ["helper", "app-core[speed]"],
}
LOCK = {
    "app-core": "App_Core==2.0",
    "helper": "helper==1.5",
    "fastlib": "fastlib==0.3",
    "tiny": "tiny==9",
    "web": "Web==1.1",
    "winonly": "winonly==1",
    "old-backport": "old-backport==1",
    "mypy": "mypy==2.4.1",  # a dev tool nothing at runtime needs
}


def fake_fetch(directory: Path, fetched: list[list[str]]) -> Callable[[list[str]], dict[str, Path]]:
    """A `pip wheel` stand-in: wheels holding METADATA with the requirements of REQUIRES."""

    def fetch(pins: list[str]) -> dict[str, Path]:
        fetched.append(pins)
        for pin in pins:
            name, _, version = pin.partition("==")
            stem = f"{name.replace('-', '_')}-{version}"
            metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            key = name.lower().replace("_", "-")
            metadata += "".join(f"Requires-Dist: {r}\n" for r in REQUIRES.get(key, []))
            with zipfile.ZipFile(directory / f"{stem}-py3-none-any.whl", "w") as wheel:
                wheel.writestr(f"{stem}.dist-info/METADATA", metadata)
        return {
            path.name.split("-")[0].lower().replace("_", "-"): path
            for path in directory.glob("*.whl")
        }

    return fetch


def test_closure_follows_requirements_markers_and_extras(tmp_path: Path) -> None:
    fetched: list[list[str]] = []
    pins = resolve_runtime_closure(["web"], LOCK, fake_fetch(tmp_path, fetched))
    assert pins == {
        "app-core": "App_Core==2.0",
        "fastlib": "fastlib==0.3",
        "helper": "helper==1.5",
        "tiny": "tiny==9",
        "web": "Web==1.1",
    }
    assert sum(len(level) for level in fetched) == len(pins)  # each wheel made once


def test_closure_without_the_extra_leaves_its_requirements_out(tmp_path: Path) -> None:
    pins = resolve_runtime_closure(["app-core"], LOCK, fake_fetch(tmp_path, []))
    assert set(pins) == {"app-core", "helper", "tiny"}


def test_a_requirement_the_lock_does_not_pin_is_named(tmp_path: Path) -> None:
    lock = {name: pin for name, pin in LOCK.items() if name != "tiny"}
    with pytest.raises(ImageBuildError, match=r"pins no version of tiny \(required by helper"):
        resolve_runtime_closure(["app-core"], lock, fake_fetch(tmp_path, []))


def test_a_pin_outside_the_required_range_is_named(tmp_path: Path) -> None:
    lock = LOCK | {"helper": "helper==0.9"}
    with pytest.raises(ImageBuildError, match=r"pins helper==0.9, but App_Core==2.0 requires"):
        resolve_runtime_closure(["app-core"], lock, fake_fetch(tmp_path, []))


# -- before the long steps ---------------------------------------------------------------------


class _NoImages:
    """A Docker client whose engine holds no image: every base has to be made."""

    class images:
        @staticmethod
        def get(reference: str) -> Any:
            raise ImageNotFound(f"no such image: {reference}")

        @staticmethod
        def list(**filters: Any) -> list[Any]:
            return []


def test_a_project_wheel_that_cannot_build_fails_before_the_long_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    long_steps: list[str] = []
    monkeypatch.setattr(ImageBuilder, "_make_base", lambda *a, **k: long_steps.append("base"))
    monkeypatch.setattr(
        ImageBuilder, "ensure_wheelhouse", lambda *a, **k: long_steps.append("wheelhouse")
    )

    def broken_wheel(self: ImageBuilder, workdir: Path) -> Any:
        raise ImageBuildError("the wheel of qkdnet did not build")

    monkeypatch.setattr(ImageBuilder, "project_wheel", broken_wheel)
    events: list[ImageEvent] = []
    builder = ImageBuilder(SourceTree.find(), _NoImages(), on_event=events.append)
    with pytest.raises(ImageBuildError, match="did not build"):
        builder.build()
    assert long_steps == []
    assert [e.component for e in events if e.kind == "start"] == []


class _Image:
    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels


def test_a_base_made_with_another_package_list_is_stale() -> None:
    builder = ImageBuilder(SourceTree.find(), _NoImages())
    script = (builder.source.root / "deploy" / "make-base-image.sh").read_text()
    [include] = [
        line.removeprefix("INCLUDE=") for line in script.splitlines() if line[:8] == "INCLUDE="
    ]
    assert {"curl", "iputils-ping", "iproute2"} <= set(include.split(","))
    base = {"org.qkdnet.component": "base"}
    assert not builder._base_is_stale(_Image(base | {"org.qkdnet.base.include": include}))
    older = include.replace(",curl", "").replace(",iputils-ping", "")
    assert builder._base_is_stale(_Image(base | {"org.qkdnet.base.include": older}))
    # Not ours (another --base, or no label): never remade.
    assert not builder._base_is_stale(_Image({"org.qkdnet.base.include": older}))
    other = ImageBuilder(SourceTree.find(), _NoImages(), base="python:3.11-slim")
    assert not other._base_is_stale(_Image(base | {"org.qkdnet.base.include": older}))
    assert builder.base == BASE_IMAGE


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        (
            [
                "  error: subprocess-exited-with-error",
                "      configuration error: `project.license` must be valid exactly by one",
                "error: metadata-generation-failed",
                "hint: See above for details.",
            ],
            "configuration error: `project.license` must be valid exactly by one",
        ),
        (["/tmp/x/bin/python: No module named pip"], "this Python environment has no pip"),
        (
            ["ERROR: No matching distribution found for setuptools>=80"],
            "No matching distribution found for setuptools>=80: the isolated build fetches",
        ),
    ],
)
def test_a_failed_project_wheel_says_why(output: list[str], reason: str) -> None:
    assert wheelhouse._pip_failure(output).startswith(reason)


def test_the_project_files_are_every_module_of_every_package_subpackages_included() -> None:
    """What the image's wheel is built from: every tracked module of the packages, those of
    subpackages (qkdnet.node.core in node/core, by its parent's package-dir) included."""
    root = Path(__file__).parents[2]
    tracked = subprocess.run(
        ["git", "ls-files", "node", "orchestrator", "proto/qkdnet/v1", "examples"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    modules = {Path(name) for name in tracked if name.endswith(".py")}
    files = set(SourceTree.load(root).project_files())
    assert Path("node/core/cascade.py") in files
    assert modules <= files
    assert all((root / path).is_file() for path in files)
