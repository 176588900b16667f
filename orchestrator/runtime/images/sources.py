"""The checkout the node image is built from, and the hashes of what goes into an image."""

from __future__ import annotations

import hashlib
import sys
import sysconfig
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qkdnet.node.errors import ConfigError

_FORMAT = "1"  # part of every input hash: bump it when the way images are assembled changes
_CACHE = Path("build") / "images"  # under the checkout; build/ is ignored by git
_NODE_DOCKERFILE = Path("deploy") / "node.Dockerfile"


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
