"""A real encryptor fed by qkdnet: `qkdnet demo --example wireguard` in containers, two
wireguard-go encryptors rotating their preshared key from an ETSI 004 stream while a ping
crosses the tunnel, and nothing of it left afterwards."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qkdnet.orchestrator.runtime.docker_runtime import LABEL_DEPLOYMENT
from qkdnet.orchestrator.runtime.images import ImageResult

pytestmark = [pytest.mark.container, pytest.mark.timeout(600)]

CLI = [sys.executable, "-m", "qkdnet.orchestrator.cli.main"]
ROW = re.compile(
    r"│\s+(\d+)\s+│\s+([0-9a-f]{16})\s+│\s+([0-9a-f]{16})\s+│\s+(\w+)\s+│.*│\s+(\S+)\s+│"
)


def test_wireguard_keeps_a_ping_flowing_across_key_rotations(
    built_images: dict[str, ImageResult], docker_engine: Any, tmp_path: Path
) -> None:
    env = os.environ | {"COLUMNS": "160", "XDG_STATE_HOME": str(tmp_path / "xdg")}
    done = subprocess.run(
        [
            *CLI,
            "demo",
            "--example",
            "wireguard",
            "--duration",
            "25",
            "--state-dir",
            tmp_path / "wg",
        ],
        capture_output=True,
        text=True,
        timeout=540,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [ROW.search(line) for line in done.stdout.splitlines()]
    rotations = [m.groups() for m in rows if m is not None]
    assert len(rotations) >= 5, done.stdout  # 25 s at one key every 5 s
    for index, site_a, site_b, same, pings in rotations:
        assert site_a == site_b, (index, site_a, site_b)
        assert same == "yes"
        if index != "0":
            assert pings.isdigit(), (index, pings)
            assert int(pings) > 0, (index, pings)
    assert len({row[1] for row in rotations}) == len(rotations)  # a new key every time
    leftover = docker_engine.containers.list(
        all=True, filters={"label": f"{LABEL_DEPLOYMENT}=wireguard"}
    )
    assert leftover == []
