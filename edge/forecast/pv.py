"""PV forecast: a clear-sky curve from the site's location, scaled by what the site produced.

* **Clear sky.** Solar elevation from the NOAA approximations (declination and equation of
  time as Fourier series of the fractional year, good to a few minutes of time), and the
  Haurwitz clear-sky global irradiance ``GHI = 1098 sin(h) exp(-0.057 / sin(h))`` W/m2.
  The site's *potential* is ``size x GHI / 1000``.
* **Size.** The inverter's (or installer's) peak power when known, else learned from history:
  a high quantile of the available PV over the clear-sky fraction in the brighter slots.
* **Clearness.** Per time of day, the recency-weighted ratio of what the site produced to
  its potential on the past days (the site's orientation, shading and climate are in it),
  shrunk towards the site's overall ratio where the sun was low, and smoothed over an
  hour (a shadow lasts, a cloud does not). The last hour's ratio of
  observed to expected production scales the next hours and decays towards 1 further ahead
  (``tau_h``): a cloudy morning says little about tomorrow.
* **Without a location** the day's shape itself is learned: per time of day, the
  recency-weighted mean of the available PV on the past days (the potential is then that
  profile), with the same short-term scaling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge.forecast.history import PV_AVAIL, SLOT_S, SLOTS_PER_DAY, SlotHistory

__all__ = [
    "PvForecast",
    "clear_sky_fraction",
    "forecast_pv",
    "learn_size_w",
    "sin_solar_elevation",
    "slot_clear_sky",
]

DAY_S = 86400.0
DEFAULT_CLEARNESS = 0.6  # a site with no history: a typical mid-latitude ratio
SUN_SAMPLES = (1 / 6, 1 / 2, 5 / 6)  # where in a slot its mean clear sky is sampled


def _fractional_year(ts: np.ndarray) -> np.ndarray:
    """Radians through the calendar year (UTC), as the NOAA formulas want it."""
    t = np.asarray(ts, dtype=float)
    seconds = t.astype("datetime64[s]")
    year_start = seconds.astype("datetime64[Y]").astype("datetime64[s]").astype(float)
    next_year = (seconds.astype("datetime64[Y]") + 1).astype("datetime64[s]").astype(float)
    return 2 * np.pi * (t - year_start) / (next_year - year_start)


def sin_solar_elevation(ts, lat_deg: float, lon_deg: float) -> np.ndarray:
    """Sine of the sun's elevation at Unix times ``ts`` (negative at night)."""
    t = np.asarray(ts, dtype=float)
    g = _fractional_year(t)
    decl = (
        0.006918
        - 0.399912 * np.cos(g)
        + 0.070257 * np.sin(g)
        - 0.006758 * np.cos(2 * g)
        + 0.000907 * np.sin(2 * g)
        - 0.002697 * np.cos(3 * g)
        + 0.00148 * np.sin(3 * g)
    )
    eot_min = 229.18 * (
        0.000075
        + 0.001868 * np.cos(g)
        - 0.032077 * np.sin(g)
        - 0.014615 * np.cos(2 * g)
        - 0.040849 * np.sin(2 * g)
    )
    solar_min = (t % DAY_S) / 60.0 + eot_min + 4.0 * lon_deg
    hour_angle = np.radians(solar_min / 4.0 - 180.0)
    lat = math.radians(lat_deg)
    return math.sin(lat) * np.sin(decl) + math.cos(lat) * np.cos(decl) * np.cos(hour_angle)


def clear_sky_fraction(ts, lat_deg: float, lon_deg: float) -> np.ndarray:
    """Haurwitz clear-sky global horizontal irradiance / 1000 W/m2 (0 at night)."""
    s = sin_solar_elevation(ts, lat_deg, lon_deg)
    safe = np.where(s > 0.01, s, 1.0)
    return np.where(s > 0.01, 1.098 * safe * np.exp(-0.057 / safe), 0.0)


def slot_clear_sky(slot_ts, lat_deg: float, lon_deg: float) -> np.ndarray:
    """Mean clear-sky fraction of the 15-min slots starting at ``slot_ts`` (any shape)."""
    t = np.asarray(slot_ts, dtype=float)
    total = np.zeros(t.shape)
    for f in SUN_SAMPLES:
        total = total + clear_sky_fraction(t + f * SLOT_S, lat_deg, lon_deg)
    return total / len(SUN_SAMPLES)


def learn_size_w(
    history: SlotHistory, upto_slot: int, lat_deg: float, lon_deg: float, days: int
) -> float | None:
    """The array's peak power seen in its history: the 95th percentile of available PV over
    the clear-sky fraction, in slots where the sun is well up. None with too little data."""
    slots = np.arange(upto_slot - days * SLOTS_PER_DAY, upto_slot)
    pv = history.gather(PV_AVAIL, slots)
    cs = slot_clear_sky(slots * SLOT_S, lat_deg, lon_deg)
    ok = np.isfinite(pv) & (cs > 0.25)
    if np.count_nonzero(ok) < 8:
        return None
    size = float(np.quantile(pv[ok] / cs[ok], 0.95))
    return size if size > 1.0 else None


@dataclass(frozen=True, slots=True)
class PvForecast:
    """Per forecast slot: expected PV (W), the potential it scales (W), and per sub-step."""

    pv_w: np.ndarray  # (n,) slot means
    potential_w: np.ndarray  # (n,) clear-sky potential (or the learned profile)
    sub_w: np.ndarray  # (n, m) at the simulation's sub-steps
    sub_potential_w: np.ndarray  # (n, m) the most the array could give at the sub-steps
    size_w: float | None
    recent_ratio: float  # the last hour's observed / expected production (1 = as usual)


def _weights(days: int, decay: float) -> np.ndarray:
    return decay ** np.arange(days, dtype=float)  # day 1 back weighs 1


def forecast_pv(
    history: SlotHistory,
    slots: np.ndarray,
    sub_ts: np.ndarray,
    now: float,
    *,
    location: tuple[float, float] | None,
    size_w: float | None,
    days: int,
    decay: float = 0.93,
    tau_h: float = 1.5,
    recent_slots: int = 4,
) -> PvForecast:
    """Forecast PV for the absolute slot numbers ``slots`` (n,), with sub-step times
    ``sub_ts`` (n, m). ``size_w``: the array's peak power if known (else learned)."""
    slots = np.asarray(slots, dtype=np.int64)
    n = len(slots)
    back = np.arange(1, days + 1, dtype=np.int64)[:, None] * SLOTS_PER_DAY
    past = slots[None, :] - back  # (days, n): the same time of day on past days
    pv_past = history.gather(PV_AVAIL, past)
    w = _weights(days, decay)[:, None] * np.isfinite(pv_past)
    pv_past0 = np.nan_to_num(pv_past)
    lead_h = (sub_ts.mean(axis=1) - now) / 3600.0
    latest = history.latest_slot()
    recent = np.arange(latest - recent_slots + 1, latest + 1, dtype=np.int64)

    if location is not None:
        lat, lon = location
        if size_w is None:
            size_w = learn_size_w(history, latest + 1, lat, lon, days)
    if location is not None and size_w is not None:
        lat, lon = location
        pot = size_w * slot_clear_sky(slots * SLOT_S, lat, lon)
        pot_past = size_w * slot_clear_sky(past * SLOT_S, lat, lon)
        # the site's overall clearness, then per time of day shrunk towards it
        energy = float((w * pot_past).sum())
        k_all = float((w * pv_past0).sum()) / energy if energy > 0 else DEFAULT_CLEARNESS
        k_all = min(1.2, max(0.0, k_all))
        pseudo = 0.5 * pot + 1e-9
        k_tod = ((w * pv_past0).sum(axis=0) + pseudo * k_all) / (
            (w * pot_past).sum(axis=0) + pseudo
        )
        k_tod = np.clip(_smooth(k_tod), 0.0, 1.2)
        expected = pot * k_tod
        sub_pot = size_w * clear_sky_fraction(sub_ts, lat, lon)
        sub_expected = sub_pot * k_tod[:, None]
        # the recent hour: observed vs what the same method expected then
        r_pot = size_w * slot_clear_sky(recent * SLOT_S, lat, lon)
        r_past = recent[None, :] - back
        r_pv_past = history.gather(PV_AVAIL, r_past)
        r_w = _weights(days, decay)[:, None] * np.isfinite(r_pv_past)
        r_pot_past = size_w * slot_clear_sky(r_past * SLOT_S, lat, lon)
        pseudo_r = 0.5 * r_pot + 1e-9
        r_k = ((r_w * np.nan_to_num(r_pv_past)).sum(axis=0) + pseudo_r * k_all) / (
            (r_w * r_pot_past).sum(axis=0) + pseudo_r
        )
        r_expected = r_pot * np.clip(r_k, 0.0, 1.2)  # (not smoothed: four slots)
        cap = 1.05 * pot
        sub_cap = 1.05 * sub_pot
    else:
        # no location (or nothing to scale yet): the day's shape from history
        total = w.sum(axis=0)
        expected = np.where(total > 0, (w * pv_past0).sum(axis=0) / np.maximum(total, 1e-9), 0.0)
        pot = expected.copy()
        sub_expected = _sub_from_slots(expected, sub_ts.shape[1])
        r_past = recent[None, :] - back
        r_pv_past = history.gather(PV_AVAIL, r_past)
        r_w = _weights(days, decay)[:, None] * np.isfinite(r_pv_past)
        r_total = r_w.sum(axis=0)
        r_expected = np.where(
            r_total > 0,
            (r_w * np.nan_to_num(r_pv_past)).sum(axis=0) / np.maximum(r_total, 1e-9),
            0.0,
        )
        cap = 1.5 * np.maximum(pot, expected)
        sub_cap = 1.5 * sub_expected

    # short-term: the last hour's observed / expected, decaying with the lead time
    r_obs = history.gather(PV_AVAIL, recent)
    ok = np.isfinite(r_obs) & (r_expected > 0)
    exp_sum = float(r_expected[ok].sum())
    ratio = 1.0
    if exp_sum > 0.02 * max(1.0, size_w or float(np.max(pot, initial=0.0)) or 1.0):
        ratio = min(3.0, max(0.0, float(r_obs[ok].sum()) / exp_sum))
    factor = 1.0 + (ratio - 1.0) * np.exp(-np.maximum(lead_h, 0.0) / tau_h)
    pv = np.clip(expected * factor, 0.0, cap)
    sub = np.clip(sub_expected * factor[:, None], 0.0, None)
    if n:
        sub = np.minimum(sub, np.maximum(cap, pv)[:, None] * 1.5)
    return PvForecast(
        pv_w=pv,
        potential_w=pot,
        sub_w=sub,
        sub_potential_w=np.maximum(sub_cap, sub),
        size_w=size_w,
        recent_ratio=ratio,
    )


def _smooth(x: np.ndarray) -> np.ndarray:
    """Over five neighbouring slots (triangular weights): an orientation or a shadow shows
    over an hour, a passing cloud in one slot is noise."""
    if len(x) < 5:
        return x
    w = np.array([1.0, 2.0, 3.0, 2.0, 1.0])
    padded = np.concatenate([x[:1], x[:1], x, x[-1:], x[-1:]])
    return np.convolve(padded, w / w.sum(), mode="valid")


def _sub_from_slots(values: np.ndarray, m: int) -> np.ndarray:
    """Sub-step values from slot means (linear between slot centres, mean-preserving enough
    for the storage simulation)."""
    n = len(values)
    if n == 0:
        return np.zeros((0, m))
    centres = np.arange(n) + 0.5
    x = (np.arange(n)[:, None] + (np.arange(m)[None, :] + 0.5) / m).ravel()
    return np.interp(x, centres, values).reshape(n, m)
