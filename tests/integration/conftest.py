"""Fixtures that start real node processes on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from qkdnet.node.config import ChannelConfig, ProcessingConfig
from qkdnet.orchestrator.cli.link_demo import LinkPair

PairFactory = Callable[..., LinkPair]


@pytest.fixture
async def link_pair(tmp_path: Path) -> AsyncIterator[PairFactory]:
    """make(channel=..., processing=...) -> a LinkPair under tmp_path, stopped at teardown."""
    pairs: list[LinkPair] = []

    def make(channel: dict[str, Any] | None = None, **processing: Any) -> LinkPair:
        pair = LinkPair(
            tmp_path / f"pair{len(pairs)}",
            ChannelConfig.model_validate({"length_km": 10, **(channel or {})}),
            ProcessingConfig.model_validate({"speedup": 50, "frame_bits": 20_000, **processing}),
        )
        pairs.append(pair)
        return pair

    yield make
    for pair in pairs:
        await pair.stop()
