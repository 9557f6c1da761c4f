"""How wrong the site's own forecasts were, per lead time: the margins of the guaranteed bounds.

About once an hour the forecaster files what it forecast for each slot of its horizon
(household load, heat pump, available PV, and the PV potential it scaled). When the last
slot of a filed forecast has passed, it is compared with what the history saw:

* ``lh``: the cumulative energy error of load + heat pump, Wh, after ``L`` slots;
* ``pv``: the cumulative PV energy error over the cumulative PV potential (a ratio: a
  forecast that missed half the sun all day shows -0.5 whatever the season).

Cumulative errors are what a battery feels (a heat pump that runs an hour later than
forecast is no error at all by evening), and they grow with the lead time. The storage
simulation's pessimistic and optimistic paths take their ``q`` and ``1 - q`` bounds: the
mean plus or minus a Student-t prediction interval, since forecasts filed an hour apart
share the same weather and a fortnight holds only a dozen or so independent days (the
empirical 5 % tail of so few is the luck of the draw). Until enough forecasts have
matured, the learned bounds are blended with defaults (``DEFAULT_*``): a load off by 35 %
in each slot independently plus half an hour of heat pump run, and PV off by 40 % of its
potential.

Slots the agent did not see are counted as no error; a filed forecast whose slots are
mostly unseen is dropped. Heat pump slots in which the agent followed the cloud (which
boosts or blocks it) are counted as no error too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from edge.forecast.history import CLOUD, HP, LOAD, PV_AVAIL, SLOT_S, SlotHistory

__all__ = ["LEAD_POINTS", "ErrorModel", "Issued", "Margins"]

LEAD_POINTS = np.array(
    [1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 112, 128, 160, 192]
)
"""Lead times (slots) at which cumulative errors are kept; between them, interpolated."""

DEFAULT_LOAD_SPREAD = 0.35  # per-slot load error / forecast, independent between slots
DEFAULT_HP_RUN_H = 0.5  # heat pump run-time error (at its on power)
DEFAULT_PV_RATIO = 0.4  # PV energy error / potential
PRIOR_SAMPLES = 8.0  # the defaults weigh like this many matured forecasts
MIN_SEEN = 0.8  # a filed forecast is used when this share of its slots was seen


@dataclass(frozen=True, slots=True)
class Issued:
    """A filed forecast: its first slot number and per-slot values."""

    slot: int
    load_w: np.ndarray
    hp_w: np.ndarray
    pv_w: np.ndarray
    potential_w: np.ndarray

    def payload(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "load_w": [round(float(v), 1) for v in self.load_w],
            "hp_w": [round(float(v), 1) for v in self.hp_w],
            "pv_w": [round(float(v), 1) for v in self.pv_w],
            "potential_w": [round(float(v), 1) for v in self.potential_w],
        }

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> Issued:
        arrays = [np.asarray(data[k], dtype=float) for k in ("load_w", "hp_w", "pv_w")]
        pot = np.asarray(data["potential_w"], dtype=float)
        if len({len(a) for a in (*arrays, pot)}) != 1:
            raise ValueError("issued forecast arrays differ in length")
        return cls(int(data["slot"]), *arrays, pot)


@dataclass(frozen=True, slots=True)
class Margins:
    """Per forecast slot (n,): cumulative load + heat pump error quantiles (Wh, upper >= 0
    and lower <= 0, running extremes) and PV error ratios (lower <= 0 <= upper)."""

    lh_upper_wh: np.ndarray
    lh_lower_wh: np.ndarray
    pv_lower: np.ndarray
    pv_upper: np.ndarray
    samples: int


class ErrorModel:
    """Filed forecasts waiting to mature, and the cumulative errors of matured ones."""

    def __init__(self, days: int = 14, quantile: float = 0.95) -> None:
        self.quantile = quantile
        self.capacity = max(24, days * 24)
        self.lh = np.zeros((self.capacity, len(LEAD_POINTS)), dtype=np.float32)
        self.pv = np.zeros((self.capacity, len(LEAD_POINTS)), dtype=np.float32)
        self.depth = np.zeros(self.capacity, dtype=np.int32)  # lead points filled per row
        self.day = np.zeros(self.capacity, dtype=np.int64)  # the day each row was filed
        self.count = 0
        self.pending: list[Issued] = []
        self._last_hour = -1

    # --- filing and maturing -------------------------------------------------------------

    def file(self, issued: Issued) -> bool:
        """Keep ``issued`` if it is the first of its hour; True when kept."""
        hour = issued.slot * SLOT_S // 3600
        if hour <= self._last_hour:
            return False
        self._last_hour = hour
        self.pending.append(issued)
        return True

    def mature(self, history: SlotHistory, closed_upto: int) -> int:
        """Compare every filed forecast whose slots all closed (before slot ``closed_upto``)
        with the history; returns how many matured."""
        done = 0
        keep = []
        for issued in self.pending:
            if issued.slot + len(issued.load_w) <= closed_upto:
                self._learn(issued, history)
                done += 1
            else:
                keep.append(issued)
        self.pending = keep
        return done

    def _learn(self, issued: Issued, history: SlotHistory) -> None:
        n = len(issued.load_w)
        slots = np.arange(issued.slot, issued.slot + n, dtype=np.int64)
        load = history.gather(LOAD, slots)
        seen = np.isfinite(load)
        if n == 0 or np.count_nonzero(seen) < MIN_SEEN * n:
            return
        hp = history.gather(HP, slots)
        cloud = history.gather(CLOUD, slots)
        pv = history.gather(PV_AVAIL, slots)
        h = SLOT_S / 3600.0
        load = np.where(seen, load, issued.load_w)
        hp_ok = np.isfinite(hp) & (np.nan_to_num(cloud) < 0.05)
        hp = np.where(hp_ok, hp, issued.hp_w)
        pv = np.where(np.isfinite(pv), pv, issued.pv_w)
        lh = np.cumsum((load + hp - issued.load_w - issued.hp_w) * h)
        pv_err = np.cumsum((pv - issued.pv_w) * h)
        pot = np.cumsum(issued.potential_w * h)
        floor = 0.05 * max(float(issued.potential_w.max(initial=0.0)), 1.0)
        ratio = np.where(pot > floor, pv_err / np.maximum(pot, floor), 0.0)
        points = LEAD_POINTS[n >= LEAD_POINTS]
        row = self.count % self.capacity
        self.lh[row, : len(points)] = lh[points - 1]
        self.pv[row, : len(points)] = ratio[points - 1]
        self.depth[row] = len(points)
        self.day[row] = issued.slot * SLOT_S // 86400
        self.count += 1

    # --- persistence -----------------------------------------------------------------------

    def restore(self, rows: list[tuple[int, dict[str, Any]]]) -> int:
        """Take back filed forecasts (``EdgeStore.issued_forecasts``); call :meth:`mature`
        afterwards. Returns how many were taken."""
        taken = 0
        for _, payload in rows:
            try:
                issued = Issued.from_payload(payload)
            except (KeyError, TypeError, ValueError):
                continue
            if self.file(issued):
                taken += 1
        return taken

    # --- margins ---------------------------------------------------------------------------

    def margins(self, load_w: np.ndarray, hp_on_w: float) -> Margins:
        """The error quantiles for a forecast of ``len(load_w)`` slots (see the module)."""
        n = len(load_w)
        h = SLOT_S / 3600.0
        lead = np.arange(1, n + 1)
        z = NormalDist().inv_cdf(self.quantile)
        d_lh = z * np.sqrt(np.cumsum((DEFAULT_LOAD_SPREAD * load_w * h) ** 2))
        d_lh = d_lh + hp_on_w * np.minimum(lead * h, DEFAULT_HP_RUN_H)
        d_pv = np.full(n, DEFAULT_PV_RATIO * z / NormalDist().inv_cdf(0.95))
        rows = min(self.count, self.capacity)
        up, lo = d_lh, -d_lh
        pv_lo, pv_hi = -d_pv, d_pv
        if rows >= 2:
            # mean +- a Student-t prediction interval: forecasts filed the same day share
            # their weather, so the samples are worth about one per day
            w = rows / (rows + PRIOR_SAMPLES)
            n_eff = max(2.0, float(len(np.unique(self.day[:rows]))))
            t = _student_t(z, n_eff - 1.0) * math.sqrt(1.0 + 1.0 / n_eff)
            depth = int(self.depth[:rows].min())
            points = LEAD_POINTS[:depth]
            lh = self.lh[:rows, :depth].astype(float)
            pv = self.pv[:rows, :depth].astype(float)
            lh_mean, lh_std = lh.mean(axis=0), lh.std(axis=0, ddof=1)
            pv_mean, pv_std = pv.mean(axis=0), pv.std(axis=0, ddof=1)
            # between lead points linear; beyond the last one, growing like a random walk
            last = points[-1]
            grow = np.sqrt(np.maximum(lead, last) / last)
            spread = np.interp(lead, points, lh_std) * grow
            centre = np.interp(lead, points, lh_mean) * grow
            up = w * (centre + t * spread) + (1 - w) * up
            lo = w * (centre - t * spread) + (1 - w) * lo
            p_centre = np.interp(lead, points, pv_mean)
            p_spread = np.interp(lead, points, pv_std)
            pv_lo = w * (p_centre - t * p_spread) + (1 - w) * pv_lo
            pv_hi = w * (p_centre + t * p_spread) + (1 - w) * pv_hi
        # running extremes: a pessimistic path is pessimistic in every slot
        up = np.maximum.accumulate(np.maximum(up, 0.0))
        lo = np.minimum.accumulate(np.minimum(lo, 0.0))
        return Margins(
            lh_upper_wh=up,
            lh_lower_wh=lo,
            pv_lower=np.minimum(pv_lo, 0.0),
            pv_upper=np.maximum(pv_hi, 0.0),
            samples=rows,
        )

    def spread_at(self, lead_slots: int) -> tuple[float, float]:
        """(lower, upper) learned cumulative load + heat pump error at a lead (Wh; 0, 0 with
        nothing learned): for reports."""
        rows = min(self.count, self.capacity)
        if not rows:
            return 0.0, 0.0
        depth = int(self.depth[:rows].min())
        col = min(depth - 1, int(np.searchsorted(LEAD_POINTS[:depth], lead_slots)))
        values = self.lh[:rows, col].astype(float)
        return (
            float(np.quantile(values, 1 - self.quantile)),
            float(np.quantile(values, self.quantile)),
        )


def _student_t(z: float, df: float) -> float:
    """The Student-t quantile with ``df`` degrees of freedom at the normal quantile ``z``
    (Cornish-Fisher expansion: within 1 % for df >= 3)."""
    df = max(df, 1.0)
    z3, z5, z7 = z**3, z**5, z**7
    return (
        z
        + (z3 + z) / (4 * df)
        + (5 * z5 + 16 * z3 + 3 * z) / (96 * df**2)
        + (3 * z7 + 19 * z5 + 17 * z3 - 15 * z) / (384 * df**3)
    )
