"""The link's measured figures against the analytic decoy-state model (GYS parameter set).

Each case runs the whole link, both ends joined in memory (`qkdnet.node.testing`), collects
several frames and compares the measured QBER and secret key per pulse with the model the
link reports (the vacuum + weak decoy bound of Ma et al. 2005 evaluated at the expected gains,
with the reconciliation efficiency Cascade achieved). Tolerances are statistical: the QBER from
the binomial spread of the reconciled bits; the key rate from the per-frame spread.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qkdnet.node.core.channel_model import ChannelParameters, max_distance, model_figures
from qkdnet.node.protocol.link_stats import LinkStatus

from .test_link_in_memory import _link, _until

pytestmark = pytest.mark.slow

GYS = ChannelParameters(length_km=0.0)


async def _run(
    tmp_path: Path, until: Callable[[LinkStatus], bool], channel: dict[str, Any], **processing: Any
) -> LinkStatus:
    """Run a link in memory until `until(status)` holds at the transmitter; its status."""
    async with _link(tmp_path, channel=channel, **processing) as ends:
        await _until(lambda: until(ends.transmitter.stats.snapshot()), timeout=240)
        return ends.transmitter.stats.snapshot()


@pytest.mark.parametrize("length_km", [10.0, 50.0, 100.0, 120.0])
async def test_key_rate_matches_decoy_model(tmp_path: Path, length_km: float) -> None:
    # Enough pulses per frame for good decoy statistics.
    status = await _run(
        tmp_path, lambda s: s.frames_ok >= 6, {"length_km": length_km}, frame_bits=100_000
    )
    # QBER: binomial over the reconciled bits, 5 sigma.
    q = status.model_qber
    sigma_q = math.sqrt(q * (1 - q) / status.reconciled_bits)
    assert abs(status.qber - q) < 5 * sigma_q + 1e-4, (status.qber, q)
    # Secret key per pulse: the finite frames cost a little (security margin, estimation
    # noise through a concave entropy); allow 10 % either way, 20 % from 100 km on, where
    # the single-photon bounds of a frame spread by about 10 %.
    measured = status.secret_fraction_per_pulse
    model = status.model_secret_fraction_per_pulse
    low, high = (0.8, 1.2) if length_km >= 100 else (0.9, 1.1)
    assert model > 0
    assert low * model <= measured <= high * model, (measured, model, status.frames_aborted)


async def test_no_key_beyond_the_decoy_cutoff(tmp_path: Path) -> None:
    cutoff = max_distance(GYS, 1.1, decoy=True, practical=True)
    status = await _run(
        tmp_path, lambda s: s.frames_aborted >= 4, {"length_km": cutoff + 25.0}, frame_bits=50_000
    )
    assert status.secret_bits == 0
    assert status.store_bits == 0


@pytest.mark.parametrize("decoy", [True, False])
async def test_gllp_cutoff_without_decoys(tmp_path: Path, decoy: bool) -> None:
    gllp_cutoff = max_distance(GYS, 1.1, decoy=False, practical=True, optimize_mu=True)
    decoy_cutoff = max_distance(GYS, 1.1, decoy=True, practical=True)
    assert gllp_cutoff < 0.6 * decoy_cutoff
    # Just beyond the GLLP distance, only the decoy-state link still makes key.
    length = min(gllp_cutoff + 10.0, 0.7 * decoy_cutoff)
    channel = {"length_km": length, "decoy": decoy}
    if decoy:
        status = await _run(tmp_path, lambda s: s.frames_ok >= 2, channel, frame_bits=50_000)
        assert status.secret_bits > 0
    else:
        status = await _run(tmp_path, lambda s: s.frames_aborted >= 4, channel, frame_bits=50_000)
        assert status.secret_bits == 0


async def test_gllp_link_below_its_cutoff_makes_key(tmp_path: Path) -> None:
    gllp_cutoff = max_distance(GYS, 1.1, decoy=False, practical=True, optimize_mu=True)
    channel = {"length_km": 0.4 * gllp_cutoff, "decoy": False}
    status = await _run(tmp_path, lambda s: s.frames_ok >= 4, channel, frame_bits=100_000)
    model = status.model_secret_fraction_per_pulse
    assert model > 0
    assert 0.8 * model <= status.secret_fraction_per_pulse <= 1.15 * model


@pytest.mark.parametrize("fraction", [0.2, 0.6])
async def test_eavesdropper_raises_qber_as_the_model_says(tmp_path: Path, fraction: float) -> None:
    channel = {"length_km": 10.0, "eavesdrop_fraction": fraction}
    status = await _run(
        tmp_path, lambda s: s.frames_ok + s.frames_aborted >= 4, channel, frame_bits=50_000
    )
    params = ChannelParameters(length_km=10.0, eavesdrop_fraction=fraction)
    expected = model_figures(params, 1.1).e_mu
    sigma = math.sqrt(expected * (1 - expected) / status.sample_bits)
    assert abs(status.sample_qber - expected) < 5 * sigma, (status.sample_qber, expected)
    assert status.model_qber == pytest.approx(expected)
    if expected > 0.11:
        # Above the threshold every round aborts and nothing is stored.
        assert status.frames_ok == 0
        assert status.aborts_by_reason["qber"] == status.frames_aborted
        assert status.secret_bits == 0
        assert status.store_bits == 0
