"""Live faults inside a node, in memory: the classical-channel shaping (delay, jitter, rate,
loss as TCP retransmission timeouts, order), live changes of a link's quantum channel (the
emulation and the model follow them, the ends still agree), and cuts."""

from __future__ import annotations

import asyncio
import inspect
import math
import random
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest

from qkdnet.node.config import LinkConfig
from qkdnet.node.core.channel_model import (
    ChannelChange,
    ChannelParameters,
    model_figures,
    qber_with_eavesdropper,
)
from qkdnet.node.core.quantum_channel import measure, transmit
from qkdnet.node.edge.channel_shaping import (
    ALL_PEERS,
    MAX_RETRANSMISSIONS,
    MAX_RTO_S,
    MIN_RTO_S,
    ChannelShaping,
    Flow,
    ShapedStream,
    Shaping,
)
from qkdnet.node.edge.control_grpc import ControlService
from qkdnet.node.edge.grpc_authorization import POLICY
from qkdnet.node.edge.peer_faults import PeerFaults, shaped_peer_channels
from qkdnet.node.identity import Role
from qkdnet.node.protocol.link import params_digest
from qkdnet.node.protocol.receiver import ReceiverLink
from qkdnet.node.protocol.transmitter import TransmitterLink
from qkdnet.v1 import control_pb2, relay_pb2


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _shaping(clock: _Clock, seed: int = 1) -> ChannelShaping:
    return ChannelShaping(clock=clock, rng=random.Random(seed))


# -- shaping ---------------------------------------------------------------------------------


def test_nothing_is_held_back_without_shaping() -> None:
    shaping = _shaping(_Clock())
    assert shaping.arrival("b", 1000, Flow()) is None


def test_delay_and_jitter_and_order() -> None:
    clock = _Clock()
    shaping = _shaping(clock)
    shaping.set("b", Shaping(delay_ms=50))
    assert shaping.arrival("b", 10, Flow()) == pytest.approx(100.05)
    shaping.set("b", Shaping(delay_ms=50, jitter_ms=20))
    flow = Flow()
    arrivals = [shaping.arrival("b", 10, flow) for _ in range(500)]
    assert all(a is not None for a in arrivals)
    times = cast(list[float], arrivals)
    assert times == sorted(times), "a stream never reorders"
    independent = [cast(float, shaping.arrival("b", 10, Flow())) - 100 for _ in range(2000)]
    assert 0.030 - 1e-9 <= min(independent) < 0.032
    assert 0.068 < max(independent) <= 0.070 + 1e-9
    assert np.mean(independent) == pytest.approx(0.050, abs=0.002)


def test_a_peer_s_own_shaping_wins_over_the_node_wide_one() -> None:
    clock = _Clock()
    shaping = _shaping(clock)
    shaping.set(ALL_PEERS, Shaping(delay_ms=100))
    shaping.set("c", Shaping(delay_ms=10))
    assert shaping.arrival("b", 1, Flow()) == pytest.approx(100.1)
    assert shaping.arrival("c", 1, Flow()) == pytest.approx(100.01)
    shaping.set("c", Shaping())  # nothing: removed, the node-wide one applies again
    assert shaping.arrival("c", 1, Flow()) == pytest.approx(100.1)
    assert shaping.settings() == {ALL_PEERS: Shaping(delay_ms=100)}


def test_the_rate_queues_messages_behind_each_other() -> None:
    clock = _Clock()
    shaping = _shaping(clock)
    shaping.set("b", Shaping(rate_kbit=80))  # 10 kB/s
    first = shaping.arrival("b", 1000, Flow())
    second = shaping.arrival("b", 1000, Flow())  # another flow, the same interface
    assert first == pytest.approx(100.1)
    assert second == pytest.approx(100.2)
    clock.now = 200.0  # idle since: no queue
    assert shaping.arrival("b", 500, Flow()) == pytest.approx(200.05)


def test_a_loss_costs_retransmission_timeouts_that_double() -> None:
    clock = _Clock()
    shaping = _shaping(clock)
    spec = Shaping(delay_ms=40, jitter_ms=0, loss_percent=100)
    shaping.set("b", spec)
    rto = MIN_RTO_S + 2 * 0.040
    assert spec.rto_s == pytest.approx(rto)
    waited, timeout = 0.0, rto
    for _ in range(MAX_RETRANSMISSIONS):
        waited += timeout
        timeout = min(2 * timeout, MAX_RTO_S)
    # Every try lost: TCP's back-off to its last retransmission (it would give up there).
    assert shaping.arrival("b", 10, Flow()) == pytest.approx(100.04 + waited)


def test_random_losses_delay_a_fraction_of_the_messages_by_whole_timeouts() -> None:
    clock = _Clock()
    shaping = _shaping(clock, seed=7)
    spec = Shaping(delay_ms=10, loss_percent=20)
    shaping.set("b", spec)
    extra = np.array(
        [cast(float, shaping.arrival("b", 10, Flow())) - 100.01 for _ in range(20_000)]
    )
    rto = spec.rto_s
    # 0 (delivered), 1, 3, 7, ... RTOs (lost once, twice, three times in a row)
    allowed = np.array([0.0] + [rto * (2**k - 1) for k in range(1, 8)])
    assert np.all(np.min(np.abs(extra[:, None] - allowed[None, :]), axis=1) < 1e-9)
    lost = np.mean(extra > 0)
    assert lost == pytest.approx(0.20, abs=0.015)
    twice = np.mean(extra > 2 * rto)  # lost, and its retransmission lost too
    assert twice == pytest.approx(0.04, abs=0.008)


@pytest.mark.parametrize(
    "fields",
    [{"delay_ms": -1}, {"loss_percent": 101}, {"rate_kbit": math.inf}, {"jitter_ms": math.nan}],
)
def test_shaping_refuses_what_no_path_does(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be in"):
        Shaping(**fields)


class _Stream:
    """A Duplex that records when each message was written."""

    def __init__(self) -> None:
        self.written: list[tuple[float, int]] = []

    async def read(self) -> Any:
        return None

    async def write(self, message: Any) -> None:
        self.written.append((asyncio.get_running_loop().time(), message.hop))


async def test_a_shaped_stream_pipelines_in_order_and_stops_when_closed() -> None:
    loop = asyncio.get_running_loop()
    shaping = ChannelShaping(clock=loop.time, rng=random.Random(3))
    stream = _Stream()
    shaped = ShapedStream(stream, shaping, "b", Flow())
    await shaped.write(relay_pb2.RelayHeader(hop=0))  # no shaping yet: straight through
    assert [hop for _, hop in stream.written] == [0]
    shaping.set("b", Shaping(delay_ms=60, jitter_ms=40))
    start = loop.time()
    for hop in range(1, 21):
        await shaped.write(relay_pb2.RelayHeader(hop=hop))
    assert loop.time() - start < 0.02, "a write returns at once: messages overlap in flight"
    for _ in range(200):  # the last is due within 0.1 s
        if len(stream.written) == 21:
            break
        await asyncio.sleep(0.01)
    hops = [hop for _, hop in stream.written]
    assert hops == list(range(21))
    assert all(when - start >= 0.019 for when, _ in stream.written[1:])
    shaping.set("b", Shaping(delay_ms=5000))
    await shaped.write(relay_pb2.RelayHeader(hop=99))
    shaped.close()
    await asyncio.sleep(0.05)
    assert len(stream.written) == 21


# -- the quantum channel, changed live ---------------------------------------------------------


def test_a_channel_change_replaces_or_adds_and_is_checked() -> None:
    configured = ChannelParameters(length_km=20, eavesdrop_fraction=0.1)
    changed = ChannelChange(eavesdrop_fraction=0.5, extra_loss_db=3, misalignment_error=0.02)
    p = changed.apply(configured)
    assert (p.eavesdrop_fraction, p.extra_loss_db, p.misalignment_error) == (0.5, 3.0, 0.02)
    assert p.length_km == 20
    assert ChannelChange(extra_loss_db=2).apply(p).extra_loss_db == 5  # adds to what it is given
    assert ChannelChange().apply(configured) == configured
    assert ChannelChange().is_none
    assert not changed.is_none
    for bad in ({"eavesdrop_fraction": 1.5}, {"extra_loss_db": -1}, {"misalignment_error": 0.6}):
        with pytest.raises(ValueError, match="must be in"):
            ChannelChange(**bad)


def test_extra_loss_is_loss_in_the_model() -> None:
    p = ChannelParameters(length_km=30)
    lossier = ChannelChange(extra_loss_db=3).apply(p)
    # 3 dB more is 3 / 0.21 km more fibre for the model
    longer = ChannelParameters(length_km=30 + 3 / 0.21)
    assert model_figures(lossier, 1.16).transmittance == pytest.approx(
        model_figures(longer, 1.16).transmittance
    )
    assert model_figures(lossier, 1.16).secret_per_pulse < model_figures(p, 1.16).secret_per_pulse


def test_the_emulation_follows_a_changed_channel() -> None:
    """Detections and the sifted QBER of emulated pulses match the model with the change."""
    rng = np.random.default_rng(11)
    configured = ChannelParameters(length_km=10)
    for change in (
        ChannelChange(eavesdrop_fraction=0.5),
        ChannelChange(extra_loss_db=6),
        ChannelChange(misalignment_error=0.08),
    ):
        params = change.apply(configured)
        model = model_figures(params, 1.16)
        pulses = 40_000_000
        alice, out, _ = transmit(rng, params, 0, pulses)
        basis, bits = measure(rng, out)
        expected = model.detections_per_pulse * pulses
        assert abs(len(alice) - expected) < 5 * math.sqrt(expected), change
        signal = (alice.intensity_class == 0) & (alice.basis == basis)
        qber = float(np.mean(alice.bit[signal] != bits[signal]))
        sigma = math.sqrt(model.e_mu * (1 - model.e_mu) / signal.sum())
        assert abs(qber - model.e_mu) < 5 * sigma, (change, qber, model.e_mu)
    eve = ChannelChange(eavesdrop_fraction=0.5).apply(configured)
    base = model_figures(configured, 1.16).e_mu
    assert model_figures(eve, 1.16).e_mu == pytest.approx(qber_with_eavesdropper(base, 0.5))


def _link_config(tmp_path: Path) -> LinkConfig:
    return LinkConfig.model_validate(
        {"peer": "b", "psk_file": str(tmp_path / "psk"), "channel": {"length_km": 10}}
    )


def _end(cls: type[Any], tmp_path: Path) -> Any:
    none = cast(Any, None)
    return cls(
        node_id="a",
        config=_link_config(tmp_path),
        store=none,
        auth=none,
        executor=none,
        **({"connector": none} if cls is TransmitterLink else {}),
    )


def test_a_link_end_models_the_changed_channel_and_still_agrees_with_its_peer(
    tmp_path: Path,
) -> None:
    link = _end(ReceiverLink, tmp_path)
    digest = params_digest(link.link_id, link.configured, link.config)
    before = link.stats.snapshot()
    link.change_channel(ChannelChange(eavesdrop_fraction=0.5, misalignment_error=0.05))
    after = link.stats.snapshot()
    assert (after.eavesdrop_fraction, after.misalignment_error) == (0.5, 0.05)
    expected = model_figures(link.params, 1.16).e_mu
    assert after.model_qber == pytest.approx(expected, rel=1e-3)
    assert after.model_qber > before.model_qber
    assert after.model_secret_rate_bps < before.model_secret_rate_bps
    # A session starting now (either end restarted) checks the configuration alone.
    assert params_digest(link.link_id, link.configured, link.config) == digest
    link.change_channel(ChannelChange())
    assert link.stats.snapshot().model_qber == pytest.approx(before.model_qber)


async def test_a_cut_ends_the_session_in_progress_and_shows(tmp_path: Path) -> None:
    link = _end(TransmitterLink, tmp_path)
    ended = asyncio.Event()

    async def session() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            ended.set()

    running = asyncio.create_task(link._unless_cut(session()))
    await asyncio.sleep(0.01)
    link.set_cut(True)
    await asyncio.wait_for(running, 5)
    assert ended.is_set()
    assert link.cut
    assert link.stats.state == "cut"
    link.set_cut(False)
    assert not link.cut


async def test_calls_to_a_cut_peer_fail_at_once() -> None:
    faults = PeerFaults("a")
    peers = shaped_peer_channels({"b": "127.0.0.1:9"}, grpc.ssl_channel_credentials(), faults)
    faults.cut_peers.add("b")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await peers.stub("b").Advertise(relay_pb2.LinkStateAdvert(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert caught.value.details() == "the link between a and b is cut"
    finally:
        await peers.close()


def test_the_fault_methods_of_node_control_are_for_controllers_only() -> None:
    service = control_pb2.DESCRIPTOR.services_by_name["NodeControl"]
    methods = set(service.methods_by_name)
    assert {"SetPeerFaults", "SetChannelChange", "GetFaults", "ClearFaults"} <= methods
    # The interceptor decides by service: every method of NodeControl, new ones included.
    assert POLICY[service.full_name] == frozenset({Role.CONTROLLER})
    for method in methods:  # and the service checks the controller's name in each
        assert "_authorise(context)" in inspect.getsource(getattr(ControlService, method))
