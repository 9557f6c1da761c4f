"""Household load: by time of day from a crafted history, the prior, the short-term level."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge.forecast.history import SLOT_S
from edge.forecast.load import DEFAULT_MEAN_W, forecast_load, h0_shape

from .crafted import T0, history

NOW = T0 + 14 * 86400  # a slot boundary, midnight UTC


def _slots(n: int = 96) -> np.ndarray:
    return np.arange(int(NOW // SLOT_S), int(NOW // SLOT_S) + n)


def _sine(t: float) -> float:
    return 600.0 + 300.0 * math.sin(2 * math.pi * (t % 86400) / 86400)


def _forecast(values, days: float = 14, now: float = NOW):
    return forecast_load(history(values, days, now), _slots(), now, days=14, utc_offset_h=1.0)


# crafted history -> what tomorrow's forecast must show
def test_the_days_shape_comes_back():
    fc = _forecast(lambda t: {"load_w": _sine(t), "load_std_w": 150.0})
    expected = np.array([_sine(s * SLOT_S) for s in _slots()])
    # the prior (a household shape at the site's mean level) weighs 5 % with 14 days
    np.testing.assert_allclose(fc.load_w, expected, atol=0.06 * 600)
    np.testing.assert_allclose(fc.std_w, 150.0)
    assert abs(fc.anomaly_w) < 0.02 * 600  # only what the prior moves


def test_recent_days_weigh_more():
    fc = _forecast(lambda t: {"load_w": 800.0 if t >= NOW - 7 * 86400 else 400.0})
    w = 0.8 ** np.arange(14)
    level = (w[:7].sum() * 800 + w[7:].sum() * 400) / w.sum()
    assert fc.load_w.mean() == pytest.approx(level, rel=0.03)
    assert fc.load_w.mean() > 700


def test_without_history_the_household_prior():
    fc = _forecast(lambda t: {}, days=0)
    assert fc.load_w.mean() == pytest.approx(DEFAULT_MEAN_W, rel=0.02)
    shape = h0_shape(_slots() * SLOT_S, 1.0)
    np.testing.assert_allclose(fc.load_w / DEFAULT_MEAN_W, shape, rtol=0.05)
    hour = (_slots() * SLOT_S % 86400) / 3600 + 1.0  # local
    evening = fc.load_w[(hour >= 19) & (hour < 20)].mean()
    night = fc.load_w[(hour >= 3) & (hour < 4)].mean()
    assert evening > 3 * night
    np.testing.assert_allclose(fc.std_w, 0.3 * fc.profile_w, rtol=0.1)


def test_one_day_of_history_is_blended_with_the_prior_at_its_level():
    fc = _forecast(lambda t: {"load_w": 1000.0}, days=1)
    assert fc.load_w.mean() == pytest.approx(1000.0, rel=0.02)
    assert np.abs(fc.load_w - 1000.0).max() < 0.25 * 1000.0


@pytest.mark.parametrize(
    ("lead_slots", "expected"),
    [(0, 500 + 500 * math.exp(-0.125)), (4, 500 + 500 * math.exp(-1.125)), (40, 500.0)],
)
def test_a_busy_last_hour_lifts_the_next_hours(lead_slots, expected):
    fc = _forecast(lambda t: {"load_w": 1000.0 if t >= NOW - 3600 else 500.0})
    assert fc.anomaly_w == pytest.approx(500.0, rel=0.03)
    base = fc.profile_w[lead_slots]
    lifted = base + fc.anomaly_w * math.exp(-(lead_slots + 0.5) / 4)
    assert fc.load_w[lead_slots] == pytest.approx(lifted, rel=1e-6)
    assert fc.load_w[lead_slots] == pytest.approx(expected, rel=0.1)
