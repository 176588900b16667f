"""Toeplitz-matrix privacy amplification, computed with FFTs.

Definition
----------
For ``n`` input bits ``x`` and ``m <= n`` output bits, a random seed ``s`` of ``n + m - 1``
bits defines the ``m x n`` Toeplitz matrix ``T[i, j] = s[i - j + n - 1]`` (constant along
diagonals: row 0 is ``s[n-1], s[n-2], .., s[0]`` and column 0 is ``s[n-1 .. n+m-2]``). The
output is ``y = T x mod 2``. Over uniform seeds the family ``{x -> T x}`` is two-universal,
so by the leftover hash lemma it extracts a key that is close to uniform from a raw key with
enough smooth min-entropy.

Convolution
-----------
``y_i = sum_j s[i + n - 1 - j] x_j`` is entry ``i + n - 1`` of the linear convolution
``c = s * x`` (length ``2n + m - 2``). Only the entries ``n - 1 .. n + m - 2`` are needed,
and none of them is touched by wrap-around in a *cyclic* convolution of any length
``N >= L = n + m - 1`` (the aliased terms ``c[t - N]`` and ``c[t + N]`` fall outside the
support of ``c``). Two ways to get them from FFTs of length ``N``:

* **direct** method (three FFTs): ``y = IDFT(DFT(s) DFT(x))[n - 1 : n - 1 + m] mod 2``.
  The values are integers in ``[0, n]`` and the float64 round-off is orders of magnitude
  below 0.5, so rounding to the nearest integer and keeping the lowest bit is exact.
  :class:`ToeplitzHasher` keeps ``DFT(s)`` and then needs two FFTs per input.

* **packed** method (two FFTs, the default for ``L < 2^22``): with ``2^k > L``, transform
  the single real sequence ``u = s + 2^k x`` and square its spectrum:
  ``u * u = s * s + 2^(k+1) (s * x) + 2^(2k) (x * x)`` (cyclic convolutions). Every entry
  ``A`` of ``s * s`` lies in ``[0, L]``, so
  ``(u * u - L/2) / 2^(k+1) = B + 2^(k-1) C + (A - L/2) / 2^(k+1)`` where the last term is
  below 1/4 in magnitude: rounding gives ``B + 2^(k-1) C``, whose parity is that of the
  wanted ``B = s * x`` (``k >= 2``). This holds as long as the float64 error on ``u * u``
  stays below ``2^(k-1)``; the values reach ``~2^(2k) n`` (up to ~2^66 at the size limit),
  and the measured worst-case error (all-ones inputs at ``L`` just below 2^22) is about
  2^14.2 against a tolerance above 2^21, a margin of more than 100x. The DC bin of the
  squared spectrum is replaced by its exact value (the sums of ``u`` are integers, recovered
  by rounding), which both applies the ``-L/2`` shift and removes the largest rounding error.

Rounding uses the float64 "magic number" trick: adding ``1.5 * 2^52`` leaves ``round(v)``
in the low mantissa bits, whose lowest bit is the parity. ``check_rounding=True`` is a
debugging aid: the direct method then verifies that every value was within 0.25 of an
integer, and the packed method is cross-checked against the direct one.

FFT engine
----------
Large transforms use FFTW through pyFFTW, two threads by default. A real sequence of even
length ``N`` is transformed as the ``N / 2`` complex numbers ``u[2j] + i u[2j+1]`` (a free
view of the same memory): FFTW's *estimated* plans are good for complex transforms but
poor for real ones at these sizes (a real 1.5M-point inverse transform is ~50 % slower than
with a measured plan), while measuring plans (``FFTW_MEASURE``) takes 1-3 minutes per
length on a two-core machine. The even/odd spectra are separated, combined and re-packed in
one cache-blocked pass over the pairs ``(k, N/2 - k)`` (see :func:`_packed` and
:class:`_SeedSpectrum`); element-wise passes over large arrays are split between the
calling thread and one helper thread.

FFT lengths are 5-smooth numbers (``2^a 3^b 5^c``, multiples of 4 for FFTW). The speed of
FFTW's estimated plans varies by up to 2x between lengths of similar size, unpredictably, so
the first time a size region above 2^18 points is used the (at most four) smallest
candidates within +25 % are planned and timed once (a few hundred milliseconds for ~10^6
points) and the fastest is used from then on; with ``FFTW_MEASURE`` the smallest candidate
is used. Each length gets a *workspace*: SIMD-aligned buffers plus the FFTW plans that operate on
them. A workspace is used by one call at a time; concurrent callers (the link runs privacy
amplification from a
thread pool) take distinct workspaces from a small pool bounded in memory, and planning is
serialised by a lock. The planner effort defaults to ``FFTW_ESTIMATE`` (instantaneous); a
long-running node may opt in to ``FFTW_MEASURE`` with :func:`configure_fftw` (optionally
with a ``planning_timelimit``), plan ahead with :func:`warm_up`, and persist plans with
:func:`export_wisdom` / :func:`import_wisdom`.
Transforms of at most 4096 points use ``numpy.fft`` (real transforms, no planning).
"""

from __future__ import annotations

import bisect
import functools
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, Protocol

import numpy as np
import pyfftw  # type: ignore[import-untyped]
from numpy.typing import NDArray

__all__ = [
    "FFTWSettings",
    "Method",
    "ToeplitzHasher",
    "clear_fft_cache",
    "configure_fftw",
    "export_wisdom",
    "fft_length",
    "fftw_settings",
    "import_wisdom",
    "seed_length",
    "toeplitz_hash",
    "toeplitz_hash_dense",
    "warm_up",
]

Method = Literal["auto", "direct", "packed"]
"""``toeplitz_hash`` algorithm: ``direct`` (three FFTs), ``packed`` (two), ``auto``."""

# --------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------

# Candidate FFT lengths: 5-smooth numbers (2^a 3^b 5^c); those used with FFTW must be
# multiples of 4 (the transforms work on N/2 complex numbers, split in pairs k, N/2 - k).
_LENGTH_LIMIT: Final[int] = 1 << 40


def _smooth_numbers(limit: int) -> tuple[int, ...]:
    """Sorted 5-smooth numbers below ``limit``."""
    numbers = []
    power5 = 1
    while power5 < limit:
        power35 = power5
        while power35 < limit:
            value = power35
            while value < limit:
                numbers.append(value)
                value <<= 1
            power35 *= 3
        power5 *= 5
    return tuple(sorted(numbers))


_SMOOTH_LENGTHS: Final[tuple[int, ...]] = _smooth_numbers(_LENGTH_LIMIT)
_FFTW_LENGTHS: Final[tuple[int, ...]] = tuple(x for x in _SMOOTH_LENGTHS if x % 4 == 0)

# Length selection for FFTW: FFTW's estimated plans are fast for some lengths and up to ~50 %
# slower for others of similar size, unpredictably. The first time a size region is used,
# the few smallest candidate lengths (at most this many, within +25 %) are planned and timed
# once; the fastest is used from then on (the output does not depend on the length).
_TUNE_CANDIDATES: Final[int] = 4
_TUNE_SPAN: Final[float] = 1.25
# Below this length a transform pair takes about a millisecond, so a length 50 % slower than
# the best costs less than timing the candidates did (each node times its own): no tuning.
_TUNE_MIN_LENGTH: Final[int] = 1 << 18

# Cyclic convolutions of at most this length use numpy.fft instead of FFTW.
_NUMPY_MAX_LENGTH: Final[int] = 1 << 12

# The packed (two-FFT) method is allowed for n + m - 1 below this bound (see module docs).
_PACKED_MAX_BITS: Final[int] = 1 << 22

# 1.5 * 2^52: v + _ROUND_MAGIC has round(v) in the low mantissa bits for |v| < 2^51.
_ROUND_MAGIC: Final[float] = 6755399441055744.0


def seed_length(n: int, m: int) -> int:
    """Number of seed bits of the ``m x n`` Toeplitz matrix: ``n + m - 1``."""
    _check_dimensions(n, m)
    return int(n) + int(m) - 1


def fft_length(n: int, m: int) -> int:
    """FFT length used for an ``m x n`` hash (``>= n + m - 1``; may time candidate lengths)."""
    return _fast_length(seed_length(n, m))


def _fast_length(minimum: int) -> int:
    minimum = max(1, minimum)
    if minimum <= _NUMPY_MAX_LENGTH:
        return _SMOOTH_LENGTHS[bisect.bisect_left(_SMOOTH_LENGTHS, minimum)]
    start = bisect.bisect_left(_FFTW_LENGTHS, minimum)
    candidates = [
        length
        for length in _FFTW_LENGTHS[start : start + _TUNE_CANDIDATES]
        if length <= minimum * _TUNE_SPAN
    ] or [_FFTW_LENGTHS[start]]
    if (
        len(candidates) == 1
        or minimum < _TUNE_MIN_LENGTH
        or _settings.planner_effort != "FFTW_ESTIMATE"
    ):
        return candidates[0]
    if all(length in _length_costs for length in candidates):  # already timed: no lock
        return min(candidates, key=lambda length: (_length_costs[length], length))
    with _tune_lock:
        timed = [length for length in candidates if length not in _length_costs]
        for length in timed:
            _length_costs[length] = _time_length(length)
        best = min(candidates, key=lambda length: (_length_costs[length], length))
    with _pool_lock:  # keep only the chosen length's workspace from the timing runs
        for length in timed:
            if length != best:
                _pool.pop(length, None)
    return best


_tune_lock = threading.Lock()
_length_costs: dict[int, float] = {}  # FFT length -> seconds for a forward + inverse pair


def _time_length(length: int) -> float:
    """Best of three timings of a forward and an inverse transform of ``length`` points."""
    workspace = _acquire(length)
    try:
        workspace.real[:] = 1.0
        best = math.inf
        for _ in range(3):
            start = time.perf_counter()
            workspace.forward.execute()
            workspace.inverse.execute()
            best = min(best, time.perf_counter() - start)
        return best
    finally:
        _release(workspace)


# --------------------------------------------------------------------------------------------
# Validation (messages name the argument, never the bit values)
# --------------------------------------------------------------------------------------------


def _check_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int")


def _check_dimensions(n: int, m: int) -> None:
    _check_int(n, "n")
    _check_int(m, "m")
    if n < 1:
        raise ValueError("n (input length) must be at least 1")
    if not 0 <= m <= n:
        raise ValueError("m (output length) must be between 0 and the input length")


def _check_bits(array: NDArray[np.uint8], name: str, length: int | None) -> None:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy array")
    if array.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8")
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    if length is not None and array.size != length:
        raise ValueError(f"{name} has the wrong length: expected {length}, got {array.size}")
    if array.size and int(array.max()) > 1:
        raise ValueError(f"{name} must contain only 0 and 1")


# --------------------------------------------------------------------------------------------
# FFTW settings and workspaces
# --------------------------------------------------------------------------------------------

_EFFORTS: Final[tuple[str, ...]] = (
    "FFTW_ESTIMATE",
    "FFTW_MEASURE",
    "FFTW_PATIENT",
    "FFTW_EXHAUSTIVE",
)


@dataclass(frozen=True)
class FFTWSettings:
    """Parameters for new FFTW plans and for the workspace cache."""

    threads: int
    """Threads per transform."""
    planner_effort: str
    """``FFTW_ESTIMATE`` (default), ``FFTW_MEASURE``, ``FFTW_PATIENT`` or ``FFTW_EXHAUSTIVE``."""
    planning_timelimit: float | None
    """Seconds allowed for planning one transform (``None``: unlimited)."""
    max_idle_per_length: int
    """Idle workspaces kept per FFT length."""
    max_cache_bytes: int
    """Memory bound for all idle workspaces (least recently used lengths are dropped)."""


_settings = FFTWSettings(
    threads=max(1, min(2, os.cpu_count() or 1)),
    planner_effort="FFTW_ESTIMATE",
    planning_timelimit=None,
    max_idle_per_length=2,
    max_cache_bytes=256 << 20,
)


def fftw_settings() -> FFTWSettings:
    """The current FFTW settings."""
    return _settings


class _Plan(Protocol):
    def execute(self) -> None: ...


@functools.lru_cache(maxsize=4)
def _tau(length: int) -> NDArray[np.complex128]:
    """``tau[i] = (1 + w^(i+1)) / 4`` for ``i < N/4``, ``w = exp(-2 pi i / (N/2))`` (read-only)."""
    half = length // 2
    tau: NDArray[np.complex128] = np.exp(np.arange(1, length // 4 + 1) * (-2j * np.pi / half))
    tau += 1.0
    tau *= 0.25
    tau.setflags(write=False)
    return tau


class _Workspace:
    """Aligned buffers and FFTW plans for one FFT length ``N`` (a multiple of 4).

    A real sequence of length ``N`` stored in ``real`` is transformed as ``M = N / 2`` complex
    numbers (``data`` is the same memory): ``forward: data -> spectrum`` and
    ``inverse: spectrum -> data`` (unnormalised), plus, created on first use,
    ``inverse_swapped: data -> spectrum``. ``tau``, ``conj_b`` and ``scratch`` serve the spectral
    step of the packed method.
    """

    __slots__ = (
        "_inverse_swapped",
        "_options",
        "conj_b",
        "data",
        "forward",
        "generation",
        "inverse",
        "length",
        "real",
        "scratch",
        "spectrum",
        "tau",
    )

    def __init__(self, length: int, settings: FFTWSettings, generation: int) -> None:
        if length % 4:
            raise ValueError("the FFT length must be a multiple of 4")
        self.length = length
        self.generation = generation
        half, quarter = length // 2, length // 4
        self._options: dict[str, Any] = {
            "flags": (settings.planner_effort, "FFTW_DESTROY_INPUT"),
            "threads": settings.threads,
            "planning_timelimit": settings.planning_timelimit,
        }
        self.data: NDArray[np.complex128] = pyfftw.empty_aligned(half, dtype="complex128")
        self.real: NDArray[np.float64] = self.data.view(np.float64)
        self.spectrum: NDArray[np.complex128] = pyfftw.empty_aligned(half, dtype="complex128")
        self.conj_b = np.empty(quarter, dtype=np.complex128)
        self.scratch = np.empty(quarter, dtype=np.complex128)
        self.tau = _tau(length)
        self._inverse_swapped: _Plan | None = None
        with _plan_lock:
            self.forward: _Plan = pyfftw.FFTW(
                self.data, self.spectrum, direction="FFTW_FORWARD", **self._options
            )
            self.inverse: _Plan = pyfftw.FFTW(
                self.spectrum, self.data, direction="FFTW_BACKWARD", **self._options
            )

    @property
    def nbytes(self) -> int:
        arrays = (self.data, self.spectrum, self.conj_b, self.scratch)
        return sum(int(a.nbytes) for a in arrays)

    def inverse_swapped(self) -> _Plan:
        """Inverse transform ``data -> spectrum`` (product method), planned on first use."""
        if self._inverse_swapped is None:
            with _plan_lock:
                plan: _Plan = pyfftw.FFTW(
                    self.data, self.spectrum, direction="FFTW_BACKWARD", **self._options
                )
            self._inverse_swapped = plan
        return self._inverse_swapped


_plan_lock = threading.Lock()  # serialises FFTW planning and wisdom (the planner is global)
_pool_lock = threading.Lock()  # guards _pool, _generation and _settings
_pool: OrderedDict[int, list[_Workspace]] = OrderedDict()
_generation = 0


def _acquire(length: int) -> _Workspace:
    with _pool_lock:
        idle = _pool.get(length)
        if idle:
            return idle.pop()
        settings, generation = _settings, _generation
    return _Workspace(length, settings, generation)


def _release(workspace: _Workspace) -> None:
    with _pool_lock:
        if workspace.generation != _generation:
            return
        idle = _pool.setdefault(workspace.length, [])
        _pool.move_to_end(workspace.length)
        if len(idle) < _settings.max_idle_per_length:
            idle.append(workspace)
        total = sum(w.nbytes for ws in _pool.values() for w in ws)
        while total > _settings.max_cache_bytes and _pool:
            oldest, dropped = next(iter(_pool.items()))
            if dropped:
                total -= dropped.pop(0).nbytes
            else:
                del _pool[oldest]


def clear_fft_cache() -> None:
    """Drop every cached FFTW workspace (buffers and plans); FFTW wisdom is kept."""
    global _generation
    with _pool_lock:
        _pool.clear()
        _generation += 1


def configure_fftw(
    *,
    threads: int | None = None,
    planner_effort: str | None = None,
    planning_timelimit: float | None = None,
    max_idle_per_length: int | None = None,
    max_cache_bytes: int | None = None,
) -> FFTWSettings:
    """Change the FFTW settings for plans created from now on; returns the new settings.

    Arguments left at ``None`` keep their value; ``planning_timelimit=math.inf`` removes the
    limit. The workspace cache and the length timings are cleared, so the next call of each
    length plans again.
    """
    global _settings
    for name, value in (
        ("threads", threads),
        ("max_idle_per_length", max_idle_per_length),
        ("max_cache_bytes", max_cache_bytes),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an int")
        if value is not None and value < (0 if name == "max_cache_bytes" else 1):
            raise ValueError(f"{name} is out of range")
    if planner_effort is not None and planner_effort not in _EFFORTS:
        raise ValueError("planner_effort must be one of " + ", ".join(_EFFORTS))
    if planning_timelimit is not None and not planning_timelimit > 0:
        raise ValueError("planning_timelimit must be positive")
    changes: dict[str, Any] = {}
    if threads is not None:
        changes["threads"] = threads
    if planner_effort is not None:
        changes["planner_effort"] = planner_effort
    if planning_timelimit is not None:
        changes["planning_timelimit"] = (
            None if math.isinf(planning_timelimit) else float(planning_timelimit)
        )
    if max_idle_per_length is not None:
        changes["max_idle_per_length"] = max_idle_per_length
    if max_cache_bytes is not None:
        changes["max_cache_bytes"] = max_cache_bytes
    with _pool_lock:
        _settings = replace(_settings, **changes)
        settings = _settings
    clear_fft_cache()
    with _tune_lock:
        _length_costs.clear()  # length timings depend on the settings
    return settings


def export_wisdom() -> tuple[bytes, ...]:
    """FFTW wisdom accumulated by this process (feed it to :func:`import_wisdom` later)."""
    with _plan_lock:
        wisdom: tuple[bytes, ...] = tuple(pyfftw.export_wisdom())
    return wisdom


def import_wisdom(wisdom: tuple[bytes, ...]) -> bool:
    """Load wisdom from :func:`export_wisdom`; True if the double-precision part was accepted.

    Plans created afterwards with the same settings are then as good as the ones the wisdom
    was recorded with, without the planning time.
    """
    with _plan_lock:
        accepted = pyfftw.import_wisdom(tuple(wisdom))
    return bool(accepted[0])


def warm_up(n: int, m: int) -> int:
    """Create the FFT workspace (plans) used for ``m x n`` hashes now; returns the FFT length.

    With ``FFTW_MEASURE`` this is where the planning time is spent.
    """
    length = fft_length(n, m)
    if length > _NUMPY_MAX_LENGTH and m > 0:
        workspace = _acquire(length)
        try:
            workspace.inverse_swapped()
        finally:
            _release(workspace)
    return length


# --------------------------------------------------------------------------------------------
# Element-wise passes
# --------------------------------------------------------------------------------------------

# Element-wise passes over at least this many elements are split between the calling thread
# and a helper thread (numpy releases the GIL), when FFTW is allowed more than one thread.
_SPLIT_MIN: Final[int] = 1 << 17

# Sub-block size of the multi-operation spectral passes (keeps their operands in cache).
_BLOCK: Final[int] = 1 << 15

_helper: ThreadPoolExecutor | None = None
_helper_lock = threading.Lock()


def _helper_pool() -> ThreadPoolExecutor:
    global _helper
    with _helper_lock:
        if _helper is None:
            _helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qkdnet-toeplitz")
        return _helper


def _split(work: Callable[[int, int], None], size: int) -> None:
    """Run ``work(lo, hi)`` over ``[0, size)``, in two halves on two threads when large.

    If the helper thread is busy (another call is using it), the caller does both halves.
    """
    if size < _SPLIT_MIN or _settings.threads < 2:
        work(0, size)
        return
    middle = (size // 2) & ~63
    future = _helper_pool().submit(work, middle, size)
    work(0, middle)
    if future.cancel():
        work(middle, size)
    else:
        future.result()


def _parity(values: NDArray[np.float64], scale: float) -> NDArray[np.uint8]:
    """``round(values * scale) mod 2`` as uint8; ``values`` is scratch and is overwritten."""
    out = np.empty(values.size, dtype=np.uint8)

    def work(lo: int, hi: int) -> None:
        chunk = values[lo:hi]
        if scale != 1.0:
            np.multiply(chunk, scale, out=chunk)
        np.add(chunk, _ROUND_MAGIC, out=chunk)
        np.bitwise_and(chunk.view(np.int64), 1, out=out[lo:hi], casting="unsafe")

    _split(work, values.size)
    return out


def _check_margin(values: NDArray[np.float64], scale: float) -> None:
    """Raise ``ArithmeticError`` unless every ``values * scale`` is within 0.25 of an integer."""
    scaled = values * scale
    error = float(np.max(np.abs(scaled - np.rint(scaled)), initial=0.0))
    if not error < 0.25:
        raise ArithmeticError(f"FFT rounding error too large: {error:.3g}")


def _fill(real: NDArray[np.float64], bits: NDArray[np.uint8]) -> None:
    """``real = bits`` zero-padded to the buffer length."""

    def work(lo: int, hi: int) -> None:
        np.copyto(real[lo:hi], bits[lo:hi])

    _split(work, bits.size)
    real[bits.size :] = 0.0


def _packed_fill(
    real: NDArray[np.float64], bits: NDArray[np.uint8], seed: NDArray[np.uint8], weight: float
) -> None:
    """``real = seed + weight * bits`` zero-padded to the buffer length."""
    n, total = bits.size, seed.size

    def work(lo: int, hi: int) -> None:
        head = real[lo:hi]
        np.multiply(bits[lo:hi], weight, out=head)
        np.add(head, seed[lo:hi], out=head)

    _split(work, n)
    np.copyto(real[n:total], seed[n:])
    real[total:] = 0.0


# --------------------------------------------------------------------------------------------
# Packed method (two FFTs)
# --------------------------------------------------------------------------------------------


def _packed_shift(n: int, m: int) -> int:
    """``k`` of the packed method: the smallest ``k >= 2`` with ``2^k > n + m - 1``."""
    return max(2, (n + m - 1).bit_length())


def _packed(
    bits: NDArray[np.uint8], seed: NDArray[np.uint8], m: int, length: int
) -> NDArray[np.uint8]:
    """Square the spectrum of ``u = seed + 2^k bits`` (see the module docstring).

    With FFTW, the real sequence ``u`` of length ``N`` is transformed as the complex sequence
    ``z[j] = u[2j] + i u[2j+1]`` of length ``M = N / 2``: ``Z = DFT_M(z)``. For
    ``P = Z[k]`` and ``Q = conj(Z[M - k])`` the spectra of the even and odd samples of ``u``
    are ``E = (P + Q) / 2`` and ``O = (P - Q) / (2i)``. The even samples of ``v = u * u`` have
    the spectrum ``E^2 + w^k O^2`` (``w = exp(-2 pi i / M)``) and the odd ones ``2 E O``;
    packed the same way, ``W[k] = P^2 - tau_k (P - Q)^2`` and
    ``conj(W[M - k]) = Q^2 - tau_k (P - Q)^2`` with ``tau_k = (1 + w^k) / 4``, computed for
    each pair ``(k, M - k)`` at once. The inverse transform of ``W`` is ``M v``, its even and
    odd samples interleaved, i.e. ``M v`` in natural order when viewed as reals. ``W[0]`` is
    set to the exact ``E0^2 + O0^2 - M L / 2 + i (2 E0 O0 - M L / 2)`` (``E0``, ``O0``: the
    integer sums of the even and odd samples of ``u``), which shifts every output by ``-L/2``.
    """
    n = bits.size
    total = n + m - 1
    shift = _packed_shift(n, m)
    window = slice(n - 1, n - 1 + m)
    scale = 1.0 / float(1 << (shift + 1))
    if length <= _NUMPY_MAX_LENGTH:
        real = np.empty(length, dtype=np.float64)
        _packed_fill(real, bits, seed, float(1 << shift))
        spectrum = np.fft.rfft(real)
        u_sum = round(float(spectrum[0].real))
        np.multiply(spectrum, spectrum, out=spectrum)
        spectrum[0] = float(2 * u_sum * u_sum - length * total) * 0.5
        return _parity(np.fft.irfft(spectrum, length)[window], scale)

    half, quarter = length // 2, length // 4
    workspace = _acquire(length)
    try:
        _packed_fill(workspace.real, bits, seed, float(1 << shift))
        workspace.forward.execute()
        spectrum, conj_b, scratch, tau = (
            workspace.spectrum,
            workspace.conj_b,
            workspace.scratch,
            workspace.tau,
        )
        even_sum = round(float(spectrum[0].real))
        odd_sum = round(float(spectrum[0].imag))

        def work(lo: int, hi: int) -> None:
            # pairs k = i + 1 and M - k for i in [lo, hi)
            for a in range(lo, hi, _BLOCK):
                b = min(hi, a + _BLOCK)
                p = spectrum[1 + a : 1 + b]
                q = conj_b[a:b]
                d = scratch[a:b]
                np.conjugate(spectrum[half - 1 - a : half - 1 - b : -1], out=q)
                np.subtract(p, q, out=d)
                np.multiply(d, d, out=d)
                np.multiply(d, tau[a:b], out=d)
                np.multiply(p, p, out=p)
                np.subtract(p, d, out=p)
                np.multiply(q, q, out=q)
                np.subtract(q, d, out=q)
                top = min(b, quarter - 1)  # k = M/2 is its own partner: written once, above
                if top > a:
                    np.conjugate(q[: top - a], out=spectrum[half - 1 - a : half - 1 - top : -1])

        _split(work, quarter)
        offset = half * total / 2
        spectrum[0] = complex(
            float(even_sum * even_sum + odd_sum * odd_sum) - offset,
            float(2 * even_sum * odd_sum) - offset,
        )
        workspace.inverse.execute()
        return _parity(workspace.real[window], scale / half)
    finally:
        _release(workspace)


# --------------------------------------------------------------------------------------------
# Product method (seed spectrum times input spectrum)
# --------------------------------------------------------------------------------------------


class _SeedSpectrum:
    """What the product method needs from the seed, for one FFT length.

    numpy engine: ``rfft(seed, N)``. FFTW engine: the seed is transformed packed as complex
    numbers, ``Z = DFT_M(s[2j] + i s[2j+1])``; its even/odd-sample spectra are
    ``E = (Z + R) / 2`` and ``O = (Z - R) / (2i)`` with ``R[k] = conj(Z[M - k])``. The packed
    spectrum of ``bits * seed`` (even samples ``E_x E + w^k O_x O``, odd samples
    ``E_x O + O_x E``, ``w = exp(-2 pi i / M)``) is ``W = P g1 + Q g2`` where
    ``P = Z_x[k]``, ``Q = conj(Z_x[M - k])`` come from the input and, including the ``1 / M``
    of the unnormalised inverse, ``g2 = (1 + w^k) (Z - R) / (4M)`` and ``g1 = Z / M - g2``.
    """

    __slots__ = ("g1", "g2", "length", "numpy_spectrum")

    def __init__(self, seed: NDArray[np.uint8], length: int) -> None:
        self.length = length
        self.numpy_spectrum: NDArray[np.complex128] | None = None
        self.g1: NDArray[np.complex128] | None = None
        self.g2: NDArray[np.complex128] | None = None
        if length <= _NUMPY_MAX_LENGTH:
            self.numpy_spectrum = np.fft.rfft(seed, length)
            return
        half, quarter = length // 2, length // 4
        g1: NDArray[np.complex128] = pyfftw.empty_aligned(half, dtype="complex128")
        g2: NDArray[np.complex128] = pyfftw.empty_aligned(half, dtype="complex128")
        workspace = _acquire(length)
        try:
            _fill(workspace.real, seed)
            workspace.forward.execute()
            z, tau = workspace.spectrum, workspace.tau  # tau[k - 1] = (1 + w^k) / 4
            inv_half = 1.0 / half

            def work(lo: int, hi: int) -> None:
                lo = max(lo, 1)  # k = 0 is done below
                for a in range(lo, hi, _BLOCK):
                    b = min(hi, a + _BLOCK)
                    d = g2[a:b]
                    np.conjugate(z[half - a : half - b : -1], out=d)
                    np.subtract(z[a:b], d, out=d)  # Z - R
                    # (1 + w^k) / 4 for k in [a, b): tau[k - 1] up to M/2, conj(tau[M-k-1]) above
                    low_end = min(b, quarter + 1)
                    if low_end > a:
                        np.multiply(
                            d[: low_end - a], tau[a - 1 : low_end - 1], out=d[: low_end - a]
                        )
                    high_start = max(a, quarter + 1)
                    if b > high_start:
                        t = np.conjugate(tau[half - b : half - high_start][::-1])
                        np.multiply(d[high_start - a :], t, out=d[high_start - a :])
                    np.multiply(d, inv_half, out=d)
                    np.multiply(z[a:b], inv_half, out=g1[a:b])
                    np.subtract(g1[a:b], d, out=g1[a:b])

            _split(work, half)
            # k = 0: R = conj(Z[0]), w^0 = 1
            z0 = complex(z[0])
            g2[0] = (z0 - z0.conjugate()) * 0.5 * inv_half
            g1[0] = z0 * inv_half - complex(g2[0])
        finally:
            _release(workspace)
        g1.setflags(write=False)
        g2.setflags(write=False)
        self.g1, self.g2 = g1, g2

    def hash(self, bits: NDArray[np.uint8], m: int, check: bool) -> NDArray[np.uint8]:
        n = bits.size
        window = slice(n - 1, n - 1 + m)
        length = self.length
        if self.numpy_spectrum is not None:
            values = np.fft.irfft(self.numpy_spectrum * np.fft.rfft(bits, length), length)
            if check:
                _check_margin(values[window], 1.0)
            return _parity(values[window], 1.0)
        g1, g2 = self.g1, self.g2
        assert g1 is not None
        assert g2 is not None
        half = length // 2
        workspace = _acquire(length)
        try:
            inverse = workspace.inverse_swapped()  # planning may overwrite the buffers
            _fill(workspace.real, bits)
            workspace.forward.execute()
            spectrum, data = workspace.spectrum, workspace.data
            k0 = complex(spectrum[0])
            data_zero = k0 * complex(g1[0]) + k0.conjugate() * complex(g2[0])

            def work(lo: int, hi: int) -> None:
                lo = max(lo, 1)  # k = 0 pairs with itself, done separately
                temp = np.empty(min(_BLOCK, max(hi - lo, 0)), dtype=np.complex128)
                for a in range(lo, hi, _BLOCK):
                    b = min(hi, a + _BLOCK)
                    t = temp[: b - a]
                    out = data[a:b]
                    np.conjugate(spectrum[half - a : half - b : -1], out=t)
                    np.multiply(t, g2[a:b], out=t)
                    np.multiply(spectrum[a:b], g1[a:b], out=out)
                    np.add(out, t, out=out)

            _split(work, half)
            data[0] = data_zero
            inverse.execute()
            values = workspace.spectrum.view(np.float64)[window]
            if check:
                _check_margin(values, 1.0)
            return _parity(values, 1.0)
        finally:
            _release(workspace)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def toeplitz_hash(
    bits: NDArray[np.uint8],
    seed: NDArray[np.uint8],
    m: int,
    *,
    method: Method = "auto",
    check_rounding: bool = False,
) -> NDArray[np.uint8]:
    """Compute ``T x mod 2`` for the Toeplitz matrix of ``seed`` (see module docstring).

    ``bits``: the ``n >= 1`` input bits (1-D uint8 array of 0/1); ``seed``: ``n + m - 1``
    bits (same format); ``m``: output length, ``0 <= m <= n``. Returns ``m`` uint8 0/1 values.
    ``method``: ``"direct"`` (three FFTs), ``"packed"`` (two FFTs; needs
    ``n + m - 1 < 2^22``) or ``"auto"`` (packed when allowed). ``check_rounding``: debugging
    aid (see module docstring), about doubles the cost. Thread-safe.
    """
    _check_bits(bits, "bits", None)
    n = int(bits.size)
    if n < 1:
        raise ValueError("bits must not be empty")
    _check_dimensions(n, m)
    m = int(m)
    _check_bits(seed, "seed", n + m - 1)
    if method not in ("auto", "direct", "packed"):
        raise ValueError("method must be 'auto', 'direct' or 'packed'")
    packed_allowed = n + m - 1 < _PACKED_MAX_BITS
    if method == "packed" and not packed_allowed:
        raise ValueError("the packed method needs n + m - 1 < 2^22")
    if m == 0:
        return np.zeros(0, dtype=np.uint8)
    length = _fast_length(n + m - 1)
    if method == "direct" or not packed_allowed:
        return _SeedSpectrum(seed, length).hash(bits, m, check_rounding)
    result = _packed(bits, seed, m, length)
    if check_rounding:
        direct = _SeedSpectrum(seed, length).hash(bits, m, True)
        if not np.array_equal(result, direct):
            raise ArithmeticError("packed Toeplitz hash disagrees with the direct method")
    return result


class ToeplitzHasher:
    """Toeplitz hash with a fixed seed whose spectrum is computed once.

    ``ToeplitzHasher(seed, n, m).hash(bits)`` equals ``toeplitz_hash(bits, seed, m)``; each
    call costs two FFTs (forward of ``bits``, inverse). Thread-safe.
    """

    __slots__ = ("_m", "_n", "_spectrum")

    def __init__(self, seed: NDArray[np.uint8], n: int, m: int) -> None:
        _check_dimensions(n, m)
        self._n = int(n)
        self._m = int(m)
        _check_bits(seed, "seed", self._n + self._m - 1)
        self._spectrum = (
            None if self._m == 0 else _SeedSpectrum(seed, _fast_length(self._n + self._m - 1))
        )

    @property
    def n(self) -> int:
        """Input length in bits."""
        return self._n

    @property
    def m(self) -> int:
        """Output length in bits."""
        return self._m

    def hash(self, bits: NDArray[np.uint8], *, check_rounding: bool = False) -> NDArray[np.uint8]:
        """``T x mod 2`` for ``n`` input bits (1-D uint8 0/1); returns ``m`` bits.

        ``check_rounding`` verifies that the convolution values are within 0.25 of integers.
        """
        _check_bits(bits, "bits", self._n)
        if self._spectrum is None:
            return np.zeros(0, dtype=np.uint8)
        return self._spectrum.hash(bits, self._m, check_rounding)


def toeplitz_hash_dense(
    bits: NDArray[np.uint8], seed: NDArray[np.uint8], m: int
) -> NDArray[np.uint8]:
    """Reference ``T x mod 2`` by explicit O(n m) products (tests; small sizes only)."""
    _check_bits(bits, "bits", None)
    n = int(bits.size)
    if n < 1:
        raise ValueError("bits must not be empty")
    _check_dimensions(n, m)
    m = int(m)
    _check_bits(seed, "seed", n + m - 1)
    # Row i of T is seed[i : i + n] reversed, so y_i = seed[i : i + n] . x[::-1].
    windows = np.lib.stride_tricks.sliding_window_view(seed, n)[:m]
    reversed_bits = bits[::-1].astype(np.int64)
    out = np.empty(m, dtype=np.uint8)
    rows_per_chunk = max(1, (1 << 22) // n)
    for start in range(0, m, rows_per_chunk):
        chunk = windows[start : start + rows_per_chunk].astype(np.int64)
        out[start : start + chunk.shape[0]] = (chunk @ reversed_bits) & 1
    return out
