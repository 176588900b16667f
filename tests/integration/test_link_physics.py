"""The link's measured figures against the analytic decoy-state model (GYS parameter set).

Each case runs two real node processes with a large speed-up, collects several frames and
compares the measured QBER and secret key per pulse with the model the node reports (the
vacuum + weak decoy bound of Ma et al. 2005 evaluated at the expected gains, with the
reconciliation efficiency Cascade achieved). Tolerances are statistical: the QBER from the
binomial spread of the reconciled bits; the key rate from the per-frame spread.
"""

from __future__ import annotations

import math

import pytest

from qkdnet.node.core.channel_model import ChannelParameters, max_distance, model_figures

from .conftest import PairFactory
from .test_link_keys import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GYS = ChannelParameters(length_km=0.0)


def _processing(length_km: float) -> dict[str, float]:
    # Enough pulses per frame for good decoy statistics, fast enough in wall time.
    return {"speedup": 1e5, "frame_bits": 100_000}


@pytest.mark.parametrize("length_km", [10.0, 50.0, 100.0, 120.0])
async def test_key_rate_matches_decoy_model(link_pair: PairFactory, length_km: float) -> None:
    pair = link_pair({"length_km": length_km}, **_processing(length_km))
    await pair.start()
    status = await wait_for(pair, lambda s: s.frames_ok >= 6, timeout=240)
    await pair.stop()
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


async def test_no_key_beyond_the_decoy_cutoff(link_pair: PairFactory) -> None:
    cutoff = max_distance(GYS, 1.1, decoy=True, practical=True)
    pair = link_pair({"length_km": cutoff + 25.0}, speedup=1e5, frame_bits=50_000)
    await pair.start()
    status = await wait_for(pair, lambda s: s.frames_aborted >= 4, timeout=240)
    await pair.stop()
    assert status.secret_bits == 0
    assert status.store_bits == 0


@pytest.mark.parametrize("decoy", [True, False])
async def test_gllp_cutoff_without_decoys(link_pair: PairFactory, decoy: bool) -> None:
    gllp_cutoff = max_distance(GYS, 1.1, decoy=False, practical=True, optimize_mu=True)
    decoy_cutoff = max_distance(GYS, 1.1, decoy=True, practical=True)
    assert gllp_cutoff < 0.6 * decoy_cutoff
    # Just beyond the GLLP distance, only the decoy-state link still makes key.
    length = min(gllp_cutoff + 10.0, 0.7 * decoy_cutoff)
    pair = link_pair({"length_km": length, "decoy": decoy}, speedup=1e5, frame_bits=50_000)
    await pair.start()
    if decoy:
        status = await wait_for(pair, lambda s: s.frames_ok >= 2, timeout=240)
        assert status.secret_bits > 0
    else:
        status = await wait_for(pair, lambda s: s.frames_aborted >= 4, timeout=240)
        assert status.secret_bits == 0
    await pair.stop()


async def test_gllp_link_below_its_cutoff_makes_key(link_pair: PairFactory) -> None:
    gllp_cutoff = max_distance(GYS, 1.1, decoy=False, practical=True, optimize_mu=True)
    pair = link_pair(
        {"length_km": 0.4 * gllp_cutoff, "decoy": False}, speedup=1e5, frame_bits=100_000
    )
    await pair.start()
    status = await wait_for(pair, lambda s: s.frames_ok >= 4, timeout=240)
    await pair.stop()
    model = status.model_secret_fraction_per_pulse
    assert model > 0
    assert 0.8 * model <= status.secret_fraction_per_pulse <= 1.15 * model


@pytest.mark.parametrize("fraction", [0.2, 0.6])
async def test_eavesdropper_raises_qber_as_the_model_says(
    link_pair: PairFactory, fraction: float
) -> None:
    pair = link_pair(
        {"length_km": 10.0, "eavesdrop_fraction": fraction}, speedup=1e5, frame_bits=50_000
    )
    await pair.start()
    status = await wait_for(pair, lambda s: s.frames_ok + s.frames_aborted >= 4, timeout=240)
    await pair.stop()
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
