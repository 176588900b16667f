"""Counters and figures of one link end, and the model's prediction beside them."""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field

from ..core.channel_model import ChannelParameters, ModelFigures, model_figures
from ..store.key_store import StoreLevel

__all__ = ["UP_STATES", "LinkStats", "LinkStatus"]

# Link states in which the link is up for routing: a session runs, relays can draw on it.
UP_STATES = frozenset({"running", "full"})

_WINDOW_SECONDS = 10.0


@dataclass(frozen=True)
class LinkStatus:
    """A snapshot of one link end: its counters, live figures and the model's beside them
    (rates in bits per second; `*_rate_bps` over the last seconds of wall time, the model's in
    emulated time). The NodeControl view carries the same fields (`control.proto`)."""

    link_id: str
    peer: str
    role: str
    state: str
    frames_ok: int
    frames_aborted: int
    aborts_by_reason: dict[str, int]
    rejected_messages: dict[str, int]
    pulses: int
    detections: int
    sifted_bits: int
    reconciled_bits: int
    disclosed_bits: int
    secret_bits: int
    auth_bits: int
    qber: float
    last_qber: float
    sifted_rate_bps: float
    secret_rate_bps: float
    secret_fraction_per_pulse: float
    model_secret_fraction_per_pulse: float
    model_qber: float
    model_secret_rate_bps: float
    model_sifted_rate_bps: float
    reconciliation_efficiency: float
    store_bits: int
    store_blocks: int
    stored_bits_total: int
    last_frame: int
    phase_seconds: dict[str, float]
    sample_bits: int
    sample_qber: float
    last_sample_bits: int
    last_sample_qber: float
    eavesdrop_fraction: float
    extra_loss_db: float
    misalignment_error: float
    emulated_seconds: float
    elapsed_seconds: float
    kind: str
    source: str
    last_fault: str


@dataclass
class LinkStats:
    """Everything a link end counts; `snapshot` gives what it shows."""

    link_id: str
    peer: str
    role: str
    params: ChannelParameters
    pe_sample_fraction: float
    # "connecting", "running", "full" (transmitter: the store is at its cap, distilling paused,
    # the session up), "backoff", "waiting" (receiver: no session), "cut"; see UP_STATES.
    state: str = "connecting"
    frames_ok: int = 0
    frames_aborted: int = 0
    aborts: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    pulses: int = 0
    detections: int = 0
    sifted_bits: int = 0
    reconciled_bits: int = 0
    errors_corrected: int = 0
    disclosed_bits: int = 0
    ideal_disclosed: float = 0.0
    secret_bits: int = 0
    auth_bits: int = 0
    last_qber: float = 0.0
    store: StoreLevel = field(default_factory=lambda: StoreLevel(0, 0, 0, -1))
    phase_seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    sample_bits: int = 0
    sample_errors: int = 0
    last_sample_bits: int = 0
    last_sample_errors: int = 0
    started: float = field(default_factory=time.monotonic)
    _window: deque[tuple[float, int, int]] = field(default_factory=deque)
    # The model depends on the stats only through Cascade's efficiency (and on `params`, which
    # a live change replaces); status is asked for every telemetry interval, so keep the last
    # evaluation (efficiency to 3 digits).
    _model: tuple[float, ChannelParameters, ModelFigures] | None = field(default=None, repr=False)
    kind: str = "bb84"
    source: str = ""  # where key comes from when not from the link's photons (external KME)
    last_fault: str = ""  # why the last session ended

    def record_block(self, bits: int, auth: int) -> None:
        """A block of a kind without photons or reconciliation stored (external KMEs, ML-KEM):
        `auth` of its `bits` refilled the authentication pads, the rest is key."""
        self.record_key(
            reconciled=0, errors=0, disclosed=0, ideal_disclosed=0.0, secret=bits - auth, auth=auth
        )
        self.record_frame(0, 0, 0)

    def record_frame(self, pulses: int, detections: int, sifted: int) -> None:
        """A frame went through sifting (whatever happens to it next)."""
        self.pulses += pulses
        self.detections += detections
        self.sifted_bits += sifted
        self._tick()

    def record_sample(self, bits: int, errors: int) -> None:
        """The disclosed signal sample of a frame (counted whether the frame aborts or not)."""
        self.sample_bits += bits
        self.sample_errors += errors
        self.last_sample_bits = bits
        self.last_sample_errors = errors

    def record_abort(self, reason: str) -> None:
        self.frames_aborted += 1
        self.aborts[reason] += 1

    def record_key(
        self,
        *,
        reconciled: int,
        errors: int,
        disclosed: int,
        ideal_disclosed: float,
        secret: int,
        auth: int,
    ) -> None:
        """A frame ended with stored key."""
        self.frames_ok += 1
        self.reconciled_bits += reconciled
        self.errors_corrected += errors
        self.disclosed_bits += disclosed
        self.ideal_disclosed += ideal_disclosed
        self.secret_bits += secret
        self.auth_bits += auth
        self.last_qber = errors / reconciled if reconciled else 0.0
        self._tick()

    def _tick(self) -> None:
        now = time.monotonic()
        self._window.append((now, self.sifted_bits, self.secret_bits))
        while len(self._window) > 2 and now - self._window[1][0] > _WINDOW_SECONDS:
            self._window.popleft()

    @property
    def qber(self) -> float:
        return self.errors_corrected / self.reconciled_bits if self.reconciled_bits else 0.0

    @property
    def efficiency(self) -> float:
        """Cascade's f = disclosed / (n H2(QBER)), over all frames with key."""
        return self.disclosed_bits / self.ideal_disclosed if self.ideal_disclosed > 0 else 0.0

    def rates(self) -> tuple[float, float]:
        """(sifted, secret) bits per wall second over the last few seconds."""
        if len(self._window) < 2:
            return 0.0, 0.0
        (t0, s0, k0), (t1, s1, k1) = self._window[0], self._window[-1]
        span = max(t1 - t0, 1e-9)
        return (s1 - s0) / span, (k1 - k0) / span

    def _model_figures(self) -> ModelFigures:
        efficiency = round(self.efficiency if self.ideal_disclosed > 0 else 1.16, 3)
        if self._model is None or self._model[:2] != (efficiency, self.params):
            figures = model_figures(
                self.params, f=efficiency, pe_sample_fraction=self.pe_sample_fraction
            )
            self._model = (efficiency, self.params, figures)
        return self._model[2]

    def snapshot(self) -> LinkStatus:
        """What the link end shows now."""
        model = self._model_figures()
        sifted_rate, secret_rate = self.rates()
        return LinkStatus(
            link_id=self.link_id,
            peer=self.peer,
            role=self.role,
            state=self.state,
            frames_ok=self.frames_ok,
            frames_aborted=self.frames_aborted,
            aborts_by_reason=dict(self.aborts),
            rejected_messages=dict(self.rejected),
            pulses=self.pulses,
            detections=self.detections,
            sifted_bits=self.sifted_bits,
            reconciled_bits=self.reconciled_bits,
            disclosed_bits=self.disclosed_bits,
            secret_bits=self.secret_bits,
            auth_bits=self.auth_bits,
            qber=self.qber,
            last_qber=self.last_qber,
            sifted_rate_bps=sifted_rate,
            secret_rate_bps=secret_rate,
            secret_fraction_per_pulse=(
                (self.secret_bits + self.auth_bits) / self.pulses if self.pulses else 0.0
            ),
            model_secret_fraction_per_pulse=model.secret_per_pulse,
            model_qber=model.e_mu,
            model_secret_rate_bps=model.secret_per_pulse * self.params.pulse_rate_hz,
            model_sifted_rate_bps=model.detections_per_pulse / 2 * self.params.pulse_rate_hz,
            reconciliation_efficiency=self.efficiency,
            store_bits=self.store.bits,
            store_blocks=self.store.blocks,
            stored_bits_total=self.store.total_bits,
            last_frame=self.store.last_frame,
            phase_seconds=dict(self.phase_seconds),
            sample_bits=self.sample_bits,
            sample_qber=self.sample_errors / self.sample_bits if self.sample_bits else 0.0,
            last_sample_bits=self.last_sample_bits,
            last_sample_qber=(
                self.last_sample_errors / self.last_sample_bits if self.last_sample_bits else 0.0
            ),
            eavesdrop_fraction=self.params.eavesdrop_fraction,
            extra_loss_db=self.params.extra_loss_db,
            misalignment_error=self.params.misalignment_error,
            emulated_seconds=self.pulses / self.params.pulse_rate_hz,
            elapsed_seconds=time.monotonic() - self.started,
            kind=self.kind,
            source=self.source,
            last_fault=self.last_fault,
        )
