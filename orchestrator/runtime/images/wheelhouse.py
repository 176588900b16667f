"""The wheelhouse: the runtime closure of pyproject's dependencies at the versions
requirements.lock pins, and how pip failures read.
"""

from __future__ import annotations

import contextlib
import email.parser
import os
import shutil
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from qkdnet.node.errors import ConfigError

from .events import ImageBuildError


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
