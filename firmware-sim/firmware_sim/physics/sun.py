"""PV production: a clear-sky curve times a seeded cloudiness process.

Clear sky: the Haurwitz model, GHI = 1098 * sin(h) * exp(-0.057 / sin(h)) W/m2, from the
solar elevation ``h`` (declination and hour angle from the Unix time and longitude, no
equation-of-time correction: minutes do not matter here). PV power is the plant's peak power
times GHI / 1000, times a cloud factor.
"""

from __future__ import annotations

import numpy as np

from firmware_sim.physics.noise import Ar1Process

SECONDS_PER_DAY = 86400.0


def sin_solar_elevation(t: float, lat_deg: np.ndarray | float, lon_deg: np.ndarray | float):
    """Sine of the solar elevation at Unix time ``t`` (negative at night)."""
    day_of_year = ((t / SECONDS_PER_DAY) % 365.2422) + 1  # close enough to the calendar day
    decl = np.radians(23.44) * np.sin(2 * np.pi * (284 + day_of_year) / 365.0)
    solar_hours = (t % SECONDS_PER_DAY) / 3600.0 + np.asarray(lon_deg) / 15.0
    hour_angle = np.radians(15.0 * (solar_hours - 12.0))
    lat = np.radians(lat_deg)
    return np.sin(lat) * np.sin(decl) + np.cos(lat) * np.cos(decl) * np.cos(hour_angle)


def clear_sky_fraction(t: float, lat_deg, lon_deg):
    """Clear-sky global horizontal irradiance / 1000 W/m2 (0 at night)."""
    s = np.asarray(sin_solar_elevation(t, lat_deg, lon_deg), dtype=float)
    safe = np.where(s > 0.01, s, 1.0)
    ghi = np.where(s > 0.01, 1098.0 * safe * np.exp(-0.057 / safe), 0.0)
    return np.clip(ghi / 1000.0, 0.0, 1.1)


class Cloudiness:
    """Cloud cover 0 (clear) .. 1 (overcast) per site, a seeded AR(1) on a 5-minute grid.

    A per-site climate bias (from the seed) makes some sites sunnier than others; the AR(1)
    gives passing clouds with a correlation time of about half an hour.
    """

    def __init__(self, seed: int, n: int, step_s: float = 300.0, phi: float = 0.85) -> None:
        self._proc = Ar1Process(seed, salt=1, n=n, step_s=step_s, phi=phi)
        rng = np.random.default_rng([seed & 0xFFFFFFFF, 11])
        self.bias = rng.uniform(-0.3, 0.3, n)

    def value(self, t: float) -> np.ndarray:
        x = self._proc.value(t)
        return np.clip(0.35 + self.bias + 0.3 * x, 0.0, 1.0)


def pv_available_w(peak_w, clear_fraction, cloud):
    """Power the array could deliver now: peak * irradiance fraction * cloud attenuation."""
    return np.asarray(peak_w) * clear_fraction * (1.0 - 0.75 * np.asarray(cloud))
