"""Toeplitz-matrix privacy amplification, computed with real FFTs.

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
support of ``c``). Hence, with real FFTs of length ``N``:

* **direct** method (three FFTs):
  ``y = irfft(rfft(s, N) * rfft(x, N))[n - 1 : n - 1 + m] mod 2``. The values are integers
  in ``[0, n]`` and the float64 round-off is orders of magnitude below 0.5, so rounding to
  the nearest integer and keeping the lowest bit is exact.

* **packed** method (two FFTs, used by default for ``L < 2^22``): with ``2^k > L``,
  transform the single real sequence ``u = s + 2^k x`` and square its spectrum:
  ``u * u = s * s + 2^(k+1) (s * x) + 2^(2k) (x * x)`` (cyclic convolutions). Every entry
  ``A`` of ``s * s`` lies in ``[0, L]``, so
  ``(u * u - L/2) / 2^(k+1) = B + 2^(k-1) C + (A - L/2) / 2^(k+1)`` where the last term is
  below 1/4 in magnitude: rounding gives ``B + 2^(k-1) C``, whose parity is that of the
  wanted ``B = s * x`` (``k >= 2``). This holds as long as the float64 error on
  ``u * u`` stays below ``2^(k-1)``; the values reach ``~2^(2k) n`` (up to ~2^66 at the size
  limit), and the measured worst-case error (all-ones inputs at ``L`` just below 2^22) is
  about 2^14.4, i.e. a margin of ~100x. The DC bin of the squared spectrum is replaced by
  the exact ``S^2 - N L / 2`` (``S = sum(u)``, recovered exactly by rounding the computed
  DC bin), which both applies the ``-L/2`` shift and removes the largest rounding error.

Rounding uses the float64 "magic number" trick: adding ``1.5 * 2^52`` leaves ``round(v)``
in the low mantissa bits, whose lowest bit is the parity. ``check_rounding=True`` is a
debugging aid: the direct method then verifies that every value was within 0.25 of an
integer, and the packed method is cross-checked against the direct one.

FFT engine
----------
Large transforms use FFTW through pyFFTW, multi-threaded (two threads by default). FFT
lengths come from a small set, ``c * 2^j`` with ``c`` in {16, 18, 20, 21, 24, 25, 27, 28, 30}
(at most ~14 % padding), so that frames of slightly different sizes share plans. Each length
gets a *workspace*: SIMD-aligned buffers plus the FFTW plans that operate on them. A
workspace is used by one call at a time; concurrent callers (the link runs privacy
amplification from a thread pool) take distinct workspaces from a small pool, bounded in
memory, and planning is serialised by a lock.

The default planner effort is ``FFTW_ESTIMATE``: planning is instantaneous, but the
transforms are ~30 % slower than with ``FFTW_MEASURE``, whose planning takes *minutes* for
lengths around 10^6 on a small machine. A long-running node can opt in with
:func:`configure_fftw` (optionally with a ``planning_timelimit``), plan ahead with
:func:`warm_up`, and persist the result with :func:`export_wisdom` / :func:`import_wisdom`.
Small transforms use ``numpy.fft`` (no planning at all).
"""

from __future__ import annotations

import bisect
import math
import os
import threading
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

_FAST_MULTIPLIERS: Final[tuple[int, ...]] = (16, 18, 20, 21, 24, 25, 27, 28, 30)
_FAST_LENGTHS: Final[tuple[int, ...]] = tuple(
    sorted(set(range(1, 16)) | {c << j for c in _FAST_MULTIPLIERS for j in range(48)})
)

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
    """FFT length used for an ``m x n`` hash: the smallest cached length ``>= n + m - 1``."""
    return _fast_length(seed_length(n, m))


def _fast_length(minimum: int) -> int:
    return _FAST_LENGTHS[bisect.bisect_left(_FAST_LENGTHS, max(1, minimum))]


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


class _Workspace:
    """Aligned buffers and FFTW plans for one FFT length.

    ``forward: real -> spectrum``, ``inverse: spectrum -> real`` (unnormalised) and, created
    on first use, ``forward_b: real -> spectrum_b``.
    """

    __slots__ = (
        "_forward_b",
        "_options",
        "forward",
        "generation",
        "inverse",
        "length",
        "real",
        "spectrum",
        "spectrum_b",
    )

    def __init__(self, length: int, settings: FFTWSettings, generation: int) -> None:
        self.length = length
        self.generation = generation
        self._options: dict[str, Any] = {
            "flags": (settings.planner_effort, "FFTW_DESTROY_INPUT"),
            "threads": settings.threads,
            "planning_timelimit": settings.planning_timelimit,
        }
        self.real: NDArray[np.float64] = pyfftw.empty_aligned(length, dtype="float64")
        self.spectrum: NDArray[np.complex128] = pyfftw.empty_aligned(
            length // 2 + 1, dtype="complex128"
        )
        self.spectrum_b: NDArray[np.complex128] | None = None
        self._forward_b: _Plan | None = None
        with _plan_lock:
            self.forward: _Plan = pyfftw.FFTW(
                self.real, self.spectrum, direction="FFTW_FORWARD", **self._options
            )
            self.inverse: _Plan = pyfftw.FFTW(
                self.spectrum, self.real, direction="FFTW_BACKWARD", **self._options
            )

    @property
    def nbytes(self) -> int:
        extra = 0 if self.spectrum_b is None else self.spectrum_b.nbytes
        return int(self.real.nbytes + self.spectrum.nbytes + extra)

    def forward_b(self) -> tuple[_Plan, NDArray[np.complex128]]:
        """The second forward plan (into ``spectrum_b``), created on first use."""
        if self._forward_b is None or self.spectrum_b is None:
            spectrum_b: NDArray[np.complex128] = pyfftw.empty_aligned(
                self.length // 2 + 1, dtype="complex128"
            )
            with _plan_lock:
                plan: _Plan = pyfftw.FFTW(
                    self.real, spectrum_b, direction="FFTW_FORWARD", **self._options
                )
            self.spectrum_b, self._forward_b = spectrum_b, plan
        return self._forward_b, self.spectrum_b


class _HalfWorkspace:
    """Buffers and complex FFTW plans of length ``N / 2`` for the packed method.

    The real sequence of length ``N`` in ``data`` (viewed as ``real``) is transformed as ``N / 2``
    complex numbers ``u[2j] + i u[2j+1]``: ``forward: data -> spectrum``,
    ``inverse: spectrum -> data`` (unnormalised). ``tau``, ``conj_b`` and ``scratch`` serve
    the spectral step of :func:`_packed_half`.
    """

    __slots__ = (
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
            raise ValueError("the packed FFT length must be a multiple of 4")
        self.length = length
        self.generation = generation
        half, quarter = length // 2, length // 4
        options: dict[str, Any] = {
            "flags": (settings.planner_effort, "FFTW_DESTROY_INPUT"),
            "threads": settings.threads,
            "planning_timelimit": settings.planning_timelimit,
        }
        self.data: NDArray[np.complex128] = pyfftw.empty_aligned(half, dtype="complex128")
        self.real: NDArray[np.float64] = self.data.view(np.float64)
        self.spectrum: NDArray[np.complex128] = pyfftw.empty_aligned(half, dtype="complex128")
        self.conj_b = np.empty(quarter, dtype=np.complex128)
        self.scratch = np.empty(quarter, dtype=np.complex128)
        # tau[i] = (1 + w^(i+1)) / 4, w = exp(-2 pi i / (N/2)); see _packed_half
        self.tau = np.exp(np.arange(1, quarter + 1) * (-2j * np.pi / half))
        self.tau += 1.0
        self.tau *= 0.25
        with _plan_lock:
            self.forward: _Plan = pyfftw.FFTW(
                self.data, self.spectrum, direction="FFTW_FORWARD", **options
            )
            self.inverse: _Plan = pyfftw.FFTW(
                self.spectrum, self.data, direction="FFTW_BACKWARD", **options
            )

    @property
    def nbytes(self) -> int:
        return int(
            self.data.nbytes
            + self.spectrum.nbytes
            + self.conj_b.nbytes
            + self.scratch.nbytes
            + self.tau.nbytes
        )


_AnyWorkspace = _Workspace | _HalfWorkspace

_plan_lock = threading.Lock()  # serialises FFTW planning and wisdom (the planner is global)
_pool_lock = threading.Lock()  # guards _pool, _generation and _settings
_pool: OrderedDict[tuple[bool, int], list[_AnyWorkspace]] = OrderedDict()
_generation = 0


def _acquire(length: int) -> _Workspace:
    """A real-transform workspace (direct method, hasher)."""
    with _pool_lock:
        idle = _pool.get((False, length))
        if idle:
            workspace = idle.pop()
            assert isinstance(workspace, _Workspace)
            return workspace
        settings, generation = _settings, _generation
    return _Workspace(length, settings, generation)


def _acquire_half(length: int) -> _HalfWorkspace:
    """A half-length complex workspace (packed method)."""
    with _pool_lock:
        idle = _pool.get((True, length))
        if idle:
            workspace = idle.pop()
            assert isinstance(workspace, _HalfWorkspace)
            return workspace
        settings, generation = _settings, _generation
    return _HalfWorkspace(length, settings, generation)


def _release(workspace: _AnyWorkspace) -> None:
    key = (isinstance(workspace, _HalfWorkspace), workspace.length)
    with _pool_lock:
        if workspace.generation != _generation:
            return
        idle = _pool.setdefault(key, [])
        _pool.move_to_end(key)
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
    limit. The workspace cache is cleared, so the next call of each length plans again.
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


def warm_up(n: int, m: int, *, method: Method = "auto") -> int:
    """Create the FFT workspace (plans) used for ``m x n`` hashes now; returns the FFT length.

    With ``FFTW_MEASURE`` this is where the planning time is spent.
    """
    length = fft_length(n, m)
    if length <= _NUMPY_MAX_LENGTH or m == 0:
        return length
    if method != "direct" and seed_length(n, m) < _PACKED_MAX_BITS:
        _release(_acquire_half(length))
    else:
        workspace = _acquire(length)
        try:
            workspace.forward_b()
        finally:
            _release(workspace)
    return length


# --------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------

# Element-wise passes over at least this many elements are split between the calling thread
# and a helper thread (numpy releases the GIL), when FFTW is allowed more than one thread.
_SPLIT_MIN: Final[int] = 1 << 17

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
    half = (size // 2) & ~63
    future = _helper_pool().submit(work, half, size)
    work(0, half)
    if future.cancel():
        work(half, size)
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


def _multiply(
    a: NDArray[np.complex128], b: NDArray[np.complex128], out: NDArray[np.complex128]
) -> None:
    """``out = a * b`` element-wise."""

    def work(lo: int, hi: int) -> None:
        np.multiply(a[lo:hi], b[lo:hi], out=out[lo:hi])

    _split(work, out.size)


def _fill(buffer: NDArray[np.float64], bits: NDArray[np.uint8]) -> None:
    """``buffer = bits`` zero-padded to the buffer length."""

    def work(lo: int, hi: int) -> None:
        np.copyto(buffer[lo:hi], bits[lo:hi])

    _split(work, bits.size)
    buffer[bits.size :] = 0.0


def _direct(
    bits: NDArray[np.uint8], seed: NDArray[np.uint8], m: int, length: int, check: bool
) -> NDArray[np.uint8]:
    """Three-FFT method: ``irfft(rfft(seed) * rfft(bits))``."""
    n = bits.size
    window = slice(n - 1, n - 1 + m)
    if length <= _NUMPY_MAX_LENGTH:
        spectrum = np.fft.rfft(seed, length) * np.fft.rfft(bits, length)
        values = np.fft.irfft(spectrum, length)[window]
        if check:
            _check_margin(values, 1.0)
        return _parity(values, 1.0)
    workspace = _acquire(length)
    try:
        forward_b, spectrum_b = workspace.forward_b()
        _fill(workspace.real, seed)
        workspace.forward.execute()
        _fill(workspace.real, bits)
        forward_b.execute()
        _multiply(workspace.spectrum, spectrum_b, workspace.spectrum)
        workspace.inverse.execute()
        values = workspace.real[window]
        scale = 1.0 / length  # FFTW's inverse transform is unnormalised
        if check:
            _check_margin(values, scale)
        return _parity(values, scale)
    finally:
        _release(workspace)


def _packed_shift(n: int, m: int) -> int:
    """``k`` of the packed method: the smallest ``k >= 2`` with ``2^k > n + m - 1``."""
    return max(2, (n + m - 1).bit_length())


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


def _packed(
    bits: NDArray[np.uint8], seed: NDArray[np.uint8], m: int, length: int
) -> NDArray[np.uint8]:
    """Two-FFT method: square the spectrum of ``seed + 2^k bits`` (see module docstring)."""
    n = bits.size
    total = n + m - 1
    shift = _packed_shift(n, m)
    window = slice(n - 1, n - 1 + m)
    scale = 1.0 / float(1 << (shift + 1))
    if length <= _NUMPY_MAX_LENGTH:
        real = np.empty(length, dtype=np.float64)
        _packed_fill(real, bits, seed, float(1 << shift))
        spectrum = np.fft.rfft(real)
        _square_with_dc(spectrum, length, total)
        return _parity(np.fft.irfft(spectrum, length)[window], scale)
    return _packed_half(bits, seed, m, length, shift)


# Sub-block size of the spectral step (keeps its operands in cache).
_SPECTRAL_BLOCK: Final[int] = 1 << 15


def _packed_half(
    bits: NDArray[np.uint8], seed: NDArray[np.uint8], m: int, length: int, shift: int
) -> NDArray[np.uint8]:
    """Packed method with two complex FFTs of length ``M = N / 2`` instead of real FFTs.

    FFTW's estimated plans are much better for complex than for real transforms of these
    sizes, so the real sequence ``u`` of length ``N`` is transformed as the complex sequence
    ``z[j] = u[2j] + i u[2j+1]``: ``Z = DFT_M(z)``. With ``P = Z[k]``,
    ``Q = conj(Z[M - k])``, the spectra of the even and odd samples of ``u`` are
    ``E = (P + Q) / 2`` and ``O = (P - Q) / (2i)``. The self-convolution ``v = u * u``
    has even samples with spectrum ``E^2 + w^k O^2`` (``w = exp(-2 pi i / M)``) and odd samples
    with spectrum ``2 E O``; packing them the same way gives
    ``W[k] = P^2 - tau_k (P - Q)^2`` and ``conj(W[M - k]) = Q^2 - tau_k (P - Q)^2`` with
    ``tau_k = (1 + w^k) / 4``, computed for each pair ``(k, M - k)`` at once. The inverse
    complex FFT of ``W`` is ``M v`` with the even and odd samples interleaved, i.e. ``M v`` in
    natural order when viewed as reals. The DC bin gets the exact
    ``W[0] = E0^2 + O0^2 - M L / 2 + i (2 E0 O0 - M L / 2)`` (``E0``, ``O0``: the integer
    sums of the even and odd samples), which applies the ``-L/2`` shift to every output.
    """
    n = bits.size
    total = n + m - 1
    half, quarter = length // 2, length // 4
    workspace = _acquire_half(length)
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
            # pairs k = i + 1 and M - k for i in [lo, hi), in cache-sized sub-blocks
            for a in range(lo, hi, _SPECTRAL_BLOCK):
                b = min(hi, a + _SPECTRAL_BLOCK)
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
                top = min(b, quarter - 1)  # k = M/2 pairs with itself: written once, above
                if top > a:
                    np.conjugate(q[: top - a], out=spectrum[half - 1 - a : half - 1 - top : -1])

        _split(work, quarter)
        offset = half * total / 2
        spectrum[0] = complex(
            float(even_sum * even_sum + odd_sum * odd_sum) - offset,
            float(2 * even_sum * odd_sum) - offset,
        )
        workspace.inverse.execute()
        return _parity(workspace.real[n - 1 : n - 1 + m], 1.0 / (half * float(1 << (shift + 1))))
    finally:
        _release(workspace)


def _square_with_dc(spectrum: NDArray[np.complex128], length: int, total: int) -> None:
    """Square the spectrum in place; set the DC bin to ``S^2 - length * total / 2``."""
    u_sum = round(float(spectrum[0].real))  # sum(u): an integer below 2^53, computed to ~1e-5

    def work(lo: int, hi: int) -> None:
        chunk = spectrum[lo:hi]
        np.multiply(chunk, chunk, out=chunk)

    _split(work, spectrum.size)
    spectrum[0] = float(2 * u_sum * u_sum - length * total) * 0.5


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
        return _direct(bits, seed, m, length, check_rounding)
    result = _packed(bits, seed, m, length)
    if check_rounding and not np.array_equal(result, _direct(bits, seed, m, length, True)):
        raise ArithmeticError("packed Toeplitz hash disagrees with the direct method")
    return result


class ToeplitzHasher:
    """Toeplitz hash with a fixed seed whose spectrum is computed once.

    ``ToeplitzHasher(seed, n, m).hash(bits)`` equals ``toeplitz_hash(bits, seed, m)``; each
    call costs two FFTs (forward of ``bits``, inverse). Thread-safe.
    """

    __slots__ = ("_length", "_m", "_n", "_spectrum")

    def __init__(self, seed: NDArray[np.uint8], n: int, m: int) -> None:
        _check_dimensions(n, m)
        self._n = int(n)
        self._m = int(m)
        _check_bits(seed, "seed", self._n + self._m - 1)
        self._length = _fast_length(self._n + self._m - 1)
        spectrum: NDArray[np.complex128]
        if self._m == 0:
            spectrum = np.zeros(0, dtype=np.complex128)
        elif self._length <= _NUMPY_MAX_LENGTH:
            spectrum = np.fft.rfft(seed, self._length)
        else:
            workspace = _acquire(self._length)
            try:
                _fill(workspace.real, seed)
                workspace.forward.execute()
                spectrum = pyfftw.empty_aligned(self._length // 2 + 1, dtype="complex128")
                # fold the 1/N of FFTW's unnormalised inverse transform into the spectrum
                np.multiply(workspace.spectrum, 1.0 / self._length, out=spectrum)
            finally:
                _release(workspace)
        spectrum.setflags(write=False)
        self._spectrum = spectrum

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
        n, m, length = self._n, self._m, self._length
        if m == 0:
            return np.zeros(0, dtype=np.uint8)
        window = slice(n - 1, n - 1 + m)
        if length <= _NUMPY_MAX_LENGTH:
            values = np.fft.irfft(self._spectrum * np.fft.rfft(bits, length), length)[window]
        else:
            workspace = _acquire(length)
            try:
                _fill(workspace.real, bits)
                workspace.forward.execute()
                _multiply(workspace.spectrum, self._spectrum, workspace.spectrum)
                workspace.inverse.execute()
                values = workspace.real[window]
                if check_rounding:
                    _check_margin(values, 1.0)
                return _parity(values, 1.0)
            finally:
                _release(workspace)
        if check_rounding:
            _check_margin(values, 1.0)
        return _parity(values, 1.0)


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
