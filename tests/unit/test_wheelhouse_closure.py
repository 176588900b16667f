"""The wheelhouse's set of wheels: pyproject's dependencies and their closure, pinned by the lock.

No Docker engine needed: wheels are small fakes that carry only their METADATA.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from qkdnet.orchestrator.images import ImageBuildError, resolve_runtime_closure

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
