"""KPIs from known inputs: exact values, the error floor, every interval judged by its cause,
the forecast's accuracy, the guarantee's cost, and nulls where there is no data."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vpp.e2e import KPI_DOCS, RunRecord, RunRecorder, compute_kpis
from vpp.e2e.kpis import (
    CAUSES,
    DELIVERED,
    DELIVERED_PCT,
    early_warning_s,
    promise_withdrawals,
    resample_hold,
    score_intervals,
)

T0 = 1_717_221_600.0


def _band_samples(recorder: RunRecorder, band_w: float = 10_000.0, n: int = 10) -> None:
    """Samples that only set the flexibility band (median band = ``band_w``)."""
    for i in range(n):
        recorder.sample(T0 + 2 * i, p_min_w=-band_w / 2, p_max_w=band_w / 2)


def _recorder(*intervals: tuple[float | None, float | None, bool | None, float | None]):
    """One 15-min interval per (target Wh, delivered Wh, inside envelope, outage s)."""
    recorder = RunRecorder()
    _band_samples(recorder)  # floor: 5 % of 10 kW = 500 W -> 125 Wh over 15 min
    for k, (target_wh, delivered_wh, inside, outage_s) in enumerate(intervals):
        recorder.interval(
            T0 + 900 * k,
            900,
            schedule_delta_w=0.0,
            energy_target_wh=target_wh,
            energy_delivered_wh=delivered_wh,
            inside_envelope=inside,
            outage_s=outage_s,
        )
    return recorder


def _one_interval(target_wh: float, delivered_wh: float) -> dict:
    return compute_kpis(_recorder((target_wh, delivered_wh, True, 0.0)).record())


@pytest.mark.parametrize(
    ("target_wh", "delivered_wh", "error_pct"),
    [
        (10_000.0, 10_050.0, 0.5),  # plain relative error
        (10_000.0, 9_900.0, 1.0),  # under-delivery counts the same
        (-10_000.0, -10_100.0, 1.0),  # export target: relative to |target|
        (200.0, 210.0, 5.0),  # target above the 125 Wh floor: relative to target
        (100.0, 110.0, 8.0),  # target below the floor: 10 Wh / 125 Wh
        (0.0, 25.0, 20.0),  # zero target: relative to the floor, not infinite
        (0.0, 0.0, 0.0),
    ],
)
def test_interval_energy_error_pct_uses_the_floor(
    target_wh: float, delivered_wh: float, error_pct: float
) -> None:
    kpis = _one_interval(target_wh, delivered_wh)
    assert kpis["error_floor_w"] == pytest.approx(500.0)
    assert kpis["interval_energy_error_pct_max"] == pytest.approx(error_pct)
    assert kpis["interval_energy_error_pct_p95"] == pytest.approx(error_pct)


@pytest.mark.parametrize(
    ("target_wh", "delivered_wh", "inside", "outage_s", "cause"),
    [
        (10_000.0, 10_050.0, True, 0.0, DELIVERED),  # 0.5 %
        (10_000.0, 10_100.0, True, 0.0, DELIVERED),  # exactly 1 %: still delivered
        (10_000.0, 9_900.0, True, 0.0, DELIVERED),  # exactly 1 % under
        (100.0, 101.25, True, 0.0, DELIVERED),  # exactly 1 % of the 125 Wh floor
        (10_000.0, 10_101.0, True, 0.0, "promise_broken"),  # 1.01 %: short
        (10_000.0, 10_300.0, True, 0.0, "promise_broken"),
        (10_000.0, 10_300.0, True, None, "promise_broken"),  # outage unknown: none known
        (10_000.0, 10_300.0, False, 0.0, "outside_envelope"),
        (10_000.0, 10_300.0, None, 0.0, "outside_envelope"),  # unknown: nothing promised
        (10_000.0, 10_300.0, None, None, "outside_envelope"),
        (10_000.0, 10_300.0, True, 30.0, "outage"),
        (10_000.0, 10_300.0, False, 30.0, "outage"),  # an outage is the first cause
        (10_000.0, 10_050.0, True, 900.0, DELIVERED),  # outage, delivered anyway
        (10_000.0, 10_050.0, False, 0.0, DELIVERED),  # outside, delivered anyway
        (10_000.0, None, True, 0.0, "promise_broken"),  # not measured: short, not dropped
        (10_000.0, None, True, 900.0, "outage"),  # a whole interval lost to an outage
        (None, 10_000.0, True, 0.0, ""),  # no target: not scored
    ],
)
def test_each_interval_gets_its_cause(
    target_wh: float | None,
    delivered_wh: float | None,
    inside: bool | None,
    outage_s: float | None,
    cause: str,
) -> None:
    record = _recorder((target_wh, delivered_wh, inside, outage_s)).record()
    (got,) = score_intervals(record).cause
    assert got == cause
    kpis = compute_kpis(record)
    scored = int(target_wh is not None)
    assert kpis["intervals_total"] == 1
    assert kpis["intervals_scored"] == scored
    assert kpis["intervals_delivered"] == int(cause == DELIVERED)
    for name in CAUSES:
        assert kpis[f"intervals_{name}"] == int(cause == name), name
    assert kpis["intervals_inside_envelope"] == int(bool(inside) and scored)
    if inside and scored:
        assert kpis["promise_kept_ratio"] == float(cause == DELIVERED)
    else:
        assert kpis["promise_kept_ratio"] is None  # nothing was promised


def test_a_run_counts_every_interval_and_judges_the_promise() -> None:
    """Crafted intervals (floor 125 Wh, so every error below is plain |error| / target)."""
    recorder = _recorder(
        (10_000.0, 10_050.0, True, 0.0),  # A delivered, 0.5 %
        (10_000.0, 10_100.0, True, 0.0),  # B delivered at the edge, 1.0 %
        (10_000.0, 10_300.0, True, 0.0),  # C promise broken, 3 %
        (10_000.0, 10_500.0, True, 60.0),  # D outage inside the envelope, 5 %
        (10_000.0, 10_050.0, True, 900.0),  # E outage, delivered anyway, 0.5 %
        (10_000.0, 10_800.0, False, 0.0),  # F outside the envelope, 8 %
        (10_000.0, 10_200.0, None, 0.0),  # G envelope unknown -> outside, 2 %
        (10_000.0, None, True, 900.0),  # H lost whole to an outage: no error figure
        (None, None, None, None),  # I no target: counted in total only
    )
    kpis = compute_kpis(recorder.record())
    expected = {
        "intervals_total": 9,
        "intervals_scored": 8,
        "intervals_delivered": 3,  # A, B, E
        "intervals_outage": 2,  # D, H
        "intervals_outside_envelope": 2,  # F, G
        "intervals_promise_broken": 1,  # C
        "intervals_inside_envelope": 6,  # A, B, C, D, E, H
        "promise_kept_ratio": 0.5,  # A, B, E of six: a promise is a promise, outage or not
        "interval_energy_error_pct_max": 8.0,  # over all scored, short ones included
        "interval_energy_error_pct_p95": float(np.percentile([0.5, 1, 3, 5, 0.5, 8, 2], 95)),
        "interval_energy_error_pct_max_promised": 3.0,  # A, B, C: inside, no outage
    }
    for key, value in expected.items():
        assert kpis[key] == pytest.approx(value), key
    short = sum(kpis[f"intervals_{cause}"] for cause in CAUSES)
    assert kpis["intervals_delivered"] + short == kpis["intervals_scored"]
    # settlement covers the intervals with both energies, whatever their cause
    assert kpis["imbalance_energy_wh"] == pytest.approx(50 + 100 + 300 + 500 + 50 + 800 + 200)


def test_short_intervals_are_never_dropped_from_the_headline_error() -> None:
    """The old KPI left out every interval short of flexibility; now all of them count."""
    kpis = compute_kpis(
        _recorder((10_000.0, 10_020.0, True, 0.0), (10_000.0, 7_000.0, False, 0.0)).record()
    )
    assert kpis["interval_energy_error_pct_max"] == pytest.approx(30.0)
    assert kpis["interval_energy_error_pct_max_promised"] == pytest.approx(0.2)
    assert DELIVERED_PCT == 1.0


def test_zero_target_without_a_known_band_has_no_percentage() -> None:
    recorder = RunRecorder()
    recorder.interval(
        T0,
        900,
        schedule_delta_w=0.0,
        energy_target_wh=0.0,
        energy_delivered_wh=10.0,
        inside_envelope=True,
    )
    kpis = compute_kpis(recorder.record())
    assert kpis["error_floor_w"] is None
    assert kpis["interval_energy_error_pct_max"] is None
    assert kpis["intervals_scored"] == 1
    assert kpis["intervals_promise_broken"] == 1  # no error figure: not shown to be delivered
    assert kpis["imbalance_energy_wh"] == pytest.approx(10.0)


def _forecast_run(
    rows: list[tuple[float | None, float | None, float | None]], band_w: float | None = None
) -> dict:
    """One interval per (actual, forecast, persistence) baseline energy, Wh; with ``band_w``,
    a sample whose flexibility band sets the error floor (5 % of it)."""
    recorder = RunRecorder()
    if band_w is not None:
        band = {"p_min_w": -band_w / 2, "p_max_w": band_w / 2}
        recorder.sample(T0, target_w=0.0, measured_w=0.0, baseline_w=0.0, **band)
    for k, (actual, forecast, persistence) in enumerate(rows):
        recorder.interval(
            T0 + 900 * k,
            900,
            schedule_delta_w=0.0,
            energy_target_wh=1.0,
            energy_delivered_wh=1.0,
            baseline_actual_wh=actual,
            baseline_forecast_wh=forecast,
            baseline_persistence_wh=persistence,
        )
    return compute_kpis(recorder.record())


def test_forecast_error_against_persistence() -> None:
    kpis = _forecast_run(
        [
            (1_000.0, 1_100.0, 1_500.0),
            (-500.0, -400.0, 0.0),  # an exporting quarter hour: |actual| in the scale
            (2_000.0, 1_900.0, 1_000.0),
        ]
    )
    assert kpis["baseline_forecast_error_pct"] == pytest.approx(300 / 3_500 * 100)
    assert kpis["baseline_persistence_error_pct"] == pytest.approx(2_000 / 3_500 * 100)
    assert kpis["baseline_forecast_skill"] == pytest.approx(1 - 300 / 2_000)


def test_forecast_errors_use_the_intervals_with_both_and_skill_those_with_all_three() -> None:
    kpis = _forecast_run(
        [
            (1_000.0, 1_100.0, 1_500.0),
            (-500.0, -400.0, 0.0),
            (2_000.0, 1_900.0, 1_000.0),
            (1_000.0, 2_000.0, None),  # no persistence: in the forecast error, not the skill
            (1_000.0, None, 1_000.0),  # no forecast: in the persistence error, not the skill
            (None, 5_000.0, 5_000.0),  # nothing reported: in neither
        ]
    )
    assert kpis["baseline_forecast_error_pct"] == pytest.approx(1_300 / 4_500 * 100)
    assert kpis["baseline_persistence_error_pct"] == pytest.approx(2_000 / 4_500 * 100)
    assert kpis["baseline_forecast_skill"] == pytest.approx(1 - 300 / 2_000)


def test_forecast_error_of_a_baseline_near_zero_is_relative_to_the_floor() -> None:
    """An evening whose batteries cover the load: the pool's baseline is about 0, and the error
    is taken against the energy floor (5 % of an 8 kW band over 15 min: 100 Wh), not against
    a few Wh, which made a 10-Wh miss read as 100 %."""
    rows = [(5.0, 0.0, 15.0), (-5.0, 5.0, 0.0), (400.0, 420.0, 300.0)]
    kpis = _forecast_run(rows, band_w=8_000.0)
    scale = 100.0 + 100.0 + 400.0
    assert kpis["error_floor_w"] == pytest.approx(400.0)
    assert kpis["baseline_forecast_error_pct"] == pytest.approx((5 + 10 + 20) / scale * 100)
    assert kpis["baseline_persistence_error_pct"] == pytest.approx((10 + 5 + 100) / scale * 100)
    assert kpis["baseline_forecast_skill"] == pytest.approx(1 - 35 / 115)
    without = _forecast_run(rows)  # no band known: no floor, the plain ratio
    assert without["baseline_forecast_error_pct"] == pytest.approx(35 / 410 * 100)


@pytest.mark.parametrize(
    ("rows", "forecast", "persistence", "skill"),
    [
        ([(1_000.0, 1_100.0, 1_000.0)], 10.0, 0.0, None),  # persistence perfect: no ratio
        ([(0.0, 100.0, 50.0)], None, None, None),  # nothing to be relative to
        ([(1_000.0, 1_300.0, 1_100.0)], 30.0, 10.0, -2.0),  # worse than persistence
        ([(1_000.0, None, None)], None, None, None),
    ],
)
def test_forecast_edge_cases(rows, forecast, persistence, skill) -> None:
    kpis = _forecast_run(rows)
    for key, value in (
        ("baseline_forecast_error_pct", forecast),
        ("baseline_persistence_error_pct", persistence),
        ("baseline_forecast_skill", skill),
    ):
        if value is None:
            assert kpis[key] is None, key
        else:
            assert kpis[key] == pytest.approx(value), key


def test_envelope_ratios_and_trader_use() -> None:
    recorder = RunRecorder()
    for energy, power in ((8_000.0, 7_000.0), (6_000.0, 9_000.0)):
        recorder.envelope(
            T0,
            as_of=T0,
            energy_guaranteed_wh=energy,
            energy_plain_wh=10_000.0,
            power_guaranteed_w=power,
            power_plain_w=10_000.0,
            sites=4,
        )
    # a pool with nothing to offer has no ratio: left out, not counted as 0 or 1
    recorder.envelope(
        T0,
        as_of=T0,
        energy_guaranteed_wh=0.0,
        energy_plain_wh=0.0,
        power_guaranteed_w=None,
        power_plain_w=None,
        sites=0,
    )
    # the cloud's own ratios win over the sums
    recorder.envelope(
        T0,
        as_of=None,
        energy_guaranteed_wh=None,
        energy_plain_wh=None,
        power_guaranteed_w=None,
        power_plain_w=None,
        sites=None,
        energy_ratio=0.7,
        power_ratio=0.5,
    )
    for power_use, energy_use in ((0.5, 0.2), (1.0, None), (None, None)):
        recorder.trader_decision(
            T0,
            solver="highs",
            solve_ms=1.0,
            values_w=[0.0],
            within_flex=True,
            power_use=power_use,
            energy_use=energy_use,
        )
    record = recorder.record()
    assert [e["energy_ratio"] for e in record.envelopes] == [0.8, 0.6, None, 0.7]
    assert "power_use" not in record.trader[2]
    kpis = compute_kpis(record)
    assert kpis["envelope_energy_ratio"] == pytest.approx(0.7)
    assert kpis["envelope_energy_ratio_min"] == pytest.approx(0.6)
    assert kpis["envelope_power_ratio"] == pytest.approx(0.7)  # 0.7, 0.9, 0.5
    assert kpis["trader_power_use"] == pytest.approx(0.75)
    assert kpis["trader_energy_use"] == pytest.approx(0.2)


def test_energy_imbalance_and_money() -> None:
    recorder = RunRecorder()
    # A: sell 1 kWh at 100 EUR/MWh (+0.1 EUR); 50 Wh over target at 200 (+0.01 EUR cost).
    recorder.interval(
        T0,
        900,
        schedule_delta_w=-4_000.0,
        energy_target_wh=10_000.0,
        energy_delivered_wh=10_050.0,
        price_da_eur_mwh=100.0,
        price_imb_eur_mwh=200.0,
    )
    # B: buy 0.5 kWh at 50 (-0.025 EUR); 100 Wh under target at 80 (-0.008 EUR cost).
    recorder.interval(
        T0 + 900,
        900,
        schedule_delta_w=2_000.0,
        energy_target_wh=5_000.0,
        energy_delivered_wh=4_900.0,
        price_da_eur_mwh=50.0,
        price_imb_eur_mwh=80.0,
    )
    kpis = compute_kpis(recorder.record())
    expected = {
        "intervals_total": 2,
        "energy_scheduled_wh": 15_000.0,
        "energy_delivered_wh": 14_950.0,
        "imbalance_energy_wh": 150.0,
        "imbalance_net_wh": -50.0,
        "imbalance_cost_eur": 0.002,
        "revenue_eur": 0.075,
        "net_value_eur": 0.073,
    }
    for key, value in expected.items():
        assert kpis[key] == pytest.approx(value, abs=1e-12), key


def test_perfect_run(make_run) -> None:
    kpis = compute_kpis(make_run(hours=1.0).record())
    assert kpis["telemetry_completeness"] == 1.0
    assert kpis["availability"] == 1.0
    assert kpis["tracking_error_rms_w"] == 0.0
    assert kpis["tracking_error_rms_pct"] == 0.0
    assert kpis["steps_within_5pct"] == 1.0
    assert kpis["measurement_error_max_w"] == 0.0
    assert kpis["interval_energy_error_pct_max"] == 0.0
    assert kpis["imbalance_energy_wh"] == 0.0
    assert kpis["intervals_total"] == kpis["intervals_scored"] == 4
    assert kpis["intervals_delivered"] == kpis["intervals_inside_envelope"] == 4
    assert kpis["promise_kept_ratio"] == 1.0
    assert kpis["interval_energy_error_pct_max_promised"] == 0.0
    assert kpis["baseline_forecast_error_pct"] == pytest.approx(2.0)
    assert kpis["baseline_persistence_error_pct"] == pytest.approx(10.0)
    assert kpis["baseline_forecast_skill"] == pytest.approx(0.8)
    assert kpis["envelope_energy_ratio"] == kpis["envelope_energy_ratio_min"] == 0.8
    assert kpis["envelope_power_ratio"] == 0.7
    assert kpis["trader_power_use"] == 0.5
    assert kpis["trader_energy_use"] == 0.25
    assert kpis["schedule_within_flex"] is True
    assert kpis["trader_fallbacks"] == 0
    assert kpis["trader_lp_solve_ms_max"] == 18.0
    assert kpis["sim_hours"] == 1.0
    assert kpis["samples"] == 1800


def test_constant_offset_gives_exact_tracking_error(make_run) -> None:
    record = make_run(hours=0.5, offset_w=320.0).record()
    kpis = compute_kpis(record)
    assert kpis["tracking_error_rms_w"] == pytest.approx(320.0)
    # 2-s samples on the 4-s grid: every other sample is a step.
    mean_target = np.mean(np.abs(record.samples["target_w"][::2]))
    assert kpis["tracking_error_rms_pct"] == pytest.approx(320.0 / mean_target * 100)
    assert kpis["steps_within_5pct"] == 1.0  # 320 W < 5 % of ~16 kW


def test_steps_within_5pct_counts_4s_steps() -> None:
    recorder = RunRecorder()
    for i in range(200):  # 2-s samples over 400 s; 10 % off target from t0 + 200 s
        t = T0 + 2 * i
        measured = 10_000.0 if t < T0 + 200 else 11_000.0
        recorder.sample(t, target_w=10_000.0, measured_w=measured, p_min_w=0.0, p_max_w=1_000.0)
    kpis = compute_kpis(recorder.record())
    assert kpis["error_floor_w"] == pytest.approx(50.0)
    assert kpis["steps_within_5pct"] == pytest.approx(0.5)  # 50 of 100 4-s steps


@pytest.mark.parametrize(("measured_w", "within"), [(400.0, 1.0), (-500.0, 1.0), (600.0, 0.0)])
def test_steps_near_zero_target_use_the_floor(measured_w: float, within: float) -> None:
    recorder = RunRecorder()
    for i in range(50):
        recorder.sample(
            T0 + 4 * i, target_w=0.0, measured_w=measured_w, p_min_w=-5_000.0, p_max_w=5_000.0
        )
    assert compute_kpis(recorder.record())["steps_within_5pct"] == within


def test_samples_without_target_do_not_count_as_tracking() -> None:
    recorder = RunRecorder()
    for i in range(20):
        recorder.sample(T0 + 2 * i, target_w=None, measured_w=5_000.0)
    kpis = compute_kpis(recorder.record())
    assert kpis["steps_within_5pct"] is None
    assert kpis["tracking_error_rms_w"] is None


def test_resample_hold_marks_gaps_stale() -> None:
    t = np.array([0.0, 4.0, 100.0])
    grid, (held,) = resample_hold(t, [np.array([1.0, 2.0, 3.0])], step_s=4.0, hold_max_s=20.0)
    assert grid[0] == 0.0
    assert grid[-1] == 100.0
    assert held[0] == 1.0
    assert np.all(held[(grid >= 4) & (grid <= 24)] == 2.0)
    assert np.all(np.isnan(held[(grid > 24) & (grid < 100)]))
    assert held[-1] == 3.0


@pytest.mark.parametrize(
    ("expected", "received", "completeness"),
    [(1000, 1000, 1.0), (1000, 998, 0.998), (1000, 1003, 1.0), (0, 0, None)],
)
def test_telemetry_completeness(expected: int, received: int, completeness: float | None) -> None:
    recorder = RunRecorder()
    recorder.telemetry(expected, received)
    assert compute_kpis(recorder.record())["telemetry_completeness"] == completeness


def test_availability_is_the_mean_online_fraction() -> None:
    recorder = RunRecorder()
    for i in range(10):
        recorder.sample(T0 + 2 * i, sites_online=18 if i < 5 else 20, sites_total=20)
    assert compute_kpis(recorder.record())["availability"] == pytest.approx(0.95)


def test_latency_percentiles() -> None:
    recorder = RunRecorder()
    for ms in range(1, 101):
        recorder.latency(float(ms))
    kpis = compute_kpis(recorder.record())
    assert kpis["dispatch_latency_ms_p50"] == pytest.approx(50.5)
    assert kpis["dispatch_latency_ms_p95"] == pytest.approx(95.05)
    assert kpis["dispatch_latency_ms_p99"] == pytest.approx(99.01)


# per sample (measured, truth, sites online) -> (max error, max error beyond the meters' 0.5 W
# round-off per site)
MEASUREMENT_CASES = [
    ([(1_000.0, 1_000.5, 1), (1_000.0, 998.0, 4)], (2.0, 0.0)),
    ([(1_000.0, 998.0, 2)], (2.0, 1.0)),
    ([(5_000.0, 4_000.0, 10)], (1_000.0, 995.0)),  # a reading paired with a wrong instant
    ([(1_000.0, None, 4)], (None, None)),  # no truth known: nothing to say
]


@pytest.mark.parametrize(("samples", "expected"), MEASUREMENT_CASES)
def test_measurement_error_and_what_the_meters_resolution_does_not_explain(
    samples, expected
) -> None:
    recorder = RunRecorder()
    for i, (measured, truth, online) in enumerate(samples):
        recorder.sample(T0 + 2 * i, measured_w=measured, truth_w=truth, sites_online=online)
    kpis = compute_kpis(recorder.record())
    got = (kpis["measurement_error_max_w"], kpis["measurement_error_beyond_resolution_w"])
    assert got == (pytest.approx(expected[0]), pytest.approx(expected[1]))


def test_trader_kpis() -> None:
    recorder = RunRecorder()
    recorder.trader_decision(T0, solver="highs", solve_ms=10.0, values_w=[0.0], within_flex=True)
    recorder.trader_decision(T0, solver="highs", solve_ms=30.0, values_w=[0.0], within_flex=True)
    recorder.trader_decision(T0, solver="greedy", solve_ms=99.0, values_w=[], within_flex=False)
    kpis = compute_kpis(recorder.record())
    assert kpis["trader_decisions"] == 3
    assert kpis["trader_lp_solve_ms_max"] == 30.0  # the greedy solve is not an LP solve
    assert kpis["trader_fallbacks"] == 1
    assert kpis["schedule_within_flex"] is False


def warned(t: float, sites: int, shortfall_wh: float = 0.0) -> dict[str, Any]:
    return {"t": t, "sites": sites, "groups": 2, "plan_id": "p", "shortfall_wh": shortfall_wh}


@pytest.mark.parametrize(
    ("events", "warnings", "expected"),
    [
        # no loss of sites: nothing to warn about
        ([("restart-broker", 100.0)], [warned(50, 10), warned(200, 10)], (None, 0)),
        # 10 sites, two killed at 100 s: the stream shows 8 at 130 s
        (
            [("kill-sites", 100.0)],
            [warned(50, 10), warned(120, 10), warned(130, 8, 900)],
            (30.0, 0),
        ),
        # a network cut: the first envelope of fewer sites counts, not a later one
        ([("cut-network", 100.0)], [warned(50, 10), warned(160, 9), warned(400, 8)], (60.0, 0)),
        # never told: missed, counted up to the run's end (1000 s)
        ([("kill-sites", 100.0)], [warned(50, 10), warned(300, 10)], (900.0, 1)),
    ],
)
def test_early_warning_after_a_loss_of_sites(
    events: list[tuple[str, float]], warnings: list[dict[str, Any]], expected: tuple
) -> None:
    record = RunRecord(
        events=[{"t": t, "name": name, "detail": ""} for name, t in events],
        warnings=warnings,
        run={"sim_end": 1000.0},
    )
    assert early_warning_s(record) == expected


def plan(t: float, sites: int, plan_id: str, wh: float, start: float | None) -> dict[str, Any]:
    return {**warned(t, sites, wh), "plan_id": plan_id, "shortfall_from": start}


@pytest.mark.parametrize(
    ("warnings", "expected"),
    [
        # plans without a shortfall: nothing taken back
        ([plan(0, 6, "p1", 0, None), plan(900, 6, "p2", 0, None)], (0, 0.0, None)),
        # a new forecast takes back 943 Wh from 19:30 (lead 3600 s); the stream shows the same
        # plan again with the next envelope: one withdrawal
        (
            [plan(100, 6, "p3", 943, 3700), plan(600, 6, "p3", 943, 3700)],
            (1, 943.0, 3100.0),
        ),
        # two plans, the second 13 min ahead: both count, the shortest lead wins
        ([plan(0, 6, "p1", 500, 3600), plan(900, 6, "p2", 250, 1680)], (2, 750.0, 780.0)),
        # fewer sites than before: a loss (early warning), not a withdrawal, also when the
        # stream shows its plan again; a later plan on the smaller pool counts again
        (
            [
                plan(0, 10, "p1", 0, None),
                plan(130, 8, "p2", 900, 900),
                plan(900, 8, "p2", 900, 900),
                plan(1800, 8, "p3", 200, 3600),
            ],
            (1, 200.0, 1800.0),
        ),
        # an older run without shortfall_from: counted, no lead
        ([warned(0, 6, 300)], (1, 300.0, None)),
    ],
)
def test_promise_withdrawals_count_what_no_loss_explains(
    warnings: list[dict[str, Any]], expected: tuple
) -> None:
    assert promise_withdrawals(RunRecord(warnings=warnings)) == expected


def test_empty_run_gives_nulls_not_a_crash() -> None:
    kpis = compute_kpis(RunRecord())
    assert list(kpis) == list(KPI_DOCS)
    counts = {"trader_decisions", "trader_fallbacks", "alerts_raised", "samples"}
    counts |= {key for key in KPI_DOCS if key.startswith("intervals_")}
    counts |= {"early_warnings_missed", "promise_withdrawals", "promise_withdrawn_wh"}
    for key, value in kpis.items():
        if key in counts:
            assert value == 0, key
        else:
            assert value is None, key
    json.dumps(kpis, allow_nan=False)


def test_run_without_intervals_has_null_interval_kpis() -> None:
    recorder = RunRecorder(sites=3)
    for i in range(30):
        recorder.sample(
            T0 + 2 * i,
            target_w=100.0,
            measured_w=100.0,
            sites_online=3,
            sites_total=3,
            p_min_w=0.0,
            p_max_w=1_000.0,
        )
    kpis = compute_kpis(recorder.record())
    assert kpis["intervals_total"] == kpis["intervals_scored"] == 0
    assert kpis["intervals_delivered"] == kpis["intervals_promise_broken"] == 0
    for key in (
        "interval_energy_error_pct_max",
        "interval_energy_error_pct_p95",
        "interval_energy_error_pct_max_promised",
        "promise_kept_ratio",
        "baseline_forecast_error_pct",
        "baseline_forecast_skill",
        "energy_scheduled_wh",
        "imbalance_cost_eur",
        "revenue_eur",
        "net_value_eur",
    ):
        assert kpis[key] is None, key
    assert kpis["availability"] == 1.0
    assert kpis["sim_hours"] == pytest.approx(58 / 3600)  # from the samples: no sim_start/end
    assert all(v is None or not isinstance(v, float) or math.isfinite(v) for v in kpis.values())


def test_readme_kpi_table_is_kpi_docs() -> None:
    """README.md's table of kpis.json keys is KPI_DOCS, in order (pipes escaped for Markdown)."""
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    start = readme.index("| key | meaning |\n|---|---|\n")
    table = readme[start:].split("\n\n", 1)[0].splitlines()[2:]
    expected = [f"| `{key}` | {doc.replace('|', chr(92) + '|')} |" for key, doc in KPI_DOCS.items()]
    assert table == expected


# freshness: (samples as (t offset s, sites online) of 10 sites, run hours) -> share of
# site-time fresh over the run's 4-s grid from sim_start to sim_start + hours
FRESHNESS_CASES = [
    ([(0, 10), (20, 10), (40, 10)], 60 / 3600, 1.0),  # every 20 s: all held fresh
    ([(0, 10), (20, 5), (40, 10)], 60 / 3600, 5 / 6),  # half the sites for 20 of 60 s
    ([(0, 10)], 60 / 3600, 0.4),  # silence after 20 s of hold counts as none fresh
    ([(8, 10), (28, 10), (48, 10)], 60 / 3600, 13 / 15),  # nothing known before 8 s
]


@pytest.mark.parametrize(("samples", "hours", "expected"), FRESHNESS_CASES)
def test_freshness_is_time_weighted_and_counts_gaps_as_not_fresh(
    samples: list[tuple[float, int]], hours: float, expected: float
) -> None:
    recorder = RunRecorder(sim_start=T0, sim_end=T0 + 3600.0, hours=hours)
    for dt, online in samples:
        recorder.sample(T0 + dt, sites_online=online, sites_total=10)
    assert compute_kpis(recorder.record())["freshness"] == pytest.approx(expected)


# uplink: (window s, each site's messages by kind, sites in the run) -> (all msg/s,
# telemetry msg/s, telemetry msg/s a site, busiest site's telemetry msg/s)
UPLINK_CASES = [
    (100.0, {"a": {"telemetry": 50}, "b": {"telemetry": 50}}, 2, (1.0, 1.0, 0.5, 0.5)),
    (
        100.0,
        {"a": {"telemetry": 10, "envelope": 5, "status": 1}, "b": {"telemetry": 2, "ack": 2}},
        4,  # two sites sent nothing: they count as 0
        (0.2, 0.12, 0.03, 0.1),
    ),
    (0.0, {}, 2, (None, None, None, None)),  # not recorded: no figure, never 0
]


@pytest.mark.parametrize(("window_s", "sites", "n_sites", "expected"), UPLINK_CASES)
def test_uplink_message_rates(
    window_s: float,
    sites: dict[str, dict[str, int]],
    n_sites: int,
    expected: tuple[float | None, ...],
) -> None:
    recorder = RunRecorder(sites=n_sites)
    if window_s:
        recorder.uplink(window_s, sites)
    kpis = compute_kpis(recorder.record())
    names = (
        "uplink_messages_per_s",
        "telemetry_messages_per_s",
        "telemetry_messages_per_s_per_site",
        "telemetry_messages_per_s_site_max",
    )
    assert tuple(kpis[n] for n in names) == pytest.approx(expected)
