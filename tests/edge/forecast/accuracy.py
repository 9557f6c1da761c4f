"""Judge the forecast against the simulator's physics (used by test_accuracy.py).

A few sites of a firmware-sim fleet run their own fallback policy for a fortnight
(:mod:`vpp.demo.warmup`), the forecaster learning as the agent's would. Then every ``issue_s``
for a day each site publishes its envelope, and each one is held against the day that
followed:

* the baseline forecast against the grid power that happened (the sites follow their own
  policy, so what happened *is* the baseline), and against persistence: the last
  quarter hour's grid power held for 24 h (what the cloud offered traders before);
* the guaranteed energy bounds against the realised stored energy: a deviation at the
  bound must have stayed within the SoC window (``E + e_min >= E_floor`` and
  ``E + e_max <= E_top`` at each slot's end, within ``TOLERANCE_WH``), wherever the bound
  offers anything.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from protocols.messages import decode, encode
from vpp.demo.warmup import SimFleet

TOLERANCE_WH = 20.0


@dataclass
class Judgement:
    date: str
    seed: int
    sites: int
    envelopes: int = 0
    mae_w: float = 0.0
    mae_persistence_w: float = 0.0
    rmse_w: float = 0.0
    rmse_persistence_w: float = 0.0
    slots_checked: int = 0
    violations: int = 0
    where: Counter = field(default_factory=Counter)  # (side, lead hours // 6) -> count
    worst_wh: float = 0.0
    e_min_mean_wh: float = 0.0
    e_max_mean_wh: float = 0.0
    opt_e_min_mean_wh: float = 0.0
    opt_e_max_mean_wh: float = 0.0
    errors_learned: int = 0

    @property
    def skill(self) -> float:
        """1 - MAE / MAE of persistence: 0 is no better than persistence, 1 is perfect."""
        return 1.0 - self.mae_w / self.mae_persistence_w

    @property
    def held(self) -> float:
        return 1.0 - self.violations / max(1, self.slots_checked)

    def line(self) -> str:
        parts = [
            f"{side} {6 * b}-{6 * b + 6} h: {n}" for (side, b), n in sorted(self.where.items())
        ]
        where = ", ".join(parts) or "none"
        return (
            f"{self.date} seed {self.seed} ({self.sites} sites, {self.envelopes} envelopes): "
            f"baseline MAE {self.mae_w:.0f} W vs persistence {self.mae_persistence_w:.0f} W "
            f"(skill {self.skill:.0%}; RMSE {self.rmse_w:.0f} vs {self.rmse_persistence_w:.0f}"
            f" W); guaranteed energy bounds held in {self.held:.1%} of {self.slots_checked} "
            f"slots (worst miss {self.worst_wh:.0f} Wh; misses by side and lead: {where}); "
            f"mean guaranteed e_min/e_max {self.e_min_mean_wh:.0f}/{self.e_max_mean_wh:.0f} Wh "
            f"(optimistic {self.opt_e_min_mean_wh:.0f}/{self.opt_e_max_mean_wh:.0f})"
        )


def judge(
    date: str,
    seed: int = 3,
    sites: int = 2,
    *,
    history_days: int = 13,
    learn_days: int = 7,
    learn_every_s: float = 7200.0,
    issue_s: float = 3600.0,
    dt: float = 60.0,
) -> Judgement:
    """Run the fleet up to ``date`` 00:00 UTC, publish for a day, judge with the day after."""
    day = datetime.fromisoformat(date).replace(tzinfo=UTC).timestamp()
    t0 = day - history_days * 86400
    fleet = SimFleet(seed=seed, sites=sites, t0=t0, dt=dt)
    fleet.run_until(day - learn_days * 86400)
    fleet.run_until(day, issue_every_s=learn_every_s)  # forecasts to learn the errors from
    fleet.issues.clear()
    fleet.run_until(day + 86400, issue_every_s=issue_s)
    fleet.run_until(day + 2 * 86400 + 1800)
    j = Judgement(date, seed, sites, envelopes=len(fleet.issues))
    j.errors_learned = min(f.errors.count for f in fleet.forecasters)
    abs_fc, abs_p, sq_fc, sq_p = [], [], [], []
    bounds = {"e_min": [], "e_max": [], "o_min": [], "o_max": []}
    for issue in fleet.issues:
        env = issue.envelope
        assert decode(encode(env)) == env
        grid, stored = fleet.realised(issue)
        seen = np.isfinite(grid)
        abs_fc.append(np.abs(issue.nominal_grid_w - grid)[seen])
        abs_p.append(np.abs(issue.persistence_w - grid)[seen])
        sq_fc.append(((issue.nominal_grid_w - grid) ** 2)[seen])
        sq_p.append(((issue.persistence_w - grid) ** 2)[seen])
        known = np.isfinite(stored)
        low_miss = (issue.e_min_wh < 0) & (stored + issue.e_min_wh < issue.floor_wh - TOLERANCE_WH)
        high_miss = (issue.e_max_wh > 0) & (stored + issue.e_max_wh > issue.top_wh + TOLERANCE_WH)
        miss_wh = np.maximum(
            np.where(low_miss, issue.floor_wh - stored - issue.e_min_wh, 0.0),
            np.where(high_miss, stored + issue.e_max_wh - issue.top_wh, 0.0),
        )
        j.slots_checked += int(known.sum())
        for k in np.nonzero((low_miss | high_miss) & known)[0]:
            j.violations += 1
            j.where[("floor" if low_miss[k] else "top", int(k // 24))] += 1
        if known.any():
            j.worst_wh = max(j.worst_wh, float(miss_wh[known].max(initial=0.0)))
        st = env.storage
        assert st is not None
        assert st.optimistic is not None
        bounds["e_min"].append(np.mean(st.e_min_wh))
        bounds["e_max"].append(np.mean(st.e_max_wh))
        bounds["o_min"].append(np.mean(st.optimistic.e_min_wh))
        bounds["o_max"].append(np.mean(st.optimistic.e_max_wh))
    j.mae_w = float(np.concatenate(abs_fc).mean())
    j.mae_persistence_w = float(np.concatenate(abs_p).mean())
    j.rmse_w = float(np.sqrt(np.concatenate(sq_fc).mean()))
    j.rmse_persistence_w = float(np.sqrt(np.concatenate(sq_p).mean()))
    j.e_min_mean_wh = float(np.mean(bounds["e_min"]))
    j.e_max_mean_wh = float(np.mean(bounds["e_max"]))
    j.opt_e_min_mean_wh = float(np.mean(bounds["o_min"]))
    j.opt_e_max_mean_wh = float(np.mean(bounds["o_max"]))
    return j
