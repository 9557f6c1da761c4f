"""The end-to-end run's KPIs: pure numpy over a :class:`~vpp.e2e.records.RunRecord`.

:func:`compute_kpis` returns the content of ``kpis.json``: every key of :data:`KPI_DOCS`,
with ``None`` (JSON null) where the run has no data for it (no intervals, no latencies, no
trader decisions...), never NaN.

The error floor
---------------
Errors are judged relative to the target, but a relative error of a near-zero target is
meaningless: 30 Wh off a 10 Wh target is "300 %" although it is noise for a pool that can
swing 100 kW. So the denominator of every relative error is at least a floor that scales with
the pool: **5 % of the median flexibility range** (``p_max_w - p_min_w`` over the run's
samples). In power terms that is :data:`KPI_DOCS` ``error_floor_w``; for an interval's
energy it is that times the interval's length (``error_floor_w * duration_s / 3600`` Wh).
Without any sample with a known band the floor is 0 and an exactly-zero target has no
relative error (NaN, left out of the statistics) unless the error is zero too.

Step statistics
---------------
Samples come every ~2-4 s, irregularly. Tracking statistics (``tracking_error_*``,
``steps_within_5pct``) are taken on a regular 4-s grid (sample-and-hold: each grid point takes
the last sample at or before it), so they are time-weighted and do not depend on the cycle's
jitter. A grid point whose last sample is older than :data:`HOLD_MAX_S` counts as no data
rather than repeating a stale value across a gap.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vpp.e2e.records import RunRecord

__all__ = [
    "FLOOR_FRACTION",
    "HOLD_MAX_S",
    "KPI_DOCS",
    "STEP_S",
    "compute_kpis",
    "error_floor_w",
    "interval_energy_error_pct",
    "relative_error_pct",
    "resample_hold",
]

STEP_S = 4.0
HOLD_MAX_S = 20.0
FLOOR_FRACTION = 0.05
STEP_TOLERANCE = 0.05

KPI_DOCS: dict[str, str] = {
    "telemetry_completeness": "Telemetry messages received / expected by sequence number, "
    "0..1 (duplicates do not count twice).",
    "availability": "Mean over samples of sites_online / sites_total, 0..1.",
    "intervals_total": "Schedule intervals (15 min) completed in the run, count.",
    "intervals_flex_sufficient": "Intervals in which the pool had the flexibility to meet the "
    "schedule, count (in the demo: the energy the dispatcher reported out of reach, its "
    "shortfall, is at most 0.1 % of the interval's target energy).",
    "interval_energy_error_pct_max": "Worst interval energy error over intervals where the "
    "flexibility sufficed, %: |delivered - target| / max(|target|, floor) * 100, where floor "
    "= error_floor_w x interval length (a near-zero target would make a percentage "
    "meaningless).",
    "interval_energy_error_pct_p95": "95th percentile of the same interval energy error, %.",
    "error_floor_w": "Floor of every relative error's denominator: 5 % of the median "
    "flexibility range (p_max - p_min), W.",
    "energy_scheduled_wh": "Absolute pool grid energy the schedule asked for (baseline + "
    "trader's delta), summed over intervals, Wh (+ = import).",
    "energy_delivered_wh": "Absolute pool grid energy delivered over the same intervals, Wh.",
    "imbalance_energy_wh": "Sum over intervals of |delivered - target| energy, Wh.",
    "imbalance_net_wh": "Sum over intervals of (delivered - target) energy, Wh (+ = imported "
    "more than scheduled).",
    "imbalance_cost_eur": "Sum over intervals of (delivered - target) Wh / 1e6 x imbalance "
    "price, EUR (+ = a cost to the pool).",
    "revenue_eur": "Day-ahead value of the trader's schedule: -sum(price_da x delta_w x "
    "duration / 3600) / 1e6, EUR (selling = exporting more earns money).",
    "net_value_eur": "revenue_eur - imbalance_cost_eur, EUR.",
    "tracking_error_rms_w": "RMS of measured - target power on the 4-s grid, where a target "
    "applies, W.",
    "tracking_error_rms_pct": "tracking_error_rms_w as % of the mean |target| (at least "
    "error_floor_w), %.",
    "steps_within_5pct": "Fraction of 4-s steps with a target where |measured - target| <= "
    "max(5 % of |target|, error_floor_w), 0..1.",
    "measurement_error_max_w": "Largest |measured - truth| over samples: the measurement "
    "chain's error against the simulator's ground truth, W.",
    "dispatch_latency_ms_p50": "Median dispatch latency, issued -> applied by the site, ms.",
    "dispatch_latency_ms_p95": "95th percentile dispatch latency, ms.",
    "dispatch_latency_ms_p99": "99th percentile dispatch latency, ms.",
    "trader_decisions": "Schedules the trader posted, count.",
    "trader_lp_solve_ms_max": "Longest LP (HiGHS) solve of the trader, ms.",
    "trader_fallbacks": "Trader decisions not solved by the LP (greedy fallback), count.",
    "schedule_within_flex": "Every trader decision stayed within the pool's flexibility, "
    "true/false.",
    "alerts_raised": "Alerts in the run's alert list (live ones and the final rule "
    "evaluation), count.",
    "samples": "Dispatch-cycle samples recorded, count.",
    "sites": "Simulated sites in the pool.",
    "scenario": "Scenario name.",
    "sim_hours": "Simulated time span of the run, h.",
    "wall_s": "Wall-clock duration of the run, s.",
    "speed": "Simulated seconds per wall second.",
}


def _num(value: float | np.floating | None) -> float | None:
    """A finite float, or None: kpis.json must not contain NaN."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _percentile(values: np.ndarray, q: float) -> float | None:
    values = values[np.isfinite(values)]
    return _num(np.percentile(values, q)) if values.size else None


def error_floor_w(samples: dict[str, np.ndarray]) -> float:
    """5 % of the median flexibility range over samples with a known band; 0 if none."""
    band = samples["p_max_w"] - samples["p_min_w"]
    band = band[np.isfinite(band)]
    return FLOOR_FRACTION * float(np.median(np.abs(band))) if band.size else 0.0


def relative_error_pct(error: np.ndarray, target: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """|error| / max(|target|, floor) * 100; NaN where both the denominator is 0 and error != 0."""
    error = np.abs(error)
    denominator = np.maximum(np.abs(target), floor)
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = np.where(denominator > 0, error / denominator * 100.0, np.nan)
    return np.where((denominator == 0) & (error == 0), 0.0, pct)


def interval_energy_error_pct(record: RunRecord, floor_w: float | None = None) -> np.ndarray:
    """Each interval's energy error, % (NaN where target or delivery is unknown).

    ``floor_w`` defaults to :func:`error_floor_w` of the record's samples.
    """
    iv = record.intervals
    floor_w = error_floor_w(record.samples) if floor_w is None else floor_w
    floor_wh = floor_w * iv["duration_s"] / 3600.0
    target, delivered = iv["energy_target_wh"], iv["energy_delivered_wh"]
    return relative_error_pct(delivered - target, target, floor_wh)


def _interval_kpis(record: RunRecord, floor_w: float) -> dict[str, Any]:
    iv = record.intervals
    target, delivered = iv["energy_target_wh"], iv["energy_delivered_wh"]
    scored = np.isfinite(target) & np.isfinite(delivered)
    flex_ok = scored & (iv["flex_sufficient"] > 0.5)
    error_pct = interval_energy_error_pct(record, floor_w)[flex_ok]
    imbalance = (delivered - target)[scored]
    price_imb = iv["price_imb_eur_mwh"][scored]
    priced = np.isfinite(price_imb)
    delta_wh = iv["schedule_delta_w"] * iv["duration_s"] / 3600.0
    price_da = iv["price_da_eur_mwh"]
    traded = np.isfinite(delta_wh) & np.isfinite(price_da)
    any_scored = bool(scored.any())
    revenue = -float(np.sum(price_da[traded] * delta_wh[traded])) / 1e6 if traded.any() else None
    imbalance_cost = (
        float(np.sum(imbalance[priced] / 1e6 * price_imb[priced])) if priced.any() else None
    )
    return {
        "intervals_total": record.n_intervals,
        "intervals_flex_sufficient": int(np.count_nonzero(iv["flex_sufficient"] > 0.5)),
        "interval_energy_error_pct_max": _num(np.nanmax(error_pct))
        if np.isfinite(error_pct).any()
        else None,
        "interval_energy_error_pct_p95": _percentile(error_pct, 95),
        "energy_scheduled_wh": _num(np.sum(target[scored])) if any_scored else None,
        "energy_delivered_wh": _num(np.sum(delivered[scored])) if any_scored else None,
        "imbalance_energy_wh": _num(np.sum(np.abs(imbalance))) if any_scored else None,
        "imbalance_net_wh": _num(np.sum(imbalance)) if any_scored else None,
        "imbalance_cost_eur": _num(imbalance_cost),
        "revenue_eur": _num(revenue),
        "net_value_eur": _num(revenue - imbalance_cost)
        if revenue is not None and imbalance_cost is not None
        else None,
    }


def resample_hold(
    t: np.ndarray, columns: list[np.ndarray], step_s: float = STEP_S, hold_max_s: float = HOLD_MAX_S
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sample-and-hold ``columns`` onto a regular grid from the first sample; stale -> NaN."""
    order = np.argsort(t, kind="stable")
    t = t[order]
    finite = np.isfinite(t)
    t = t[finite]
    if t.size == 0:
        return np.empty(0), [np.empty(0) for _ in columns]
    grid = np.arange(t[0], t[-1] + step_s * 1e-9, step_s)
    index = np.searchsorted(t, grid, side="right") - 1
    stale = grid - t[index] > hold_max_s
    held = []
    for column in columns:
        values = column[order][finite][index]
        held.append(np.where(stale, np.nan, values))
    return grid, held


def _tracking_kpis(record: RunRecord, floor_w: float) -> dict[str, Any]:
    s = record.samples
    _, (target, measured) = resample_hold(s["t"], [s["target_w"], s["measured_w"]])
    valid = np.isfinite(target) & np.isfinite(measured)
    if not valid.any():
        return {
            "tracking_error_rms_w": None,
            "tracking_error_rms_pct": None,
            "steps_within_5pct": None,
        }
    error = measured[valid] - target[valid]
    rms = float(np.sqrt(np.mean(error**2)))
    scale = max(float(np.mean(np.abs(target[valid]))), floor_w)
    tolerance = np.maximum(STEP_TOLERANCE * np.abs(target[valid]), floor_w)
    return {
        "tracking_error_rms_w": _num(rms),
        "tracking_error_rms_pct": _num(rms / scale * 100.0) if scale > 0 else None,
        "steps_within_5pct": float(np.mean(np.abs(error) <= tolerance)),
    }


def _sample_kpis(record: RunRecord) -> dict[str, Any]:
    s = record.samples
    total, online = s["sites_total"], s["sites_online"]
    counted = np.isfinite(online) & np.isfinite(total) & (total > 0)
    measurement_error = np.abs(s["measured_w"] - s["truth_w"])
    measurement_error = measurement_error[np.isfinite(measurement_error)]
    return {
        "availability": _num(np.mean(online[counted] / total[counted])) if counted.any() else None,
        "measurement_error_max_w": _num(measurement_error.max())
        if measurement_error.size
        else None,
        "samples": record.n_samples,
    }


def _telemetry_kpis(record: RunRecord) -> dict[str, Any]:
    expected = record.telemetry.get("expected", 0)
    received = record.telemetry.get("received", 0)
    completeness = min(1.0, max(0.0, received / expected)) if expected > 0 else None
    latency = record.latency_ms
    return {
        "telemetry_completeness": completeness,
        "dispatch_latency_ms_p50": _percentile(latency, 50),
        "dispatch_latency_ms_p95": _percentile(latency, 95),
        "dispatch_latency_ms_p99": _percentile(latency, 99),
    }


def _trader_kpis(record: RunRecord) -> dict[str, Any]:
    decisions = record.trader
    lp_ms = [d.get("solve_ms") for d in decisions if d.get("solver") == "highs"]
    lp_ms = [float(v) for v in lp_ms if v is not None]
    return {
        "trader_decisions": len(decisions),
        "trader_lp_solve_ms_max": _num(max(lp_ms)) if lp_ms else None,
        "trader_fallbacks": sum(1 for d in decisions if d.get("solver") != "highs"),
        "schedule_within_flex": all(bool(d.get("within_flex")) for d in decisions)
        if decisions
        else None,
    }


def _run_kpis(record: RunRecord) -> dict[str, Any]:
    run = record.run
    start, end = run.get("sim_start"), run.get("sim_end")
    if start is not None and end is not None:
        sim_hours = (float(end) - float(start)) / 3600.0
    elif record.n_samples:
        t = record.samples["t"]
        sim_hours = float(np.nanmax(t) - np.nanmin(t)) / 3600.0
    else:
        sim_hours = None
    return {
        "alerts_raised": len(record.alerts),
        "sites": run.get("sites"),
        "scenario": run.get("scenario"),
        "sim_hours": _num(sim_hours),
        "wall_s": _num(run.get("wall_s")),
        "speed": _num(run.get("speed")),
    }


def compute_kpis(record: RunRecord) -> dict[str, Any]:
    """Every KPI of :data:`KPI_DOCS` for ``record``, in that order; None where there is no data.

    ``alerts_raised`` counts the alerts already in ``record.alerts``: the final rule
    evaluation (which reads these KPIs) adds its own afterwards, see
    :func:`vpp.e2e.report.analyse_run`.
    """
    floor_w = error_floor_w(record.samples)
    kpis: dict[str, Any] = {"error_floor_w": floor_w if record.n_samples else None}
    kpis.update(_telemetry_kpis(record))
    kpis.update(_sample_kpis(record))
    kpis.update(_interval_kpis(record, floor_w))
    kpis.update(_tracking_kpis(record, floor_w))
    kpis.update(_trader_kpis(record))
    kpis.update(_run_kpis(record))
    return {key: kpis[key] for key in KPI_DOCS}
