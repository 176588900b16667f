"""Satellite-to-ground QKD downlinks: pass geometry and loss budget, I/O-free.

Geometry (spherical Earth, circular orbit, Earth rotation ignored; `satellite-links.md` §1):
an orbit of altitude `altitude_km` has period T = 2π·sqrt(r³/μ) (r = R_E + h); a pass whose
ground track comes within the Earth-central angle γ0 of the station (0: straight overhead) has
cos γ(t) = cos γ0 · cos(ω·t), t from culmination, elevation ε = atan2(cos γ − R_E/r, sin γ) and
slant range d = sqrt(R_E² + r² − 2·R_E·r·cos γ). The link is up while ε ≥ the station's mask.

Loss (dB, summed; §2): diffraction of a Gaussian beam of full 1/e² divergence θ (waist
w0 = 2λ/(π·θ)) caught by a receiver aperture D (η = 1 − exp(−2·(D/2)²/w(d)²)), or, given a
transmitter aperture D_T, the aperture model (D/(D_T + θ·d))²; atmosphere
T_zen^AM(ε) with the Kasten–Young air mass; pointing jitter σ_θ per axis (mean
η = 1/(1 + 4σ²/w²), σ = d·σ_θ); and a fixed optics/detector loss. `MICIUS_DOWNLINK` is the fact
sheet's calibration to Micius' tabulated pass (an effective zenith transmittance of 0.60 and
8.9 dB of receiver loss: 29.1 dB at 645 km, 38.0 dB at 1,200 km, against the 30.0 and 39.0 dB
measured).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "EARTH_RADIUS_KM",
    "MICIUS_DOWNLINK",
    "MU_KM3_S2",
    "Downlink",
    "Orbit",
    "PassPoint",
    "air_mass",
]

EARTH_RADIUS_KM = 6371.0
MU_KM3_S2 = 398_600.4418  # Earth's gravitational parameter


def air_mass(elevation_deg: float) -> float:
    """Kasten–Young (1989) relative air mass at `elevation_deg` above the horizon."""
    correction: float = 0.50572 * (elevation_deg + 6.07995) ** -1.6364
    return 1.0 / (math.sin(math.radians(elevation_deg)) + correction)


@dataclass(frozen=True)
class PassPoint:
    """Where the satellite is, seen from the station, at `t_s` from culmination."""

    t_s: float
    elevation_deg: float
    range_km: float


@dataclass(frozen=True)
class Orbit:
    """A circular orbit `altitude_km` above a spherical Earth."""

    altitude_km: float

    def __post_init__(self) -> None:
        if not 150.0 <= self.altitude_km <= 40_000.0:
            raise ValueError(f"altitude_km: 150 to 40,000 km, not {self.altitude_km:g}")

    @property
    def radius_km(self) -> float:
        return EARTH_RADIUS_KM + self.altitude_km

    @property
    def period_s(self) -> float:
        return 2 * math.pi * math.sqrt(self.radius_km**3 / MU_KM3_S2)

    @property
    def angular_rate(self) -> float:
        """Radians of orbit per second."""
        return 2 * math.pi / self.period_s

    def slant_range_km(self, elevation_deg: float) -> float:
        """Distance to the satellite seen at `elevation_deg`."""
        e = math.radians(elevation_deg)
        r, re = self.radius_km, EARTH_RADIUS_KM
        return math.sqrt(r**2 - (re * math.cos(e)) ** 2) - re * math.sin(e)

    def elevation_at_range_deg(self, range_km: float) -> float:
        """The elevation at which the satellite is `range_km` away."""
        r, re = self.radius_km, EARTH_RADIUS_KM
        if not self.altitude_km <= range_km <= math.sqrt(r**2 - re**2):
            raise ValueError(f"range_km: {range_km:g} is not seen from the ground")
        return math.degrees(math.asin((r**2 - re**2 - range_km**2) / (2 * re * range_km)))

    def visible_half_angle_deg(self, mask_deg: float) -> float:
        """Earth-central half-angle of the region seeing the satellite above `mask_deg`."""
        e = math.radians(mask_deg)
        return math.degrees(math.acos(EARTH_RADIUS_KM * math.cos(e) / self.radius_km) - e)

    def point(self, t_s: float, offset_deg: float = 0.0) -> PassPoint:
        """The satellite at `t_s` from culmination of a pass whose ground track comes within
        `offset_deg` (Earth-central angle) of the station."""
        cos_gamma = math.cos(math.radians(offset_deg)) * math.cos(self.angular_rate * t_s)
        gamma = math.acos(max(-1.0, min(1.0, cos_gamma)))
        r, re = self.radius_km, EARTH_RADIUS_KM
        elevation = math.degrees(math.atan2(cos_gamma - re / r, math.sin(gamma)))
        distance = math.sqrt(re**2 + r**2 - 2 * re * r * cos_gamma)
        return PassPoint(t_s, elevation, distance)

    def culmination_deg(self, offset_deg: float = 0.0) -> float:
        """The highest elevation of a pass `offset_deg` off the station."""
        return self.point(0.0, offset_deg).elevation_deg

    def pass_duration_s(self, mask_deg: float, offset_deg: float = 0.0) -> float:
        """How long a pass `offset_deg` off the station stays above `mask_deg` (0: never)."""
        half = math.radians(self.visible_half_angle_deg(mask_deg))
        cos_t = math.cos(half) / math.cos(math.radians(offset_deg))
        if cos_t >= 1.0:
            return 0.0
        return 2 * math.acos(cos_t) / self.angular_rate


@dataclass(frozen=True)
class Downlink:
    """The optics and atmosphere of a satellite-to-ground QKD link."""

    wavelength_nm: float = 850.0
    divergence_urad: float = 10.8  # full 1/e² angle of the transmitted beam
    receiver_aperture_m: float = 1.0
    zenith_transmittance: float = 0.8
    pointing_jitter_urad: float = 1.0  # per axis
    fixed_loss_db: float = 10.0  # transmitter and receiver optics, detector coupling
    # With a transmitter aperture D_T, the geometric loss is the aperture model of the
    # satellite-QKD literature, (D_R / (D_T + θ·d))², instead of the Gaussian beam's.
    transmitter_aperture_m: float | None = None

    def __post_init__(self) -> None:
        checks = (
            ("wavelength_nm", 100.0 <= self.wavelength_nm <= 20_000.0),
            ("divergence_urad", 0.1 <= self.divergence_urad <= 10_000.0),
            ("receiver_aperture_m", 0.01 <= self.receiver_aperture_m <= 20.0),
            ("zenith_transmittance", 0.0 < self.zenith_transmittance <= 1.0),
            ("pointing_jitter_urad", 0.0 <= self.pointing_jitter_urad <= 1_000.0),
            ("fixed_loss_db", 0.0 <= self.fixed_loss_db <= 100.0),
            (
                "transmitter_aperture_m",
                self.transmitter_aperture_m is None or 0.0 < self.transmitter_aperture_m <= 20.0,
            ),
        )
        for name, ok in checks:
            if not ok:
                raise ValueError(f"{name}: {getattr(self, name)!r} is out of range")

    @property
    def waist_m(self) -> float:
        """The beam waist w0 the divergence implies (θ = 2λ/(π·w0))."""
        return 2 * self.wavelength_nm * 1e-9 / (math.pi * self.divergence_urad * 1e-6)

    def beam_radius_m(self, range_km: float) -> float:
        """w(d), the 1/e² beam radius at the ground."""
        w0 = self.waist_m
        rayleigh = math.pi * w0**2 / (self.wavelength_nm * 1e-9)
        return w0 * math.sqrt(1 + (range_km * 1e3 / rayleigh) ** 2)

    def geometric_db(self, range_km: float) -> float:
        if self.transmitter_aperture_m is not None:
            spot = self.transmitter_aperture_m + range_km * 1e3 * self.divergence_urad * 1e-6
            return -10 * math.log10(min(1.0, (self.receiver_aperture_m / spot) ** 2))
        w = self.beam_radius_m(range_km)
        caught = 1 - math.exp(-2 * (self.receiver_aperture_m / 2) ** 2 / w**2)
        return -10 * math.log10(caught)

    def atmosphere_db(self, elevation_deg: float) -> float:
        return -10 * air_mass(elevation_deg) * math.log10(self.zenith_transmittance)

    def pointing_db(self, range_km: float) -> float:
        w = self.beam_radius_m(range_km)
        sigma = range_km * 1e3 * self.pointing_jitter_urad * 1e-6
        return 10 * math.log10(1 + 4 * sigma**2 / w**2)

    def loss_db(self, elevation_deg: float, range_km: float) -> float:
        """The whole downlink loss at that elevation and range."""
        return (
            self.geometric_db(range_km)
            + self.atmosphere_db(elevation_deg)
            + self.pointing_db(range_km)
            + self.fixed_loss_db
        )

    def transmittance(self, elevation_deg: float, range_km: float) -> float:
        return 10 ** (-self.loss_db(elevation_deg, range_km) / 10)


# Micius, as the fact sheet fits its tabulated pass (detector excluded): 850 nm, a 0.30 m
# transmitter at 10 µrad, a 1.0 m receiver, 1 µrad jitter, an effective zenith transmittance of
# 0.60, 8.9 dB fixed.
MICIUS_DOWNLINK = Downlink(
    wavelength_nm=850.0,
    divergence_urad=10.0,
    transmitter_aperture_m=0.30,
    receiver_aperture_m=1.0,
    zenith_transmittance=0.60,
    pointing_jitter_urad=1.0,
    fixed_loss_db=8.9,
)
