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

Every interval counts
---------------------
Every interval with a target (``energy_target_wh``) is *scored*: none is left out because
the pool fell short in it, lost sites, or could not be measured. An interval is *delivered*
if its energy error is at most :data:`DELIVERED_PCT` (1 %, inclusive). A short one gets the
first cause that applies (:func:`score_intervals`):

1. ``outage``: sites or the cloud were lost during it (``outage_s > 0``);
2. ``outside_envelope``: the trader's value for the slot was not inside the guaranteed pool
   envelope (``inside_envelope`` not 1; unknown counts as outside: nothing was promised);
3. ``promise_broken``: inside the envelope, nothing lost, and still short. The envelope is a
   promise; this is the one cause that is the system's own fault.

An interval whose delivery is unknown (nothing measured) has no error figure, is not
delivered and gets its cause like any short one. ``interval_energy_error_pct_max`` and
``_p95`` are over every scored interval with an error figure; ``_max_promised`` over those
inside the envelope without an outage, the ones the promise covers in full.
``promise_kept_ratio`` counts every interval inside the envelope, outage or not: a promise
is a promise.

Forecast accuracy
-----------------
``baseline_forecast_error_pct`` is the pool's baseline energy as forecast at least one slot
ahead against what the sites reported, ``sum |forecast - actual| / sum max(|actual|, floor)``
over the intervals with both, with the interval's energy floor as above (where the batteries
cover the load, the pool's baseline is about 0, and a plain ratio means nothing).
``baseline_persistence_error_pct`` is the same for the naive forecast made at the same moment
(the baseline then, held). ``baseline_forecast_skill = 1 - forecast error / persistence
error`` is taken over the intervals that have all three, so both forecasts are judged on the
same quarter hours (1 = perfect, 0 = no better than persistence, < 0 = worse).

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
from dataclasses import dataclass
from typing import Any

import numpy as np

from vpp.e2e.records import RunRecord

__all__ = [
    "CAUSES",
    "DELIVERED",
    "DELIVERED_PCT",
    "FLOOR_FRACTION",
    "HOLD_MAX_S",
    "KPI_DOCS",
    "OUTAGE",
    "OUTSIDE_ENVELOPE",
    "PROMISE_BROKEN",
    "STEP_S",
    "IntervalScores",
    "compute_kpis",
    "error_floor_w",
    "freshness",
    "interval_energy_error_pct",
    "relative_error_pct",
    "resample_hold",
    "score_intervals",
]

STEP_S = 4.0
METER_RESOLUTION_W = 1.0  # the simulated meters (SunSpec 203, W_SF 0) read whole watts
HOLD_MAX_S = 20.0
FLOOR_FRACTION = 0.05
STEP_TOLERANCE = 0.05
#: An interval is delivered if its energy error is at most this, % (inclusive).
DELIVERED_PCT = 1.0
#: What a scored interval that met :data:`DELIVERED_PCT` is classified as.
DELIVERED = "delivered"
#: Why a scored interval fell short, in the order they are tested.
OUTAGE, OUTSIDE_ENVELOPE, PROMISE_BROKEN = "outage", "outside_envelope", "promise_broken"
CAUSES: tuple[str, ...] = (OUTAGE, OUTSIDE_ENVELOPE, PROMISE_BROKEN)

KPI_DOCS: dict[str, str] = {
    "telemetry_completeness": "Telemetry messages received / expected by sequence number, "
    "0..1 (duplicates do not count twice).",
    "availability": "Mean over samples of sites_online / sites_total, 0..1.",
    "freshness": "Share of site-time the cloud held fresh over the whole run: sites_online / "
    "sites_total on the 4-s grid from the run's start to its end, a point with no sample in "
    f"the {HOLD_MAX_S:g} s before it counting as no site fresh (outages included), 0..1.",
    "uplink_messages_per_s": "Messages the sites sent the cloud (telemetry, status, ack, "
    "envelope) per simulated second over the run, as a plain MQTT subscriber received them, "
    "msg/s.",
    "telemetry_messages_per_s": "Telemetry messages per simulated second over the run, every "
    "site, msg/s.",
    "telemetry_messages_per_s_per_site": "telemetry_messages_per_s / sites (a silent site "
    "counts as 0), msg/s.",
    "telemetry_messages_per_s_site_max": "The busiest site's telemetry messages per simulated "
    "second, msg/s.",
    "intervals_total": "Schedule intervals (15 min) completed in the run, count.",
    "intervals_scored": "Intervals with a target, count: every one is judged, none left out "
    "(= intervals_delivered + intervals_outage + intervals_outside_envelope + "
    "intervals_promise_broken).",
    "intervals_delivered": f"Scored intervals delivered: energy error at most {DELIVERED_PCT:g} "
    "%, count.",
    "intervals_outage": f"Short intervals (error above {DELIVERED_PCT:g} % or not measured) "
    "during which sites or the cloud were lost (outage_s > 0), count.",
    "intervals_outside_envelope": "Short intervals without an outage whose schedule value was "
    "not inside the guaranteed pool envelope (or not known to be: nothing was promised), "
    "count.",
    "intervals_promise_broken": "Short intervals inside the guaranteed envelope without an "
    "outage: the promise was broken, count.",
    "intervals_inside_envelope": "Scored intervals whose schedule value lay inside the "
    "guaranteed pool envelope, count.",
    "promise_kept_ratio": f"Intervals inside the envelope delivered within {DELIVERED_PCT:g} % / "
    "all intervals inside the envelope, outage ones included (a promise is a promise), 0..1.",
    "interval_energy_error_pct_max": "Worst interval energy error over every scored interval, "
    "%: |delivered - target| / max(|target|, floor) * 100, where floor = error_floor_w x "
    "interval length (a near-zero target would make a percentage meaningless).",
    "interval_energy_error_pct_p95": "95th percentile of the same interval energy error over "
    "every scored interval, %.",
    "interval_energy_error_pct_max_promised": "Worst interval energy error over the intervals "
    "inside the guaranteed envelope without an outage (what the promise covers in full), %.",
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
    "baseline_forecast_error_pct": "Pool baseline energy forecast (at least one slot ahead) "
    "vs what the sites reported: sum |forecast - actual| / sum max(|actual|, floor) * 100 over "
    "intervals with both (floor: error_floor_w x the interval's length), %.",
    "baseline_persistence_error_pct": "The same for the naive forecast made at the same moment "
    "(the pool's baseline then, held), %.",
    "baseline_forecast_skill": "1 - forecast error / persistence error, over intervals with "
    "all three (1 = perfect, 0 = no better than persistence, < 0 = worse).",
    "envelope_energy_ratio": "Mean over the pool envelopes observed of the guaranteed "
    "envelope's energy as a fraction of the plain sum of the site envelopes (the cost of the "
    "guarantee), 0..1.",
    "envelope_energy_ratio_min": "Smallest of the same energy ratios, 0..1.",
    "envelope_power_ratio": "Mean of the same ratio for the power range, 0..1.",
    "early_warning_s_max": "After each loss of sites (a scenario's site kill or network cut), "
    "time until the trader read a new envelope of fewer sites on the pool's stream, with the "
    "expected shortfall of its schedule; the worst one, s (empty without a loss).",
    "early_warnings_missed": "Losses of sites after which no new envelope reached the stream "
    "before the run ended, count.",
    "promise_withdrawals": "Plans with an expected shortfall of the trader's schedule that no "
    "loss of sites explains (as many sites as before): the pool took back part of what an "
    "earlier envelope promised, ahead of delivery, on new forecasts or states, count.",
    "promise_withdrawn_wh": "Sum over those plans of their expected shortfall, Wh.",
    "promise_withdrawal_lead_s_min": "Shortest time from such a plan reaching the trader to "
    "the first quarter hour it takes back, s; negative when that quarter hour was already "
    "under way, too late to re-trade (empty without one, or when not recorded).",
    "tracking_error_rms_w": "RMS of measured - target power on the 4-s grid, where a target "
    "applies, W.",
    "tracking_error_rms_pct": "tracking_error_rms_w as % of the mean |target| (at least "
    "error_floor_w), %.",
    "steps_within_5pct": "Fraction of 4-s steps with a target where |measured - target| <= "
    "max(5 % of |target|, error_floor_w), 0..1.",
    "measurement_error_max_w": "Largest |measured - truth| over samples: the measurement "
    "chain's error against the simulator's ground truth (each site's at the instant its meter "
    "reading was served), W.",
    "measurement_error_beyond_resolution_w": "Largest part of |measured - truth| that the "
    "meters' resolution does not explain (each reads whole watts: 0.5 W per site online), W.",
    "dispatch_latency_ms_p50": "Median dispatch latency, issued -> applied by the site, ms.",
    "dispatch_latency_ms_p95": "95th percentile dispatch latency, ms.",
    "dispatch_latency_ms_p99": "99th percentile dispatch latency, ms.",
    "trader_decisions": "Schedules the trader posted, count.",
    "trader_lp_solve_ms_max": "Longest LP (HiGHS) solve of the trader, ms.",
    "trader_fallbacks": "Trader decisions not solved by the LP (greedy fallback), count.",
    "schedule_within_flex": "Every trader decision stayed within the pool's flexibility, "
    "true/false.",
    "trader_power_use": "Mean over trader decisions of the fraction of the pool's optimistic "
    "power range scheduled (largest |value| / largest bound in the same direction), 0..1.",
    "trader_energy_use": "Mean over trader decisions of the same fraction of the pool's "
    "optimistic storage energy range, 0..1.",
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


@dataclass(frozen=True)
class IntervalScores:
    """Each interval's judgement, one array entry per row of ``record.intervals``.

    ``error_pct``: energy error, % (NaN where unknown); ``scored``: has a target;
    ``delivered``: scored and error <= :data:`DELIVERED_PCT`; ``inside``: the schedule value
    lay inside the guaranteed envelope (unknown = False); ``outage``: ``outage_s > 0``;
    ``cause``: :data:`DELIVERED`, one of :data:`CAUSES`, or ``""`` for an unscored interval.
    """

    error_pct: np.ndarray
    scored: np.ndarray
    delivered: np.ndarray
    inside: np.ndarray
    outage: np.ndarray
    cause: np.ndarray

    def count(self, cause: str) -> int:
        return int(np.count_nonzero(self.cause == cause))


def score_intervals(record: RunRecord, floor_w: float | None = None) -> IntervalScores:
    """Judge every interval: delivered or short, and why short (see the module docstring)."""
    iv = record.intervals
    error_pct = interval_energy_error_pct(record, floor_w)
    scored = np.isfinite(iv["energy_target_wh"])
    with np.errstate(invalid="ignore"):
        delivered = scored & (error_pct <= DELIVERED_PCT)  # NaN (unknown) is not delivered
    inside = iv["inside_envelope"] == 1.0  # NaN (unknown) is not inside
    outage = iv["outage_s"] > 0.0  # NaN (unknown) is no outage
    cause = np.full(record.n_intervals, "", dtype=object)
    # the causes in reverse order of precedence, each overwriting the weaker ones
    cause[scored] = PROMISE_BROKEN
    cause[scored & ~inside] = OUTSIDE_ENVELOPE
    cause[scored & outage] = OUTAGE
    cause[delivered] = DELIVERED
    return IntervalScores(error_pct, scored, delivered, inside, outage, cause)


def _max(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return _num(values.max()) if values.size else None


def _interval_kpis(record: RunRecord, floor_w: float) -> dict[str, Any]:
    iv = record.intervals
    scores = score_intervals(record, floor_w)
    target, delivered = iv["energy_target_wh"], iv["energy_delivered_wh"]
    settled = np.isfinite(target) & np.isfinite(delivered)
    promised = scores.scored & scores.inside
    fully_promised = promised & ~scores.outage
    imbalance = (delivered - target)[settled]
    price_imb = iv["price_imb_eur_mwh"][settled]
    priced = np.isfinite(price_imb)
    delta_wh = iv["schedule_delta_w"] * iv["duration_s"] / 3600.0
    price_da = iv["price_da_eur_mwh"]
    traded = np.isfinite(delta_wh) & np.isfinite(price_da)
    any_settled = bool(settled.any())
    revenue = -float(np.sum(price_da[traded] * delta_wh[traded])) / 1e6 if traded.any() else None
    imbalance_cost = (
        float(np.sum(imbalance[priced] / 1e6 * price_imb[priced])) if priced.any() else None
    )
    n_promised = int(np.count_nonzero(promised))
    kept = int(np.count_nonzero(promised & scores.delivered))
    return {
        "intervals_total": record.n_intervals,
        "intervals_scored": int(np.count_nonzero(scores.scored)),
        "intervals_delivered": scores.count(DELIVERED),
        **{f"intervals_{cause}": scores.count(cause) for cause in CAUSES},
        "intervals_inside_envelope": n_promised,
        "promise_kept_ratio": kept / n_promised if n_promised else None,
        "interval_energy_error_pct_max": _max(scores.error_pct[scores.scored]),
        "interval_energy_error_pct_p95": _percentile(scores.error_pct[scores.scored], 95),
        "interval_energy_error_pct_max_promised": _max(scores.error_pct[fully_promised]),
        "energy_scheduled_wh": _num(np.sum(target[settled])) if any_settled else None,
        "energy_delivered_wh": _num(np.sum(delivered[settled])) if any_settled else None,
        "imbalance_energy_wh": _num(np.sum(np.abs(imbalance))) if any_settled else None,
        "imbalance_net_wh": _num(np.sum(imbalance)) if any_settled else None,
        "imbalance_cost_eur": _num(imbalance_cost),
        "revenue_eur": _num(revenue),
        "net_value_eur": _num(revenue - imbalance_cost)
        if revenue is not None and imbalance_cost is not None
        else None,
    }


def _forecast_error_pct(
    forecast: np.ndarray, actual: np.ndarray, floor_wh: np.ndarray
) -> float | None:
    """sum |forecast - actual| / sum max(|actual|, floor) * 100 over the pairs with both;
    None if 0/0."""
    both = np.isfinite(forecast) & np.isfinite(actual)
    scale = float(np.sum(np.maximum(np.abs(actual[both]), floor_wh[both])))
    if scale <= 0:
        return None
    return _num(float(np.sum(np.abs(forecast[both] - actual[both]))) / scale * 100.0)


def _forecast_kpis(record: RunRecord, floor_w: float) -> dict[str, Any]:
    iv = record.intervals
    actual = iv["baseline_actual_wh"]
    forecast, persistence = iv["baseline_forecast_wh"], iv["baseline_persistence_wh"]
    floor_wh = floor_w * iv["duration_s"] / 3600.0
    common = np.isfinite(actual) & np.isfinite(forecast) & np.isfinite(persistence)
    forecast_error = _forecast_error_pct(forecast[common], actual[common], floor_wh[common])
    persistence_error = _forecast_error_pct(persistence[common], actual[common], floor_wh[common])
    skill = None
    if forecast_error is not None and persistence_error is not None and persistence_error > 0:
        skill = 1.0 - forecast_error / persistence_error
    return {
        "baseline_forecast_error_pct": _forecast_error_pct(forecast, actual, floor_wh),
        "baseline_persistence_error_pct": _forecast_error_pct(persistence, actual, floor_wh),
        "baseline_forecast_skill": _num(skill),
    }


def _values(entries: list[dict[str, Any]], key: str) -> np.ndarray:
    """``entry[key]`` of every entry that has a finite number there."""
    values = [e.get(key) for e in entries]
    numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    array = np.asarray(numbers, dtype=float)
    return array[np.isfinite(array)]


def _mean(values: np.ndarray) -> float | None:
    return _num(np.mean(values)) if values.size else None


#: Scenario events after which sites leave the pool's envelope (``events.json`` names).
SITE_LOSS_EVENTS = frozenset({"kill-sites", "cut-network"})


def early_warning_s(record: RunRecord) -> tuple[float | None, int]:
    """After each loss of sites, how long until the trader read a new envelope made of fewer
    sites on the pool's stream (s, the worst one; None without a loss), and how many losses
    it never read about (those count with the time to the run's end)."""
    end = record.run.get("sim_end")
    worst: float | None = None
    missed = 0
    for event in record.events:
        if event.get("name") not in SITE_LOSS_EVENTS:
            continue
        t = float(event["t"])
        before = [int(w["sites"]) for w in record.warnings if float(w["t"]) <= t]
        after = [w for w in record.warnings if float(w["t"]) > t]
        known = max(before, default=None)
        first = next((w for w in after if known is None or int(w["sites"]) < known), None)
        if first is None:
            missed += 1
            delay = float(end) - t if end is not None else None
        else:
            delay = float(first["t"]) - t
        if delay is not None:
            worst = delay if worst is None else max(worst, delay)
    return worst, missed


def promise_withdrawals(record: RunRecord) -> tuple[int, float, float | None]:
    """Plans that took back part of the envelope's promise with no loss of sites behind them:
    ``(count, Wh, shortest lead s)``. A plan the stream shows again with the next envelope
    counts once; a plan made as sites left (fewer than in the event before) is the early
    warning of a loss (:func:`early_warning_s`), not a withdrawal; later plans on the smaller
    pool count again."""
    sites_before: int | None = None
    loss_plans: set[str] = set()
    shortfall: dict[str, float] = {}
    leads: list[float] = []
    for w in sorted(record.warnings, key=lambda w: float(w["t"])):
        sites = int(w.get("sites") or 0)
        key = str(w.get("plan_id") or w.get("id"))
        if sites_before is not None and sites < sites_before:
            loss_plans.add(key)
        sites_before = sites
        wh = float(w.get("shortfall_wh") or 0.0)
        if key in loss_plans or wh <= 0.0:
            continue
        shortfall[key] = max(shortfall.get(key, 0.0), wh)
        if w.get("shortfall_from") is not None:
            leads.append(float(w["shortfall_from"]) - float(w["t"]))
    return len(shortfall), sum(shortfall.values()), min(leads, default=None)


def _envelope_kpis(record: RunRecord) -> dict[str, Any]:
    energy = _values(record.envelopes, "energy_ratio")
    warning_s, missed = early_warning_s(record)
    withdrawals, withdrawn_wh, lead = promise_withdrawals(record)
    return {
        "envelope_energy_ratio": _mean(energy),
        "envelope_energy_ratio_min": _num(energy.min()) if energy.size else None,
        "envelope_power_ratio": _mean(_values(record.envelopes, "power_ratio")),
        "early_warning_s_max": _num(warning_s),
        "early_warnings_missed": missed,
        "promise_withdrawals": withdrawals,
        "promise_withdrawn_wh": withdrawn_wh,
        "promise_withdrawal_lead_s_min": _num(lead),
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
    error = np.abs(s["measured_w"] - s["truth_w"])
    known = np.isfinite(error)
    beyond = error - METER_RESOLUTION_W / 2 * np.where(np.isfinite(online), online, 0.0)
    return {
        "availability": _num(np.mean(online[counted] / total[counted])) if counted.any() else None,
        "freshness": freshness(record),
        "measurement_error_max_w": _num(error[known].max()) if known.any() else None,
        "measurement_error_beyond_resolution_w": _num(max(0.0, float(beyond[known].max())))
        if known.any()
        else None,
        "samples": record.n_samples,
    }


def freshness(record: RunRecord, step_s: float = STEP_S) -> float | None:
    """Time-weighted share of site-time fresh from the run's start to its end (``sim_start``
    plus ``hours``; the samples' span when unknown): sample-and-hold of ``sites_online /
    sites_total`` on a regular grid, a point whose last sample is older than
    :data:`HOLD_MAX_S` (or before the first) counting as 0. None without samples."""
    s = record.samples
    t, online, total = s["t"], s["sites_online"], s["sites_total"]
    known = np.isfinite(t) & np.isfinite(online) & np.isfinite(total) & (total > 0)
    if not known.any():
        return None
    order = np.argsort(t[known], kind="stable")
    t, share = t[known][order], (online[known] / total[known])[order]
    run = record.run
    start = float(t[0]) if run.get("sim_start") is None else float(run["sim_start"])
    end = float(t[-1]) if run.get("sim_end") is None else float(run["sim_end"])
    if run.get("hours") is not None:  # the run's own span: not its teardown after it
        end = min(end, start + float(run["hours"]) * 3600.0)
    if end <= start:
        return _num(share[-1])
    grid = np.arange(start, end, step_s)
    index = np.searchsorted(t, grid, side="right") - 1
    held = np.where(index >= 0, share[np.maximum(index, 0)], 0.0)
    stale = (index < 0) | (grid - t[np.maximum(index, 0)] > HOLD_MAX_S)
    return _num(np.mean(np.where(stale, 0.0, held)))


def _uplink_kpis(record: RunRecord) -> dict[str, Any]:
    """Message rates from ``uplink.json`` (None for a run without one)."""
    window = record.uplink.get("window_s")
    sites: dict[str, dict[str, int]] = record.uplink.get("sites") or {}
    if not window or float(window) <= 0:
        return {
            "uplink_messages_per_s": None,
            "telemetry_messages_per_s": None,
            "telemetry_messages_per_s_per_site": None,
            "telemetry_messages_per_s_site_max": None,
        }
    window = float(window)
    telemetry = [int(kinds.get("telemetry", 0)) for kinds in sites.values()]
    every = sum(int(n) for kinds in sites.values() for n in kinds.values())
    n_sites = int(record.run.get("sites") or len(sites) or 0)
    rate = sum(telemetry) / window
    return {
        "uplink_messages_per_s": every / window,
        "telemetry_messages_per_s": rate,
        "telemetry_messages_per_s_per_site": rate / n_sites if n_sites else None,
        "telemetry_messages_per_s_site_max": max(telemetry, default=0) / window,
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
        "trader_power_use": _mean(_values(decisions, "power_use")),
        "trader_energy_use": _mean(_values(decisions, "energy_use")),
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
    kpis.update(_uplink_kpis(record))
    kpis.update(_sample_kpis(record))
    kpis.update(_interval_kpis(record, floor_w))
    kpis.update(_forecast_kpis(record, floor_w))
    kpis.update(_envelope_kpis(record))
    kpis.update(_tracking_kpis(record, floor_w))
    kpis.update(_trader_kpis(record))
    kpis.update(_run_kpis(record))
    return {key: kpis[key] for key in KPI_DOCS}
