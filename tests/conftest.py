"""Settings of the whole suite.

The suite keeps its deployments out of the user's: `XDG_STATE_HOME` and `XDG_CACHE_HOME` point
into a directory of the session's own before any test runs, so the registry of deployments
(orchestrator/plan/registry.py), default state directories and cached graph layouts of the tests
never mix with those of a network the user has deployed, and every `qkdnet` the tests start
as a subprocess inherits the same.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_HOME = tempfile.mkdtemp(prefix="qkdnet-tests-")


def pytest_configure(config: pytest.Config) -> None:
    os.environ["XDG_STATE_HOME"] = os.path.join(_HOME, "state")
    os.environ["XDG_CACHE_HOME"] = os.path.join(_HOME, "cache")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_HOME, ignore_errors=True)
