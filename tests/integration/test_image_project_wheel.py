"""`qkdnet image build` from an environment whose setuptools is older than the project needs.

A plain `python3.11 -m venv` holds setuptools 65 (ensurepip's), which cannot read pyproject's
`license = "Apache-2.0"` (setuptools 77 can). qkdnet's own dependencies come from this test's
environment through a .pth file placed after the venv's site-packages, so the old setuptools
wins, as in an environment made by a plain `pip install`. The builder must build the project's
wheel with what `[build-system] requires` declares all the same (pip's build isolation fetches
it from the package index, as the wheelhouse does).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from qkdnet.orchestrator.runtime.images import SourceTree

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]

BUILD_WHEEL = """
import sys
from pathlib import Path
from qkdnet.orchestrator.runtime.images import ImageBuilder, SourceTree
builder = ImageBuilder(SourceTree.load(Path(sys.argv[1])), None)
builder.log_dir = Path(sys.argv[2])
wheel, result = builder.project_wheel(Path(sys.argv[2]) / "work")
print(wheel.name, result.status)
"""


@pytest.fixture(scope="module")
def old_setuptools_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a venv with ensurepip's setuptools (65) that imports qkdnet."""
    venv = tmp_path_factory.mktemp("old") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    Path(purelib, "zz-qkdnet-deps.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    version = subprocess.run(
        [
            str(python),
            "-c",
            "import setuptools, qkdnet.orchestrator; print(setuptools.__version__)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert int(version.split(".")[0]) < 77, f"setuptools {version} is not old enough to test"
    return python


def test_the_environment_s_own_setuptools_cannot_build_the_project(
    old_setuptools_python: Path, tmp_path: Path
) -> None:
    # What `image build` did before: pip wheel --no-build-isolation, with this setuptools (on a
    # copy of the project's files, as the builder does, so the checkout stays clean).
    source = tmp_path / "source"
    for relative in SourceTree.load(ROOT).project_files():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, source / relative)
    command = ["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir"]
    result = subprocess.run(
        [str(old_setuptools_python), *command, str(tmp_path / "out"), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "project.license" in result.stdout + result.stderr


def test_image_build_makes_the_project_wheel_with_the_declared_build_requirements(
    old_setuptools_python: Path, tmp_path: Path
) -> None:
    result = subprocess.run(
        [str(old_setuptools_python), "-c", BUILD_WHEEL, str(ROOT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    log = tmp_path / "project-wheel.log"
    assert result.returncode == 0, result.stderr + (log.read_text() if log.exists() else "")
    assert result.stdout.split() == ["qkdnet-0.1.0-py3-none-any.whl", "built"]
