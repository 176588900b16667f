"""Files only their owner may read: state directories 0700, everything in them 0600.

Key stores (with their SQLite journals), delivered keys, private keys and link secrets must never
be readable by another local user, not even for an instant: qkdnet creates files with their
final mode (`os.open(..., 0o600)`, `write_private`), and the processes that run a deployment's
nodes and broker use the umask `PRIVATE_UMASK`, so that files SQLite or a library creates on its
own (the WAL and shared-memory files of a store, logs) are born private too. `tighten` repairs
what an older version, a copy or a user left looser.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "PRIVATE_UMASK",
    "create_private",
    "looser_than_private",
    "open_private_log",
    "private_dir",
    "tighten",
    "write_private",
]

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PRIVATE_UMASK = 0o077


def private_dir(path: Path) -> Path:
    """Make `path` (and any missing parent) a directory only its owner may enter."""
    missing = []
    for parent in [path, *path.parents]:
        if parent.exists():
            break
        missing.append(parent)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, PRIVATE_DIR_MODE)
    mode = path.stat().st_mode
    if not stat.S_ISDIR(mode):
        raise FileExistsError(errno.EEXIST, "File exists (not a directory)", str(path))
    if mode & 0o077:
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


def create_private(path: Path) -> None:
    """Create `path` empty and 0600 unless it exists (SQLite then opens it as it is)."""
    private_dir(path.parent)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))


def write_private(path: Path, data: bytes | str) -> None:
    """Replace `path` by `data`, readable by its owner only from the first byte.

    The data goes to a private temporary file that is renamed over `path`, so that readers never
    see a half-written file and an existing looser file is never written into.
    """
    private_dir(path.parent)
    blob = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # the file may have existed with another mode
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def open_private_log(path: Path) -> BinaryIO:
    """Open `path` for appending, created 0600 (a log of one of the deployment's processes)."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE)
    return os.fdopen(fd, "ab")


def looser_than_private(mode: int) -> bool:
    """Whether a file or directory mode lets group or others in."""
    return bool(mode & 0o077)


def tighten(root: Path) -> list[Path]:
    """Take group and other permissions off `root` and everything under it.

    Returns the paths that were looser. Symbolic links are neither followed nor changed.
    """
    changed: list[Path] = []
    for path in [root, *_walk(root)]:
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode) or not looser_than_private(info.st_mode):
            continue
        os.chmod(path, stat.S_IMODE(info.st_mode) & ~0o077)
        changed.append(path)
    return changed


def _walk(root: Path) -> Iterator[Path]:
    for directory, dirs, files in os.walk(root, followlinks=False):
        for name in [*dirs, *files]:
            yield Path(directory) / name
