"""The forecast's own errors: filed forecasts, matured against history, margins per lead."""

from __future__ import annotations

import numpy as np
import pytest

from edge.forecast.errors import ErrorModel, Issued, _student_t
from edge.forecast.history import SLOT_S

from .crafted import T0, history

N = 96


def _issued(slot: int, load: float = 500.0, hp: float = 0.0, pv: float = 0.0) -> Issued:
    pot = np.full(N, 2000.0)
    return Issued(slot, np.full(N, load), np.full(N, hp), np.full(N, pv), pot)


def test_defaults_widen_with_the_lead_time():
    margins = ErrorModel().margins(np.full(N, 500.0), hp_on_w=1000.0)
    assert margins.samples == 0
    up, lo = margins.lh_upper_wh, margins.lh_lower_wh
    assert np.all(np.diff(up) >= 0)
    assert np.all(np.diff(lo) <= 0)
    np.testing.assert_allclose(up, -lo)
    # a day: 35 % of 500 W per slot, independent (1.645 sigma), plus half an hour at 1 kW
    assert up[-1] == pytest.approx(1.645 * 0.35 * 500 * 0.25 * np.sqrt(N) + 500, rel=0.01)
    np.testing.assert_allclose(margins.pv_lower, -0.4, rtol=0.01)
    np.testing.assert_allclose(margins.pv_upper, 0.4, rtol=0.01)


def test_one_forecast_is_filed_per_hour():
    model = ErrorModel()
    first = int(T0 // SLOT_S)
    assert model.file(_issued(first))
    assert not model.file(_issued(first + 1))  # the same hour
    assert not model.file(_issued(first - 4))  # an older hour
    assert model.file(_issued(first + 4))
    assert [i.slot for i in model.pending] == [first, first + 4]


def _matured(load_error: float, pv_error: float, days: int = 10) -> ErrorModel:
    """Forecasts filed hourly over ``days`` days, each off by a constant."""
    now = T0 + (days + 1) * 86400

    def actual(t: float) -> dict:
        return {"load_w": 500.0 + load_error, "heat_pump_w": 0.0, "pv_available_w": 1000.0}

    h = history(actual, days + 1, now)
    model = ErrorModel(days=14)
    first = int(T0 // SLOT_S)
    for k in range(days * 24):
        model.file(_issued(first + 4 * k, pv=1000.0 - pv_error))
    assert model.mature(h, h.latest_slot() + 1) == days * 24
    assert model.pending == []
    return model


def test_a_biased_forecast_shifts_its_margins():
    model = _matured(load_error=100.0, pv_error=0.0)
    margins = model.margins(np.full(N, 500.0), hp_on_w=0.0)
    assert margins.samples == 240
    w = 240 / (240 + 8)
    lead = np.arange(1, N + 1)
    default = 1.645 * 0.35 * 500 * 0.25 * np.sqrt(lead)
    # no spread, a bias of 100 W: 25 Wh a slot
    np.testing.assert_allclose(margins.lh_upper_wh, w * 25 * lead + (1 - w) * default, rtol=0.02)
    assert margins.lh_lower_wh[-1] == pytest.approx(0.0)  # the bias is upwards only
    np.testing.assert_allclose(margins.pv_lower, (1 - w) * -0.4, atol=0.01)


def test_pv_errors_are_relative_to_the_potential():
    model = _matured(load_error=0.0, pv_error=500.0)  # forecast 500 W, got 1000 W of 2000
    margins = model.margins(np.full(N, 500.0), hp_on_w=0.0)
    w = 240 / 248
    np.testing.assert_allclose(margins.pv_upper, w * 0.25 + (1 - w) * 0.4, atol=0.01)
    np.testing.assert_allclose(margins.pv_lower, 0.0, atol=1e-9)  # never below the forecast


def test_a_forecast_of_slots_the_agent_did_not_see_is_dropped():
    model = ErrorModel()
    h = history(lambda t: {}, 2, T0 + 2 * 86400)
    model.file(_issued(int(T0 // SLOT_S)))
    assert model.mature(h, h.latest_slot() + 10**6) == 1
    assert model.count == 0


def test_filed_forecasts_come_back_from_their_payload():
    issued = _issued(int(T0 // SLOT_S), load=512.3, hp=700.0, pv=31.4)
    model = ErrorModel()
    assert model.restore([(0, issued.payload()), (1, {"slot": 1})]) == 1  # the bad one skipped
    back = model.pending[0]
    assert back.slot == issued.slot
    np.testing.assert_allclose(back.load_w, 512.3)
    np.testing.assert_allclose(back.hp_w, 700.0)


@pytest.mark.parametrize(("df", "t"), [(3, 2.353), (5, 2.015), (10, 1.812), (30, 1.697)])
def test_student_t(df, t):
    assert _student_t(1.6449, df) == pytest.approx(t, abs=0.01)
