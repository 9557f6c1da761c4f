"""Every quarter hour of a demo run, judged after the run from what the meters delivered.

An interval is judged once the run is over, when everything is known: the telemetry the
sites buffered through an outage has arrived, the devices' truth has been logged every
second. So no interval is left out for want of data; each one with a schedule in force is
scored (:mod:`vpp.e2e.kpis` classifies the short ones).

* **Target**: the pool's planned baseline plus the schedule's delta, second by second. The
  planned baseline is each site's own reported baseline (held between its telemetry
  messages as the cloud holds them: :data:`BASELINE_HOLD_S`, or the site's heartbeat when it
  sends by exception; a site that reports nothing, its gateway dead, counts with what its
  meter truly drew, so it neither helps nor hurts) plus the rebalancing residual of the
  plan in force (:class:`cloud.hotstate.PlanRecord`): the reference of the pool's envelope,
  hence of the trader's deltas.
* **Delivered**: what the simulator's meters truly drew, summed over every site.
* **Inside the envelope**: the schedule governing the slot, checked against the envelope the
  trader was shown when it posted it, up to and including the slot.
* **Outage**: the seconds of the interval inside a fault's window (fault to recovery), or
  with fewer sites fresh than the envelope of the governing schedule was made of.
* **Baseline forecast**: the pool envelope published at least one slot before the interval,
  its baseline for the slot, against persistence (the pool's baseline when that envelope was
  made, held).

Pure: the demo collects the inputs; tests pass crafted ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloud.hotstate import PlanRecord, PoolEnvelopeRecord
from protocols.energy import held_energy
from vpp.trader.client import Decision

__all__ = ["BASELINE_HOLD_S", "Observed", "interval_rows"]

#: A site's reported baseline holds this long after its telemetry (it reports every 2 s);
#: past it the site counts as not reporting. A site that sends by exception says how long it
#: may stay silent (``heartbeat_s``, :attr:`Observed.baseline_hold_s`): the cloud holds it
#: fresh at its last values until then, and so does the judge (else a quiet site holding its
#: share of a command would count at its meter, and its share twice in the target).
BASELINE_HOLD_S = 10.0


@dataclass
class Observed:
    """What the demo watched during the run (see the module docstring)."""

    site_ids: list[str]
    truth_seconds: np.ndarray  # whole seconds, ascending
    truth_w: np.ndarray  # (seconds, sites): mean grid power per site and second
    baselines: Mapping[str, tuple[np.ndarray, np.ndarray]]  # site -> (ts, baseline_w)
    decisions: Sequence[Decision]
    sample_t: np.ndarray  # the dispatch-cycle samples' times
    sample_online: np.ndarray  # sites fresh per sample
    sample_baseline_w: np.ndarray  # the pool's baseline per sample
    fault_windows: Sequence[tuple[float, float]]
    envelopes: Sequence[tuple[float, PoolEnvelopeRecord]]  # (seen at, record)
    plans: Sequence[tuple[float, PlanRecord]]  # (seen at, record)
    # site -> its telemetry's heartbeat_s (sent by exception): its baseline holds that long
    baseline_hold_s: Mapping[str, float] = field(default_factory=dict)


def _governing(decisions: Sequence[Decision], start: float) -> tuple[Decision, int] | None:
    """The accepted schedule in force for the slot starting at ``start``: the newest posted
    before it that covers it (a later schedule replaces an earlier one from its own start)."""
    for d in reversed(decisions):
        if d.schedule_id is None or d.values_w is None or d.time >= start:
            continue
        i = round((start - d.start_ts) / d.slot_s)
        if 0 <= i < d.values_w.size:
            return d, i
        if start >= d.start_ts:  # it replaced everything before it from its start, then ended
            return None
    return None


def _inside(d: Decision, i: int) -> bool | None:
    """Was the schedule inside the envelope shown, up to and including its slot ``i``?"""
    if d.flex is None or d.values_w is None:
        return None
    storage = d.storage_w if d.storage_w is not None else d.values_w
    bad = d.flex.violations(d.values_w, storage)
    return not any(int(v.split(":")[0].removeprefix("slot ")) <= i for v in bad)


def _held(ts: np.ndarray, values: np.ndarray, at: np.ndarray, hold_s: float) -> np.ndarray:
    """The latest value at or before each instant, NaN past ``hold_s`` or before."""
    out = np.full(at.size, np.nan)
    if ts.size == 0:
        return out
    k = np.searchsorted(ts, at, side="right") - 1
    ok = (k >= 0) & (at - ts[np.maximum(k, 0)] <= hold_s)
    out[ok] = values[k[ok]]
    return out


def _rebalancing(plans: Sequence[tuple[float, PlanRecord]], t: np.ndarray) -> np.ndarray:
    """The rebalancing residual of the plan in force at each instant (the newest published
    at or before it, while valid), 0 without one."""
    out = np.zeros(t.size)
    if not plans:
        return out
    seen = np.array([s for s, _ in plans])
    k = np.searchsorted(seen, t, side="right") - 1
    for j in np.unique(k[k >= 0]):
        plan = plans[int(j)][1]
        for i in np.flatnonzero(k == j):
            if plan.issued_ts - 5.0 <= t[i] < plan.valid_until:
                out[i] = plan.rebalancing_at(float(t[i]))
    return out


def _covered(windows: Sequence[tuple[float, float]], t: np.ndarray) -> np.ndarray:
    mask = np.zeros(t.size, dtype=bool)
    for a, b in windows:
        mask |= (t >= a) & (t < b)
    return mask


def interval_rows(
    obs: Observed,
    slots: Sequence[float],
    slot_s: float,
    price_at: Callable[[str, float], float | None],
) -> list[dict[str, Any]]:
    """One row per slot with a schedule in force: the keyword arguments of
    :meth:`vpp.e2e.RunRecorder.interval` (see the module docstring)."""
    rows = []
    sec, truth = obs.truth_seconds, obs.truth_w
    for start in slots:
        governing = _governing(obs.decisions, start)
        if governing is None:
            continue
        decision, i = governing
        assert decision.values_w is not None
        delta = float(decision.values_w[i])
        inside = np.flatnonzero((sec >= start) & (sec < start + slot_s))
        if inside.size < 0.9 * slot_s:  # the simulator itself was not running: no figure
            delivered_wh = target_wh = base_wh = rms = peak = None
        else:
            t = sec[inside]
            meters = truth[inside]
            base = meters.copy()
            for j, site in enumerate(obs.site_ids):
                ts, values = obs.baselines.get(site, (np.zeros(0), np.zeros(0)))
                hold_s = max(BASELINE_HOLD_S, obs.baseline_hold_s.get(site, 0.0))
                reported = _held(ts, values, t, hold_s)
                base[:, j] = np.where(np.isnan(reported), meters[:, j], reported)
            pool_base = base.sum(axis=1) + _rebalancing(obs.plans, t)
            delivered = meters.sum(axis=1)
            error = delivered - (pool_base + delta)
            # each second's mean holds for its second; the few seconds the simulator missed
            # are taken as like the rest of the interval
            span = {"start": start, "end": start + slot_s, "max_hold_s": 1.0}
            delivered_wh = held_energy(t, delivered, **span).scaled_to(slot_s)
            base_wh = held_energy(t, pool_base, **span).scaled_to(slot_s)
            target_wh = base_wh + delta * slot_s / 3600.0
            rms, peak = float(np.sqrt(np.mean(error**2))), float(np.abs(error).max())
        grid = np.arange(start, start + slot_s, 1.0)
        lost = _covered(obs.fault_windows, grid)
        if obs.sample_t.size and decision.envelope_sites is not None:
            k = np.searchsorted(obs.sample_t, grid, side="right") - 1
            known = k >= 0
            online = np.where(known, obs.sample_online[np.maximum(k, 0)], np.inf)
            lost |= online < decision.envelope_sites
        forecast_wh = persistence_wh = None
        made = [(seen, e) for seen, e in obs.envelopes if e.start_ts <= start - slot_s]
        if made:
            _, env = made[-1]
            k_env = round((start - env.start_ts) / env.step_s)
            if 0 <= k_env < env.n:
                forecast_wh = env.baseline_w[k_env] * slot_s / 3600.0
                if obs.sample_t.size:
                    j = int(np.argmin(np.abs(obs.sample_t - env.as_of)))
                    persistence_wh = float(obs.sample_baseline_w[j]) * slot_s / 3600.0
        shortfall_wh = None
        warned = [p for seen, p in obs.plans if seen < start and p.slot(start + 1) is not None]
        if warned:
            plan = warned[-1]
            k_plan = plan.slot(start + 1)
            assert k_plan is not None
            shortfall_wh = abs(plan.shortfall_w[k_plan]) * slot_s / 3600.0
        rows.append(
            {
                "start": start,
                "duration_s": slot_s,
                "schedule_delta_w": delta,
                "energy_target_wh": target_wh,
                "energy_delivered_wh": delivered_wh,
                "error_rms_w": rms,
                "error_max_w": peak,
                "inside_envelope": _inside(decision, i),
                "outage_s": float(lost.sum()),
                "baseline_actual_wh": base_wh,
                "baseline_forecast_wh": forecast_wh,
                "baseline_persistence_wh": persistence_wh,
                "shortfall_expected_wh": shortfall_wh,
                "price_da_eur_mwh": price_at("day_ahead", start),
                "price_imb_eur_mwh": price_at("imbalance", start),
            }
        )
    return rows
