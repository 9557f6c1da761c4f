"""KPIs from known inputs: exact values, the error floor, and nulls where there is no data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vpp.e2e import KPI_DOCS, RunRecord, RunRecorder, compute_kpis
from vpp.e2e.kpis import resample_hold

T0 = 1_717_221_600.0


def _band_samples(recorder: RunRecorder, band_w: float = 10_000.0, n: int = 10) -> None:
    """Samples that only set the flexibility band (median band = ``band_w``)."""
    for i in range(n):
        recorder.sample(T0 + 2 * i, p_min_w=-band_w / 2, p_max_w=band_w / 2)


def _one_interval(target_wh: float, delivered_wh: float, flex: bool = True) -> dict:
    recorder = RunRecorder()
    _band_samples(recorder)  # floor: 5 % of 10 kW = 500 W -> 125 Wh over 15 min
    recorder.interval(T0, 900, schedule_delta_w=0.0, energy_target_wh=target_wh,
                      energy_delivered_wh=delivered_wh, flex_sufficient=flex)  # fmt: skip
    return compute_kpis(recorder.record())


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


def test_interval_without_flexibility_is_not_scored_but_settled() -> None:
    kpis = _one_interval(10_000.0, 12_000.0, flex=False)
    assert kpis["intervals_total"] == 1
    assert kpis["intervals_flex_sufficient"] == 0
    assert kpis["interval_energy_error_pct_max"] is None
    assert kpis["imbalance_energy_wh"] == pytest.approx(2_000.0)


def test_zero_target_without_a_known_band_has_no_percentage() -> None:
    recorder = RunRecorder()
    recorder.interval(T0, 900, schedule_delta_w=0.0, energy_target_wh=0.0,
                      energy_delivered_wh=10.0, flex_sufficient=True)  # fmt: skip
    kpis = compute_kpis(recorder.record())
    assert kpis["error_floor_w"] is None
    assert kpis["interval_energy_error_pct_max"] is None
    assert kpis["imbalance_energy_wh"] == pytest.approx(10.0)


def test_energy_imbalance_and_money() -> None:
    recorder = RunRecorder()
    # A: sell 1 kWh at 100 EUR/MWh (+0.1 EUR); 50 Wh over target at 200 (+0.01 EUR cost).
    recorder.interval(T0, 900, schedule_delta_w=-4_000.0, energy_target_wh=10_000.0,
                      energy_delivered_wh=10_050.0, flex_sufficient=True,
                      price_da_eur_mwh=100.0, price_imb_eur_mwh=200.0)  # fmt: skip
    # B: buy 0.5 kWh at 50 (-0.025 EUR); 100 Wh under target at 80 (-0.008 EUR cost).
    recorder.interval(T0 + 900, 900, schedule_delta_w=2_000.0, energy_target_wh=5_000.0,
                      energy_delivered_wh=4_900.0, flex_sufficient=True,
                      price_da_eur_mwh=50.0, price_imb_eur_mwh=80.0)  # fmt: skip
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
    assert kpis["intervals_total"] == kpis["intervals_flex_sufficient"] == 4
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
        recorder.sample(T0 + 4 * i, target_w=0.0, measured_w=measured_w,
                        p_min_w=-5_000.0, p_max_w=5_000.0)  # fmt: skip
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


def test_latency_percentiles_and_measurement_error() -> None:
    recorder = RunRecorder()
    for ms in range(1, 101):
        recorder.latency(float(ms))
    recorder.sample(T0, measured_w=1_000.0, truth_w=1_000.5)
    recorder.sample(T0 + 2, measured_w=1_000.0, truth_w=998.0)
    kpis = compute_kpis(recorder.record())
    assert kpis["dispatch_latency_ms_p50"] == pytest.approx(50.5)
    assert kpis["dispatch_latency_ms_p95"] == pytest.approx(95.05)
    assert kpis["dispatch_latency_ms_p99"] == pytest.approx(99.01)
    assert kpis["measurement_error_max_w"] == pytest.approx(2.0)


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


def test_empty_run_gives_nulls_not_a_crash() -> None:
    kpis = compute_kpis(RunRecord())
    assert list(kpis) == list(KPI_DOCS)
    counts = {"intervals_total", "intervals_flex_sufficient", "trader_decisions",
              "trader_fallbacks", "alerts_raised", "samples"}  # fmt: skip
    for key, value in kpis.items():
        if key in counts:
            assert value == 0, key
        else:
            assert value is None, key
    json.dumps(kpis, allow_nan=False)


def test_run_without_intervals_has_null_interval_kpis() -> None:
    recorder = RunRecorder(sites=3)
    for i in range(30):
        recorder.sample(T0 + 2 * i, target_w=100.0, measured_w=100.0, sites_online=3,
                        sites_total=3, p_min_w=0.0, p_max_w=1_000.0)  # fmt: skip
    kpis = compute_kpis(recorder.record())
    assert kpis["intervals_total"] == 0
    for key in ("interval_energy_error_pct_max", "energy_scheduled_wh", "imbalance_cost_eur",
                "revenue_eur", "net_value_eur"):  # fmt: skip
        assert kpis[key] is None, key
    assert kpis["availability"] == 1.0
    assert kpis["sim_hours"] == pytest.approx(58 / 3600)  # from the samples: no sim_start/end
    assert all(v is None or not isinstance(v, float) or math.isfinite(v) for v in kpis.values())
