"""The first `make demo`/`make test` sets up .venv with a line per step, never a silent minute.

The Makefile's own recipe runs on a lock of one local wheel (no package index), into a venv
under the test's directory: what the user sees is the same as with requirements.lock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("make") is None, reason="no make"),
]

ROOT = Path(__file__).resolve().parents[2]


def _wheel(directory: Path, name: str, version: str) -> None:
    """A minimal pure-Python wheel of one empty module."""
    stem = f"{name}-{version}"
    directory.mkdir()
    with zipfile.ZipFile(directory / f"{stem}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{name}/__init__.py", "")
        wheel.writestr(
            f"{stem}.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        )
        wheel.writestr(
            f"{stem}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(f"{stem}.dist-info/RECORD", "")


def test_first_setup_prints_a_line_per_step_and_per_package(tmp_path: Path) -> None:
    _wheel(tmp_path / "wheels", "qkdnet_probe", "1.0")
    lock = tmp_path / "lock.txt"
    lock.write_text("qkdnet_probe==1.0\n")
    venv = tmp_path / "venv"
    env = os.environ | {
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(tmp_path / "wheels"),
        "PIP_CONFIG_FILE": os.devnull,
    }
    variables = [f"PYTHON={sys.executable}", f"VENV={venv}", f"LOCK={lock}"]
    result = subprocess.run(
        ["make", "--no-print-directory", *variables, f"{venv}/.deps-installed"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"==> setting up {venv} (first run")
    assert lines[1].startswith(f"==> [1/3] creating {venv} with Python 3.11")
    assert lines[2:] == [
        "==> [2/3] upgrading pip",
        f"==> [3/3] installing the 1 pinned packages of {lock}",
        "    [1/1] qkdnet_probe-1.0-py3-none-any.whl",  # pip names a local wheel by its file
        f"    unpacking them into {venv} (half a minute or so)",
        f"==> {venv} ready",
    ]
    assert (venv / ".deps-installed").exists()
    assert list((venv / "lib").glob("python3.11/site-packages/qkdnet_probe/__init__.py"))
