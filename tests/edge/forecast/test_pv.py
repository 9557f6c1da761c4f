"""PV: the sun's path at known dates and places, clear sky, and forecasts from crafted history."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from edge.forecast.history import PV_AVAIL, SLOT_S
from edge.forecast.pv import (
    DEFAULT_CLEARNESS,
    clear_sky_fraction,
    forecast_pv,
    sin_solar_elevation,
    slot_clear_sky,
)

from .crafted import BRUSSELS, T0, history


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()


# date, latitude, longitude -> highest solar elevation (deg) and when (UTC, h:min)
SUN = [
    ("2024-06-21", 50.85, 4.35, 62.6, "11:44"),  # Brussels, summer solstice: 90-50.85+23.44
    ("2024-12-21", 50.85, 4.35, 15.7, "11:41"),  # Brussels, winter solstice
    ("2024-03-20", 0.0, 0.0, 90.0, "12:08"),  # the equator at the equinox (time: -7.5 min EoT)
    ("2024-11-03", 0.0, 0.0, 75.0, "11:44"),  # equation of time at its largest: +16.4 min
    ("2024-02-11", 0.0, 0.0, 75.8, "12:14"),  # and at its smallest: -14.2 min
    ("2024-12-21", -33.87, 151.21, 79.6, "01:53"),  # Sydney, its summer
    ("2024-12-21", 69.65, 18.96, -3.1, "10:42"),  # Tromso: polar night
]


@pytest.mark.parametrize(("day", "lat", "lon", "elevation", "noon"), SUN)
def test_the_suns_highest_point_of_the_day(day, lat, lon, elevation, noon):
    t0 = _ts(day)
    ts = t0 + np.arange(0.0, 86400.0, 10.0)
    deg = np.degrees(np.arcsin(sin_solar_elevation(ts, lat, lon)))
    assert deg.max() == pytest.approx(elevation, abs=0.3)
    hours, minutes = (int(x) for x in noon.split(":"))
    assert (ts[deg.argmax()] - t0) / 60 == pytest.approx(hours * 60 + minutes, abs=1.5)


# sun's elevation -> Haurwitz clear-sky GHI / 1000 W/m2
CLEAR_SKY = [
    (90.0, 1.098 * math.exp(-0.057)),  # 1037 W/m2
    (30.0, 0.549 * math.exp(-0.114)),  # 490 W/m2
    (10.0, 1.098 * math.sin(math.radians(10)) * math.exp(-0.057 / math.sin(math.radians(10)))),
    (0.2, 0.0),  # at the horizon: nothing
    (-20.0, 0.0),  # night
]


@pytest.mark.parametrize(("elevation", "fraction"), CLEAR_SKY)
def test_haurwitz_clear_sky(elevation, fraction):
    # on the equator at the March equinox the sun's elevation is 90 deg - |hour angle|
    noon = _ts("2024-03-20T12:07:48")
    t = noon + (90.0 - elevation) * 240.0  # 4 minutes of time per degree
    assert clear_sky_fraction(np.array([t]), 0.0, 0.0)[0] == pytest.approx(fraction, abs=0.01)


def test_a_slots_clear_sky_is_its_mean():
    t = _ts("2024-06-21T06:00")
    fine = clear_sky_fraction(t + np.arange(0.5, 900.0, 1.0), *BRUSSELS).mean()
    assert slot_clear_sky(np.array([t]), *BRUSSELS)[0] == pytest.approx(fine, rel=0.01)


def _grid(now: float, n: int = 96, m: int = 3) -> tuple[np.ndarray, np.ndarray]:
    slots = np.arange(int(now // SLOT_S), int(now // SLOT_S) + n)
    sub = slots[:, None] * SLOT_S + (np.arange(m)[None, :] + 0.5) * SLOT_S / m
    return slots, sub.astype(float)


def _site(size: float, clearness: float):
    return lambda t: {"pv_available_w": size * clearness * slot_clear_sky(t, *BRUSSELS).item()}


def test_pv_follows_the_clear_sky_scaled_by_what_the_site_produced():
    now = T0 + 14 * 86400
    h = history(_site(6000, 0.6), 14, now)
    slots, sub = _grid(now)
    fc = forecast_pv(h, slots, sub, now, location=BRUSSELS, size_w=None, days=14)
    expected = 0.6 * 6000 * slot_clear_sky(slots * SLOT_S, *BRUSSELS)
    np.testing.assert_allclose(fc.pv_w, expected, rtol=0.03, atol=5)
    assert fc.recent_ratio == pytest.approx(1.0, abs=1e-6)
    assert fc.sub_w.mean(axis=1) == pytest.approx(fc.pv_w, rel=0.05, abs=5)


def test_a_dull_last_hour_dims_the_next_hours_not_tomorrow():
    now = T0 + 14 * 86400 + 11 * 3600  # 11:00 UTC
    usual = _site(6000, 0.6)

    def values(t: float) -> dict:
        dull = now - 3600 <= t < now
        return {"pv_available_w": usual(t)["pv_available_w"] * (0.3 if dull else 1.0)}

    h = history(values, 14, now)
    slots, sub = _grid(now)
    fc = forecast_pv(h, slots, sub, now, location=BRUSSELS, size_w=None, days=14)
    expected = 0.6 * 6000 * slot_clear_sky(slots * SLOT_S, *BRUSSELS)
    assert fc.recent_ratio == pytest.approx(0.3, abs=0.02)
    assert fc.pv_w[0] / expected[0] < 0.45  # the next quarter hour: still dull
    assert fc.pv_w[16] / expected[16] > 0.85  # four hours on: nearly usual
    # tomorrow: one dull hour of fourteen days of history weighs a few percent at most
    day_after = slots >= (now // 86400 + 1) * 96 + 32
    np.testing.assert_allclose(fc.pv_w[day_after], expected[day_after], rtol=0.08, atol=5)


def test_a_known_rating_without_history_gives_a_typical_clearness():
    now = T0
    h = history(lambda t: {}, 0, now)
    slots, sub = _grid(now)
    fc = forecast_pv(h, slots, sub, now, location=BRUSSELS, size_w=5000.0, days=14)
    expected = DEFAULT_CLEARNESS * 5000 * slot_clear_sky(slots * SLOT_S, *BRUSSELS)
    np.testing.assert_allclose(fc.pv_w, expected, rtol=1e-6, atol=1e-6)


def test_without_location_the_days_shape_is_learned():
    now = T0 + 7 * 86400

    def triangle(t: float) -> dict:
        hour = (t % 86400) / 3600
        return {"pv_available_w": max(0.0, 3000.0 * (1 - abs(hour - 12.0) / 6.0))}

    h = history(triangle, 7, now)
    slots, sub = _grid(now)
    fc = forecast_pv(h, slots, sub, now, location=None, size_w=None, days=14)
    expected = np.array([triangle(s * SLOT_S)["pv_available_w"] for s in slots])
    np.testing.assert_allclose(fc.pv_w, expected, atol=1.0)
    assert h.gather(PV_AVAIL, slots - 96) == pytest.approx(expected)
    assert fc.sub_w.mean(axis=1) == pytest.approx(expected, abs=60)


def test_no_history_and_no_rating_forecasts_no_pv():
    h = history(lambda t: {}, 0, T0)
    slots, sub = _grid(T0)
    fc = forecast_pv(h, slots, sub, T0, location=BRUSSELS, size_w=None, days=14)
    assert not fc.pv_w.any()
