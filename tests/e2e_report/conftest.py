"""Synthetic runs for the e2e record/KPI/report tests: known inputs, so KPIs are exact."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from vpp.e2e import RunRecorder

T0 = 1_717_221_600.0  # 2024-06-01 06:00 UTC
BAND_W = 10_000.0  # p_max - p_min: error floor = 5 % = 500 W, 125 Wh per 15 min


def synthetic_run(
    hours: float = 1.0,
    dt_s: float = 2.0,
    sites: int = 20,
    offset_w: float = 0.0,
    interval_error_wh: float = 0.0,
    scenario: str = "unit",
) -> RunRecorder:
    """A run that tracks a 4 kW-below-baseline target, off by ``offset_w`` everywhere.

    Every 15-min interval is inside the guaranteed envelope, without an outage, and
    delivered ``interval_error_wh`` above target; its baseline (5 kWh) was forecast 2 %
    high, persistence 10 % low. Telemetry is complete, latencies are 100..300 ms, the trader
    solved everything by LP within flex and used half the power and a quarter of the energy
    range; each slot's pool envelope kept 80 % of the plain sum's energy and 70 % of its power.
    """
    recorder = RunRecorder(
        sites=sites,
        seed=7,
        scenario=scenario,
        speed=360.0,
        sim_start=T0,
        sim_end=T0 + hours * 3600,
        wall_s=hours * 10,
    )
    n = round(hours * 3600 / dt_s)
    for i in range(n):
        t = T0 + i * dt_s
        baseline = 20_000.0 + 1_000.0 * np.sin(i / 300)
        target = baseline - 4_000.0
        measured = target + offset_w
        recorder.sample(
            t,
            target_w=target,
            measured_w=measured,
            baseline_w=baseline,
            p_min_w=baseline - BAND_W / 2,
            p_max_w=baseline + BAND_W / 2,
            sites_online=sites,
            sites_total=sites,
            soc_p10=30.0,
            soc_p50=50.0,
            soc_p90=70.0,
            truth_w=measured,
        )
    for k in range(int(hours * 4)):
        target_wh = 16_000.0 * 0.25
        recorder.interval(
            T0 + k * 900,
            900,
            schedule_delta_w=-4_000.0,
            energy_target_wh=target_wh,
            energy_delivered_wh=target_wh + interval_error_wh,
            error_rms_w=abs(offset_w),
            error_max_w=abs(offset_w),
            inside_envelope=True,
            outage_s=0.0,
            baseline_actual_wh=5_000.0,
            baseline_forecast_wh=5_100.0,
            baseline_persistence_wh=4_500.0,
            price_da_eur_mwh=90.0 + k,
            price_imb_eur_mwh=120.0,
        )
        recorder.trader_decision(
            T0 + k * 900,
            solver="highs",
            solve_ms=15.0 + k,
            values_w=[-4_000.0],
            within_flex=True,
            power_use=0.5,
            energy_use=0.25,
        )
        sums = {"energy_guaranteed_wh": 8_000.0, "energy_plain_wh": 10_000.0}
        sums |= {"power_guaranteed_w": 7_000.0, "power_plain_w": 10_000.0}
        recorder.envelope(T0 + k * 900, as_of=T0 + k * 900, sites=sites, **sums)
    for ms in np.linspace(100.0, 300.0, 50):
        recorder.latency(float(ms))
    recorder.telemetry(expected=1000, received=1000)
    return recorder


@pytest.fixture
def make_run() -> Callable[..., RunRecorder]:
    """The :func:`synthetic_run` builder, for tests that vary its parameters."""
    return synthetic_run
