"""Commissioning verdicts as tables: what the test write saw -> pass, or why not."""

from __future__ import annotations

import pytest

from edge.provision.commission import Verdict, judge_write, one_step, reading_summary
from protocols.messages import DeviceKind


@pytest.mark.parametrize(
    ("original", "lo", "hi", "test"),
    [
        (1000, 0, 1000, 999),  # 100.0 % -> 99.9 %
        (0, 0, 1000, 1),
        (-10000, -10000, 10000, -9999),
        (0, 0, 0xFFFE, 1),  # the heartbeat
        (0xFFFF, 0, 0xFFFE, 0xFFFD),  # outside the range: clamped first
    ],
)
def test_one_step(original, lo, hi, test):
    assert one_step(original, lo, hi) == test


def test_one_step_needs_a_range():
    with pytest.raises(ValueError, match=r"empty range \[5, 5\]: no test value"):
        one_step(5, 5, 5)


P = "123.WMaxLimPct"


@pytest.mark.parametrize(
    ("test", "read_back", "refused", "original", "restored", "verdict", "detail"),
    [
        (
            [999],
            [999],
            None,
            [1000],
            [1000],
            Verdict.PASS,
            f"{P}: wrote 999, read back, restored 1000",
        ),
        (
            [999],
            None,
            "Modbus exception 1",
            [1000],
            None,
            Verdict.WRITE_REFUSED,
            f"the device refused the write of {P} (Modbus exception 1): switch on Modbus write "
            "access / external control in its settings",
        ),
        (
            [999],
            [1000],
            None,
            [1000],
            [1000],
            Verdict.READBACK_MISMATCH,
            f"{P}: wrote 999, reads back 1000: the device does not keep what is written",
        ),
        (
            [999],
            None,
            None,
            [1000],
            [1000],
            Verdict.WRITE_FAILED,
            f"{P}: the link failed during the test write",
        ),
        (
            [999],
            [999],
            None,
            [1000],
            [999],
            Verdict.RESTORE_FAILED,
            f"{P}: the original value 1000 could not be restored (reads 999); check the device "
            "before running the agent",
        ),
        (
            [999],
            [999],
            None,
            [1000],
            None,
            Verdict.RESTORE_FAILED,
            f"{P}: the original value 1000 could not be restored (could not be read); check the "
            "device before running the agent",
        ),
    ],
)
def test_judge_write(test, read_back, refused, original, restored, verdict, detail):
    assert judge_write(P, test, read_back, refused, original, restored) == (verdict, detail)


@pytest.mark.parametrize(
    ("kind", "values", "summary"),
    [
        (DeviceKind.BATTERY, {"power_w": 2130.0, "soc_pct": 48.2}, "2.13 kW, SoC 48 %"),
        (DeviceKind.BATTERY, {"power_w": -500.0, "soc_pct": None}, "-0.50 kW"),
        (DeviceKind.PV_INVERTER, {"power_w": 0.0, "soc_pct": 12.0}, "0.00 kW"),
        (DeviceKind.HEAT_PUMP, {"power_w": 1600.0, "indoor_c": 20.44}, "1.60 kW, indoor 20.4 °C"),
        (DeviceKind.METER, {"power_w": None}, "no values"),
    ],
)
def test_the_report_shows_what_each_device_reads(kind, values, summary):
    assert reading_summary(kind, values) == summary
