"""Benchmark (not a test): one site's 24-h forecast and flexibility envelope, and its observe.

A simulated site (firmware-sim physics: PV, battery, heat pump, house; no network) runs for
``--days`` days with the agent's fallback policy in the loop, feeding a ``Forecaster`` every
minute and asking it for an envelope every two hours, so its history is full and it has
learned its own errors. Then the envelope at a quarter-hour boundary is timed ``--runs``
times (goal: under 50 ms on this machine, the whole call: history reads, the component
forecasts, four storage simulations, the message), and so is ``observe`` (goal: a few
microseconds, hundreds of agents share one loop).

    .venv/bin/python bench/bench_forecast.py [--days 14] [--runs 200]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from datetime import UTC, datetime

from edge.control.plan import Battery, HeatPump, SgReady, SiteInputs, SiteLimits, fallback
from edge.control.thermal import ThermalLearner
from edge.forecast import Forecaster, ForecastSettings, HeatPumpNow, SiteNow
from firmware_sim.physics.site_model import FleetPhysics
from firmware_sim.physics.sun import clear_sky_fraction, pv_available_w

GOAL_MS = 50.0
LIMITS = SiteLimits(grid_import_w=17_250.0, grid_export_w=10_000.0)


def build(days: int, start: str) -> tuple[Forecaster, SiteNow, float, ThermalLearner]:
    t0 = datetime.fromisoformat(start).replace(tzinfo=UTC).timestamp()
    ph = FleetPhysics(seed=7, n=1, t0=t0)
    p = ph.p
    f = Forecaster("site-bench", ForecastSettings(float(p.lat_deg[0]), float(p.lon_deg[0])))
    thermal = ThermalLearner()
    rated = float(p.bat_max_w[0])
    hp_normal = 0.0
    seq = 0

    def now_site() -> SiteNow:
        return SiteNow(
            battery=Battery(float(ph.soc_pct[0]), float(p.bat_capacity_wh[0]), rated, rated),
            heat_pump=HeatPumpNow(
                indoor_c=float(ph.t_in[0]),
                power_w=float(ph.hp_w[0]),
                setpoint_c=21.0,
                boost_k=2.0,
                rated_w=float(p.hp_rated_w[0]),
            ),
            pv_rated_w=float(p.pv_peak_w[0]),
            outdoor_c=float(ph.t_out[0]),
            thermal=thermal.model,
        )

    end = t0 + days * 86400
    while ph.t < end:
        t = ph.t
        sun = clear_sky_fraction(t, p.lat_deg, p.lon_deg)
        avail = float(pv_available_w(p.pv_peak_w, sun, ph.cloud)[0])
        hp_w, indoor = float(ph.hp_w[0]), float(ph.t_in[0])
        if int(ph.ctl.hp_sg[0]) == SgReady.NORMAL:
            hp_normal = hp_w
        boost = float(p.hp_rated_w[0]) if indoor < 22.5 else hp_normal
        inputs = SiteInputs(
            load_w=float(ph.load_w[0]),
            pv_available_w=avail,
            battery=Battery(float(ph.soc_pct[0]), float(p.bat_capacity_wh[0]), rated, rated),
            heat_pump=HeatPump(normal_w=hp_normal, boost_w=boost, indoor_c=indoor),
        )
        plan = fallback(inputs, LIMITS, 60.0)
        ph.ctl.bat_lo_w[0] = ph.ctl.bat_hi_w[0] = plan.battery_w
        ph.ctl.pv_limit_w[0] = math.inf if plan.pv_limit_w is None else plan.pv_limit_w
        ph.ctl.hp_sg[0] = int(plan.sg_ready or SgReady.NORMAL)
        thermal.add(t, indoor, float(ph.t_out[0]), hp_w)
        f.observe(
            t,
            load_w=inputs.load_w,
            pv_w=float(ph.pv_w[0]),
            pv_available_w=avail,
            heat_pump_w=hp_w,
            outdoor_c=float(ph.t_out[0]),
            indoor_c=indoor,
            battery_w=float(ph.bat_w[0]),
            soc_pct=float(ph.soc_pct[0]),
            grid_w=float(ph.grid_w[0]),
            baseline_grid_w=plan.grid_w,
            battery_setpoint_w=plan.battery_w,
            max_charge_w=rated,
            max_discharge_w=rated,
        )
        if t >= t0 + 2 * 86400 and t % 7200 == 0:
            seq += 1
            f.envelope(t, now_site(), LIMITS, seq)
        ph.advance_to(t + 60.0)
    return f, now_site(), ph.t, thermal


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--start", default="2024-03-01", help="first day of the history (UTC)")
    args = parser.parse_args()

    wall = time.perf_counter()
    f, site, now, _ = build(args.days, args.start)
    built = time.perf_counter() - wall
    print(
        f"history: {args.days} days of one site built in {built:.1f} s "
        f"({f.history.count_valid()} quarter hours, {f.errors.count} matured forecasts "
        f"to learn the errors from)"
    )

    times = []
    for k in range(args.runs):
        start = time.perf_counter()
        envelope = f.envelope(now, site, LIMITS, seq=10_000 + k)
        times.append(time.perf_counter() - start)
    times_ms = sorted(1e3 * t for t in times)
    median = statistics.median(times_ms)
    p95 = times_ms[min(len(times_ms) - 1, int(0.95 * len(times_ms)))]
    assert envelope.storage is not None
    print(
        f"envelope (96 slots, storage + power-only): median {median:.1f} ms, "
        f"p95 {p95:.1f} ms, max {times_ms[-1]:.1f} ms over {args.runs} runs "
        f"(goal < {GOAL_MS:.0f} ms)"
    )

    n = 100_000
    t = now
    start = time.perf_counter()
    for _ in range(n):
        t += 1.0
        f.observe(
            t,
            load_w=500.0,
            pv_w=1000.0,
            pv_available_w=1000.0,
            heat_pump_w=0.0,
            outdoor_c=8.0,
            indoor_c=21.0,
            battery_w=-500.0,
            soc_pct=50.0,
            grid_w=0.0,
            baseline_grid_w=0.0,
            following_cloud=False,
            battery_setpoint_w=-500.0,
            max_charge_w=5000.0,
            max_discharge_w=5000.0,
        )
    per_us = (time.perf_counter() - start) / n * 1e6
    print(f"observe: {per_us:.2f} us a cycle (mean of {n}, slot closes included)")
    ok = p95 < GOAL_MS
    print("bench_forecast: " + ("ok" if ok else f"FAILED: p95 {p95:.1f} ms >= {GOAL_MS} ms"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
