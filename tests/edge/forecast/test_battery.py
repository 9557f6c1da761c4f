"""The battery as the forecast sees it: BMS tapers, learned from what the battery reports."""

from __future__ import annotations

import pytest

from edge.forecast.battery import BatteryLearner, taper_limits

# SoC % -> (charge, discharge) limits of a 5 kW battery tapering above 90 % and below 8 %
TAPER = [
    (50.0, (5000, 5000)),
    (90.0, (5000, 5000)),
    (95.0, (2500, 5000)),
    (99.9, (100, 5000)),  # the last percent: a floor of 2 % of the rating
    (100.0, (0, 5000)),
    (8.0, (5000, 5000)),
    (4.0, (5000, 2500)),
    (0.0, (5000, 0)),
]


@pytest.mark.parametrize(("soc", "limits"), TAPER)
def test_taper_limits(soc, limits):
    assert taper_limits(soc, 5000, 5000, 90.0, 8.0) == pytest.approx(limits)


def _bms(soc: float, start: float = 85.0, rated: float = 5000.0) -> float:
    return rated * min(1.0, max(0.02, (100 - soc) / (100 - start)))


def test_the_charge_taper_is_learned_from_what_the_battery_delivers():
    learner = BatteryLearner()
    assert learner.charge_taper_pct == 90.0  # the default until there is evidence
    soc = 70.0
    while soc < 99.5:
        # the agent asks for 5 kW (the rating it reads); the BMS delivers what it allows
        learner.observe(soc, -_bms(soc), 5000.0, 5000.0, -5000.0)
        soc += 0.1
    assert learner.charge_taper_pct == pytest.approx(85.0, abs=0.3)
    assert learner.discharge_taper_pct == 8.0
    assert learner.rated_charge_w == 5000.0


def test_the_discharge_taper_from_limits_the_battery_reports():
    learner = BatteryLearner()
    for i in range(30):
        soc = 12.0 - i * 0.3
        reported = 4000 * min(1.0, soc / 10.0)  # a BMS that says where it tapers (10 %)
        learner.observe(soc, 0.0, 4000.0, reported, None)
    assert learner.rated_discharge_w == 4000.0
    assert learner.discharge_taper_pct == pytest.approx(10.0, abs=0.1)


def test_odd_readings_do_not_move_the_estimate():
    learner = BatteryLearner()
    soc = 80.0
    while soc < 99.0:
        learner.observe(soc, -_bms(soc, 92.0), 5000.0, 5000.0, -5000.0)
        soc += 0.2
    # a ramp or a stale reading: delivered far less than asked at 80 % (no taper there)
    for _ in range(5):
        learner.observe(80.0, -1000.0, 5000.0, 5000.0, -5000.0)
    assert learner.charge_taper_pct == pytest.approx(92.0, abs=0.3)


def test_no_evidence_without_a_shortfall_or_below_the_taper_range():
    learner = BatteryLearner()
    for i in range(100):  # up to 90 % the battery delivers what it is asked
        learner.observe(50.0 + i * 0.4, -2000.0, 5000.0, 5000.0, -2000.0)
    for _ in range(10):  # a ramp mid-range: less than asked, but no taper is that low
        learner.observe(50.0, -1000.0, 5000.0, 5000.0, -5000.0)
    assert learner.charge_taper_pct == 90.0
    assert not learner.changed


def test_a_snapshot_survives_a_restart():
    learner = BatteryLearner()
    soc = 85.0
    while soc < 99.0:
        learner.observe(soc, -_bms(soc, 88.0), 5000.0, 5000.0, -5000.0)
        soc += 0.3
    again = BatteryLearner()
    again.load(learner.snapshot())
    assert again.charge_taper_pct == learner.charge_taper_pct
    assert again.rated_charge_w == 5000.0
    again.load({"rated_charge_w": "x"})  # malformed state is ignored
    again.load(None)
    assert again.charge_taper_pct == learner.charge_taper_pct
