"""The quarter-hour history: means per slot, the load's spread, coverage, the ring, restore."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge.forecast.history import FIELDS, SLOT_S, SlotHistory
from edge.store import EdgeStore
from protocols.clock import ManualClock

T0 = 1_718_409_600.0  # 2024-06-15 00:00 UTC, a slot boundary


def feed(h: SlotHistory, start: float, seconds: float, step: float = 1.0, **values) -> list:
    closed = []
    t = start
    while t < start + seconds:
        got = h.add(t, **{k: (v(t) if callable(v) else v) for k, v in values.items()})
        if got is not None:
            closed.append(got)
        t += step
    return closed


# cycles fed (load pattern) -> the closed slot's load mean and std
SLOTS = [
    ("constant", lambda t: 500.0, 500.0, 0.0),
    ("two levels", lambda t: 200.0 if (t // 30) % 2 else 1200.0, 700.0, 500.0),
    ("ramp", lambda t: t - T0, 449.5, math.sqrt((900**2 - 1) / 12)),
]


@pytest.mark.parametrize(("name", "load", "mean", "std"), SLOTS)
def test_a_slot_closes_with_its_means_and_the_loads_spread(name, load, mean, std):
    h = SlotHistory(days=2)
    feed(h, T0, SLOT_S, load_w=load, soc_pct=50.0, following_cloud=False)
    closed = h.add(T0 + SLOT_S, load_w=0.0)
    assert closed is not None
    assert closed.slot_ts == T0
    assert closed.samples == 900
    assert closed.covered_s == pytest.approx(SLOT_S, abs=61)  # the first sample counts 60 s
    assert closed.values["load_w"] == pytest.approx(mean)
    assert closed.values["load_std_w"] == pytest.approx(std, rel=1e-6, abs=1e-6)
    assert closed.values["soc_pct"] == 50.0
    assert closed.values["pv_w"] is None  # never measured
    assert closed.values["cloud_share"] == 0.0
    slot = int(T0 // SLOT_S)
    assert h.gather("load_w", np.array([slot]))[0] == pytest.approx(mean)
    assert math.isnan(h.gather("pv_w", np.array([slot]))[0])


def test_missing_and_nan_values_are_left_out_of_the_means():
    h = SlotHistory(days=1)
    feed(h, T0, 450, load_w=100.0, grid_w=float("nan"), following_cloud=True)
    feed(h, T0 + 450, 450, load_w=None, grid_w=300.0, following_cloud=False)
    closed = h.add(T0 + SLOT_S, load_w=1.0)
    assert closed.values["load_w"] == 100.0
    assert closed.values["grid_w"] == 300.0
    assert closed.values["cloud_share"] == pytest.approx(0.5)


def test_a_slot_keeps_the_plans_share_and_how_much_of_it_ran_open_loop():
    """The share is averaged over the cycles a plan was in force; open loop over all cycles."""
    h = SlotHistory(days=1)
    feed(h, T0, 300, load_w=1.0, planned_w=-600.0, following_cloud=True)  # closed loop
    feed(h, T0 + 300, 300, load_w=1.0, planned_w=-900.0, following_cloud=True, open_loop=True)
    feed(h, T0 + 600, 300, load_w=1.0, planned_w=None)  # no plan: its own control
    closed = h.add(T0 + SLOT_S, load_w=1.0)
    assert closed.values["planned_w"] == pytest.approx(-750.0)
    assert closed.values["open_loop_share"] == pytest.approx(1 / 3)
    assert closed.values["cloud_share"] == pytest.approx(2 / 3)


def test_a_slot_seen_less_than_half_reads_as_missing():
    h = SlotHistory(days=1)
    feed(h, T0 + 600, 300, load_w=100.0)  # the agent started 10 minutes into the slot
    h.add(T0 + SLOT_S, load_w=1.0)
    slot = int(T0 // SLOT_S)
    assert not h.valid(np.array([slot]))[0]
    assert math.isnan(h.gather("load_w", np.array([slot]))[0])


def test_the_ring_holds_days_and_forgets_older_slots():
    h = SlotHistory(days=1)
    feed(h, T0, 2 * 86400 + SLOT_S, step=30.0, load_w=lambda t: (t - T0) // SLOT_S)
    first = int(T0 // SLOT_S)
    assert h.latest_slot() == first + 2 * 96 - 1
    old = np.arange(first, first + 96)
    kept = np.arange(first + 96, first + 192)
    assert np.isnan(h.gather("load_w", old)).all()  # overwritten by the next day
    np.testing.assert_array_equal(h.gather("load_w", kept), kept - first)


def test_a_clock_that_goes_back_drops_the_open_slot():
    h = SlotHistory(days=1)
    feed(h, T0 + SLOT_S, 100, load_w=100.0)
    assert h.add(T0, load_w=5.0) is None
    closed = feed(h, T0 + 1, 2 * SLOT_S, load_w=7.0)
    assert [c.slot_ts for c in closed] == [T0, T0 + SLOT_S]
    assert closed[0].values["load_w"] == pytest.approx((5.0 + 7.0 * 899) / 900)
    assert closed[1].values["load_w"] == 7.0  # the 100 W seen before the jump is gone


def test_restore_from_the_store_gives_the_same_history(tmp_path):
    clock = ManualClock(T0)
    h = SlotHistory(days=2)
    with EdgeStore(tmp_path / "edge.db", clock) as store:
        closed = feed(h, T0, 86400 + 1, step=10.0, load_w=lambda t: 100 + (t - T0) / 900)
        for c in closed:
            store.append_forecast_slot(c.slot_ts, c.samples, c.covered_s, c.values)
        rows = store.forecast_slots()
    again = SlotHistory(days=2)
    assert again.restore(rows) == 96
    slots = np.arange(int(T0 // SLOT_S) - 2, h.latest_slot() + 2)
    for field in FIELDS:
        np.testing.assert_array_equal(again.gather(field, slots), h.gather(field, slots))
    assert again.latest_slot() == h.latest_slot()
